"""Backlog and latency scenarios: acceptance, e2e (with the raw ceiling), scaleout, latency.

A backlog scenario XADDs every command before the service starts, then times from the moment the
(first) service answers to the moment the last command is accepted / the sink has the last mail.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench.context import Bench, RunResult, run_token, table_counts, wait_for_offset
from bench.payloads import fields_for, xadd_backlog, xadd_paced
from bench.processes import BenchError
from bench.raw import raw_ceiling
from bench.sinks import wait_for_count

_QUICK_E2E = 5_000


async def acceptance(bench: Bench) -> RunResult:
    """XADD backlog of N → the stored stream offset reaches the last entry: commands/s."""
    count = bench.sizes.count
    async with bench.sink() as sink, bench.env.run_resources() as (dsn, stream):
        last_id = await xadd_backlog(bench.env.redis, stream, count, fields_for(run_token(), bench.sizes.payload))
        async with bench.services(sink, dsn, stream) as running:
            done = await wait_for_offset(dsn, stream, last_id)
        counts = await table_counts(dsn)
    seconds = (done - running.ready_ns) / 1e9
    return {
        "figures": {"commands_per_s": count / seconds, "seconds": seconds, "count": count},
        "details": {"sink": sink.kind, "rows": counts, "services": running.summary()},
    }


async def _e2e_once(bench: Bench, count: int, replicas: int, raw_count: int | None) -> RunResult:
    async with bench.sink() as sink, bench.env.run_resources() as (dsn, stream):
        raw = None
        if raw_count:
            raw = await raw_ceiling(sink, raw_count, bench.service.concurrency * replicas, bench.sizes.payload)
        await sink.reset()
        await xadd_backlog(bench.env.redis, stream, count, fields_for(run_token(), bench.sizes.payload))
        async with bench.services(sink, dsn, stream, replicas) as running:
            last = await wait_for_count(sink, count)
        received = await sink.stats()
        counts = await table_counts(dsn)
    seconds = (last - running.ready_ns) / 1e9
    figures: dict[str, float] = {"deliveries_per_s": count / seconds, "seconds": seconds, "count": count}
    if raw is not None:
        figures["raw_messages_per_s"] = raw["messages_per_s"]
        figures["ratio_to_raw"] = figures["deliveries_per_s"] / raw["messages_per_s"]
    details: dict[str, Any] = {"sink": sink.kind, "replicas": replicas, "rows": counts, "services": running.summary()}
    if raw is not None:
        details["raw"] = {**raw, "connections": bench.service.concurrency * replicas}
    if received.bytes is not None:
        details["mean_message_bytes"] = received.bytes / max(1, received.count)
    return {"figures": figures, "details": details}


async def e2e(bench: Bench) -> RunResult:
    """XADD backlog of N → the sink has all N; and the raw ceiling in the same run."""
    return await _e2e_once(bench, bench.sizes.count, bench.service.replicas, bench.sizes.raw_count or bench.sizes.count)


async def scaleout(bench: Bench) -> RunResult:
    """The e2e backlog with one replica, then with two on the same database and stream."""
    one = await _e2e_once(bench, bench.sizes.count, 1, None)
    two = await _e2e_once(bench, bench.sizes.count, 2, None)
    one_rate, two_rate = one["figures"]["deliveries_per_s"], two["figures"]["deliveries_per_s"]
    return {
        "figures": {"one_replica_per_s": one_rate, "two_replicas_per_s": two_rate, "ratio": two_rate / one_rate},
        "details": {"one": one["details"], "two": two["details"]},
    }


async def max_rate(bench: Bench) -> tuple[float, str]:
    """The e2e rate the fixed-rate scenarios take a fraction of: measured this invocation, or quickly now."""
    if bench.max_rate is not None:
        return bench.max_rate, "e2e median of this run"
    count = min(bench.sizes.count, _QUICK_E2E)
    quick = await _e2e_once(bench, count, bench.service.replicas, None)
    bench.max_rate = float(quick["figures"]["deliveries_per_s"])
    return bench.max_rate, f"quick e2e of {count}"


async def fixed_rate(bench: Bench, fraction: float) -> tuple[float, str]:
    if bench.sizes.rate is not None:
        return bench.sizes.rate, "--rate"
    rate, source = await max_rate(bench)
    return rate * fraction, f"{fraction:g} x {rate:.0f}/s ({source})"


async def latency(bench: Bench) -> RunResult:
    """Commands at a fixed rate, each stamped at XADD; XADD → sink arrival percentiles (python sink)."""
    rate, source = await fixed_rate(bench, bench.sizes.latency_fraction)
    seconds = bench.sizes.latency_seconds
    warmup = min(2.0, seconds / 5)
    build = fields_for(run_token(), bench.sizes.payload)
    async with (
        bench.sink("python") as sink,
        bench.env.run_resources() as (dsn, stream),
        bench.services(sink, dsn, stream) as running,
    ):
        warm = await xadd_paced(bench.env.redis, stream, rate, warmup, build)
        await wait_for_count(sink, warm)
        await sink.reset()
        loop = asyncio.get_running_loop()
        started = loop.time()
        sent = await xadd_paced(bench.env.redis, stream, rate, seconds, build, first_index=warm)
        paced = loop.time() - started
        await wait_for_count(sink, sent)
        stats = await sink.stats()
    if not stats.latency:
        raise BenchError("the sink saw no X-Bench-Sent-Ns header: cannot compute latency")
    figures = {"rate": rate, "achieved_rate": sent / paced, "samples": float(sent)}
    figures.update({name: value for name, value in stats.latency.items() if name.endswith("_ms")})
    details = {"sink": sink.kind, "rate_source": source, "warmup_s": warmup, "services": running.summary()}
    return {"figures": figures, "details": details}
