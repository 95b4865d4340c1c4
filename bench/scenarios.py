"""Backlog and latency scenarios: acceptance, e2e (with the raw ceiling), scaleout, events (e2e
with event publishing on and off, and the publish lag), latency, http-backlog (HTTP latency while
the consumer works through large commands).

A backlog scenario XADDs every command before the service starts, then times from the moment the
(first) service answers to the moment the last command is accepted / the sink has the last mail.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import orjson

from bench.context import Bench, RunResult, run_token, table_counts, wait_for_offset
from bench.http_client import Connection, HttpError
from bench.infra import events_stream_for
from bench.payloads import fields_for, http_payload, large_fields_for, xadd_backlog, xadd_paced
from bench.processes import BenchError
from bench.raw import raw_ceiling
from bench.sinks import wait_for_count
from bench.stats import summarize_ns

_QUICK_E2E = 5_000
_PATH = "/api/v1/internal/deliveries"
_LARGE_CHUNK = 50  # large commands per XADD pipeline (50 x 256 KiB = 12.5 MiB)
# requests due in the service's first second are not measured (as in `http`): its pools fill then,
# backlog or not, which is not what this figure is about
_BACKLOG_WARMUP_S = 1.0
Sample = tuple[float, int, int]  # (loop time the request was due, latency ns from then, HTTP status; 0: failed)


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


async def _e2e_once(
    bench: Bench, count: int, replicas: int, raw_count: int | None, *, events: bool | None = None, lag: bool = False
) -> RunResult:
    """The backlog delivered; throughput, CPU (service, PostgreSQL) and WAL per delivery over the
    window from the services' readiness to the last arrival at the sink."""
    timeline: list[tuple[int, int]] = []
    async with bench.sink() as sink, bench.env.run_resources() as (dsn, stream):
        raw = None
        if raw_count:
            raw = await raw_ceiling(sink, raw_count, bench.service.concurrency * replicas, bench.sizes.payload)
        await sink.reset()
        await xadd_backlog(bench.env.redis, stream, count, fields_for(run_token(), bench.sizes.payload))
        # every run starts with no dirty buffers to write (the new database's among them), so a
        # checkpoint falls in a run only when the run itself calls for one: comparable runs
        await bench.env.admin("CHECKPOINT")
        window = bench.cpu_window(dsn)
        async with bench.services(sink, dsn, stream, replicas, events=events, window=window) as running:
            last = await wait_for_count(sink, count, timeline=timeline)
            await window.stop([service.cpu_since_ready() for service in running.processes])
            if lag:  # each delivery's queued and sent events, then how long each waited for its XADD
                await _wait_for_events(bench, events_stream_for(stream), 2 * count)
                publish_lag = summarize_ns(await _publish_lags(bench, events_stream_for(stream)))
        received = await sink.stats()
        counts = await table_counts(dsn)
    seconds = (last - running.ready_ns) / 1e9
    figures: dict[str, float] = {"deliveries_per_s": count / seconds, "seconds": seconds, "count": count}
    if raw is not None:
        figures["raw_messages_per_s"] = raw["messages_per_s"]
        figures["ratio_to_raw"] = figures["deliveries_per_s"] / raw["messages_per_s"]
    figures.update(window.figures(count))
    if lag and publish_lag is not None:
        figures |= {"publish_lag_p50_ms": publish_lag["p50_ms"], "publish_lag_p99_ms": publish_lag["p99_ms"]}
    details: dict[str, Any] = {"sink": sink.kind, "replicas": replicas, "rows": counts, "services": running.summary()}
    details["cpu"] = window.details(count)
    # the sink was reset before the services started: nothing had arrived when the first answered
    details["sink_timeline"] = [[0.0, 0], *([round((t - running.ready_ns) / 1e9, 3), n] for t, n in timeline)]
    if raw is not None:
        details["raw"] = {**raw, "connections": bench.service.concurrency * replicas}
    if received.bytes is not None:
        details["mean_message_bytes"] = received.bytes / max(1, received.count)
    return {"figures": figures, "details": details}


async def e2e(bench: Bench) -> RunResult:
    """XADD backlog of N → the sink has all N; and the raw ceiling in the same run."""
    return await _e2e_once(bench, bench.sizes.count, bench.service.replicas, bench.sizes.raw_count or bench.sizes.count)


async def _wait_for_events(bench: Bench, key: str, count: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while int(await bench.env.redis.xlen(key)) < count:
        if time.monotonic() > deadline:
            raise BenchError(f"fewer than {count} events in {key} after {timeout:g}s")
        await asyncio.sleep(0.1)


async def _publish_lags(bench: Bench, key: str) -> list[int]:
    """Per event: its XADD (the entry id's milliseconds) minus its `time` (the writing transaction's)."""
    lags: list[int] = []
    after = "-"
    while True:
        entries: list[Any] = list(await bench.env.redis.xrange(key, min=after, count=5000) or [])
        if after != "-":
            entries = entries[1:]
        if not entries:
            return lags
        for entry_id, fields in entries:
            added_ms = int(bytes(entry_id).split(b"-")[0])
            written = datetime.fromisoformat(bytes(fields[b"time"]).decode())
            lags.append(int((added_ms - written.timestamp() * 1000) * 1_000_000))
        after = bytes(entries[-1][0]).decode()


async def scaleout(bench: Bench) -> RunResult:
    """The e2e backlog with one replica, then with two on the same database and stream."""
    one = await _e2e_once(bench, bench.sizes.count, 1, None)
    two = await _e2e_once(bench, bench.sizes.count, 2, None)
    one_rate, two_rate = one["figures"]["deliveries_per_s"], two["figures"]["deliveries_per_s"]
    figures = {"one_replica_per_s": one_rate, "two_replicas_per_s": two_rate, "ratio": two_rate / one_rate}
    figures.update(_cpu_figures(one["figures"], "one_replica_"))
    figures.update(_cpu_figures(two["figures"], "two_replicas_"))
    return {"figures": figures, "details": {"one": one["details"], "two": two["details"]}}


def _cpu_figures(figures: dict[str, float], prefix: str) -> dict[str, float]:
    return {prefix + name: value for name, value in figures.items() if name.endswith("_per_delivery")}


async def events(bench: Bench) -> RunResult:
    """The e2e backlog with delivery events published (SPEC §11) and with publishing off
    (`MAIL_REDIS_EVENT_STREAM` empty); SPEC §10 wants on ≥ 90 % of off.

    Four runs in the order off, on, on, off (ABBA): whatever drifts through the invocation — the
    shared server's caches, a checkpoint, the other work on the machine — weighs on both sides
    alike. Rates and CPU are the pairs' means; the lag is that of the on runs' events."""
    runs = [
        await _e2e_once(bench, bench.sizes.count, bench.service.replicas, None, events=on, lag=on)
        for on in (label == "on" for label in _ABBA)
    ]
    on_runs = [r["figures"] for r, label in zip(runs, _ABBA, strict=True) if label == "on"]
    on = _means(on_runs)
    off = _means([r["figures"] for r, label in zip(runs, _ABBA, strict=True) if label == "off"])
    rates = {"events_on_per_s": on["deliveries_per_s"], "events_off_per_s": off["deliveries_per_s"]}
    figures = rates | {"ratio": on["deliveries_per_s"] / off["deliveries_per_s"]}
    figures.update(_cpu_figures(on, "events_on_"))
    figures.update(_cpu_figures(off, "events_off_"))
    for name in ("publish_lag_p50_ms", "publish_lag_p99_ms"):
        if all(name in f for f in on_runs):
            figures[name] = max(f[name] for f in on_runs)  # the worse of the two on runs
    return {"figures": figures, "details": {"order": list(_ABBA), "runs": [r["details"] for r in runs]}}


_ABBA = ("off", "on", "on", "off")


def _means(figures: list[dict[str, float]]) -> dict[str, float]:
    """Each figure every run reported, averaged over the runs."""
    names = set(figures[0]).intersection(*figures[1:])
    return {name: sum(f[name] for f in figures) / len(figures) for name in names}


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
        events_key = events_stream_for(stream)
        await _wait_for_events(bench, events_key, 2 * (warm + sent))
        lag = summarize_ns(await _publish_lags(bench, events_key))  # at this fixed ("nominal") rate
    if not stats.latency:
        raise BenchError("the sink saw no X-Bench-Sent-Ns header: cannot compute latency")
    figures = {"rate": rate, "achieved_rate": sent / paced, "samples": float(sent)}
    figures.update({name: value for name, value in stats.latency.items() if name.endswith("_ms")})
    if lag is not None:
        figures |= {"publish_lag_p50_ms": lag["p50_ms"], "publish_lag_p99_ms": lag["p99_ms"]}
    details = {"sink": sink.kind, "rate_source": source, "warmup_s": warmup, "services": running.summary(),
               "latency_histogram_ms": stats.histogram}  # fmt: skip
    return {"figures": figures, "details": details}


async def _paced_posts(port: int, rate: float, until: asyncio.Future[float], min_seconds: float) -> list[Sample]:
    """POST /deliveries at `rate` per second until `until` is done and `min_seconds` passed.

    Open loop: each request is sent on its schedule, on an idle keep-alive connection or a new one,
    whatever the earlier ones are doing, and its latency runs from the moment it was due — a
    stalled service shows as latency instead of as fewer requests (no coordinated omission)."""
    loop = asyncio.get_running_loop()
    token, idle, samples = run_token(), list[Connection](), list[Sample]()
    tasks: set[asyncio.Task[None]] = set()

    async def one(index: int, due: float) -> None:
        connection = idle.pop() if idle else Connection("127.0.0.1", port)
        headers = {"Content-Type": "application/json", "Idempotency-Key": f"bench-{token}-http-{index}"}
        try:
            async with asyncio.timeout(10.0):
                status, _ = await connection.post(_PATH, orjson.dumps(http_payload(index)), headers)
            idle.append(connection)
        except (HttpError, TimeoutError):
            await connection.close()
            status = 0
        samples.append((due, int((loop.time() - due) * 1e9), status))

    start, index = loop.time(), 0
    while not (until.done() and loop.time() - start >= min_seconds):
        due = start + index / rate
        await asyncio.sleep(max(0.0, due - loop.time()))
        task = asyncio.create_task(one(index, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        index += 1
    await asyncio.gather(*tasks)
    await asyncio.gather(*(connection.close() for connection in idle))
    return samples


async def http_backlog(bench: Bench) -> RunResult:
    """A backlog of large commands XADDed first; while the consumer works through it, POST
    /deliveries at a modest fixed rate: the HTTP latency (SPEC §2: a backlog of large commands
    delays HTTP requests by no more than a few tens of milliseconds)."""
    sizes = bench.sizes
    count, size = sizes.backlog_count, sizes.backlog_kib * 1024
    build = large_fields_for(run_token(), size, sizes.payload)
    loop = asyncio.get_running_loop()
    async with bench.sink() as sink, bench.env.run_resources() as (dsn, stream):
        last_id = await xadd_backlog(bench.env.redis, stream, count, build, chunk=_LARGE_CHUNK)
        async with bench.services(sink, dsn, stream) as running:
            finished: list[float] = []  # the loop time the last command was seen accepted

            async def accepted() -> float:
                done_ns = await wait_for_offset(dsn, stream, last_id, stall=120.0)
                finished.append(loop.time())
                return (done_ns - running.ready_ns) / 1e9

            backlog = asyncio.ensure_future(accepted())
            warm_until = loop.time() + _BACKLOG_WARMUP_S
            try:
                port = running.processes[0].port
                samples = await _paced_posts(port, sizes.backlog_rate, backlog, _BACKLOG_WARMUP_S + 1.0)
                backlog_s = await backlog
            finally:
                backlog.cancel()
        counts = await table_counts(dsn)
    warm = [sample for sample in samples if sample[0] >= warm_until]
    during = [sample for sample in warm if sample[0] < finished[0]]
    measured = during or warm  # a tiny backlog may be accepted before the warm-up is over
    latencies = summarize_ns([latency for _, latency, _ in measured]) or {}
    figures: dict[str, float] = {"rate": sizes.backlog_rate, "requests": float(len(measured))}
    figures.update({name: value for name, value in latencies.items() if name.endswith("_ms")})
    figures["errors"] = float(sum(1 for _, _, status in measured if status != 202))
    figures.update({"backlog_seconds": backlog_s, "backlog_commands_per_s": count / backlog_s})
    details: dict[str, Any] = {
        "sink": sink.kind, "backlog": count, "command_bytes": size, "payload": sizes.payload,
        "warmup_s": _BACKLOG_WARMUP_S, "requests_in_warmup": len(samples) - len(warm),
        "requests_during_backlog": len(during), "requests_after_backlog": len(warm) - len(during),
        "rows": counts, "services": running.summary(),
    }  # fmt: skip
    if not during:
        details["note"] = "the backlog was accepted within the warm-up: these are requests after it"
    return {"figures": figures, "details": details}
