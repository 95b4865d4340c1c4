"""Scenarios that hold a load for a while: `http` (concurrent POST /deliveries clients) and `soak`
(a fixed XADD rate for minutes, the service's RSS sampled)."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import orjson

from bench.context import Bench, RunResult, run_token, table_counts
from bench.http_client import Connection, HttpError
from bench.payloads import fields_for, http_payload, xadd_paced
from bench.processes import BenchError
from bench.scenarios import fixed_rate
from bench.service import Running
from bench.sinks import wait_for_count
from bench.stats import summarize_ns

_PATH = "/api/v1/internal/deliveries"


async def _clients(ports: list[int], clients: int, seconds: float, limit: int | None) -> list[tuple[float, int, int]]:
    """(end time, latency ns, status; 0 for a transport error) of every request."""
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + seconds
    token = run_token()
    numbers = itertools.count()
    results: list[tuple[float, int, int]] = []

    async def client_loop(connection: Connection) -> None:
        try:
            while loop.time() < stop_at:
                index = next(numbers)
                if limit is not None and index >= limit:
                    return
                body = orjson.dumps(http_payload(index))
                headers = {"Content-Type": "application/json", "Idempotency-Key": f"bench-{token}-{index}"}
                started = time.perf_counter_ns()
                try:
                    async with asyncio.timeout(10.0):
                        status, _ = await connection.post(_PATH, body, headers)
                except (HttpError, TimeoutError):
                    await connection.close()
                    status = 0
                results.append((loop.time(), time.perf_counter_ns() - started, status))
        finally:
            await connection.close()

    await asyncio.gather(*(client_loop(Connection("127.0.0.1", ports[i % len(ports)])) for i in range(clients)))
    return results


async def http(bench: Bench) -> RunResult:
    """K clients POST for T seconds (or N requests); req/s and latency after a short warm-up."""
    sizes = bench.sizes
    seconds = sizes.http_seconds if sizes.http_requests is None else 3600.0
    warmup = min(1.0, sizes.http_seconds / 10) if sizes.http_requests is None else 0.0
    async with bench.sink() as sink, bench.env.run_resources() as (dsn, stream):
        async with bench.services(sink, dsn, stream) as running:
            loop = asyncio.get_running_loop()
            started = loop.time()
            ports = [service.port for service in running.processes]
            results = await _clients(ports, sizes.clients, seconds, sizes.http_requests)
            accepted = sum(1 for _, _, status in results if status == 202)
            finished = loop.time()
            drained = True
            try:
                await wait_for_count(sink, accepted)
            except BenchError:
                drained = False
            drain_s = loop.time() - finished
            delivered = (await sink.stats()).count
        counts = await table_counts(dsn)
    measured = [r for r in results if r[0] >= started + warmup]
    if not measured:
        raise BenchError("no request finished after the warm-up")
    window = max(r[0] for r in measured) - (started + warmup)
    latencies = summarize_ns([latency for _, latency, _ in measured]) or {}
    statuses: dict[str, int] = {}
    for _, _, status in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    figures = {"requests_per_s": len(measured) / window, "requests": float(len(measured))}
    figures.update({name: value for name, value in latencies.items() if name.endswith("_ms")})
    figures["errors"] = float(sum(1 for _, _, status in measured if not 200 <= status < 300))
    details = {
        "sink": sink.kind, "clients": sizes.clients, "warmup_s": warmup, "statuses": statuses, "accepted": accepted,
        "delivered": delivered, "drained": drained, "drain_s": round(drain_s, 3), "rows": counts,
        "services": running.summary(),
    }  # fmt: skip
    return {"figures": figures, "details": details}


async def _sample_rss(running: Running, interval: float, samples: list[tuple[float, list[int | None]]]) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        samples.append((loop.time() - started, [service.rss_kb() for service in running.processes]))
        await asyncio.sleep(interval)


def _rss_figures(samples: list[tuple[float, list[int | None]]], seconds: float) -> dict[str, float]:
    """RSS of the first replica: first/last/min/max (MB) and the drift, whole run and after warm-up."""
    points = [(t, rss[0]) for t, rss in samples if rss and rss[0] is not None]
    if len(points) < 2:
        raise BenchError("could not sample the service's RSS (needs /proc)")
    values = [kb / 1024 for _, kb in points]
    settled = next((kb / 1024 for t, kb in points if t >= seconds / 10), values[0])
    return {
        "rss_first_mb": values[0],
        "rss_last_mb": values[-1],
        "rss_min_mb": min(values),
        "rss_max_mb": max(values),
        "rss_drift_pct": (values[-1] - values[0]) / values[0] * 100,
        "rss_drift_after_warmup_pct": (values[-1] - settled) / settled * 100,
    }


async def soak(bench: Bench) -> RunResult:
    """A fixed XADD rate for M minutes with RSS sampled every few seconds: memory stays flat."""
    rate, source = await fixed_rate(bench, bench.sizes.soak_fraction)
    seconds = bench.sizes.soak_minutes * 60
    interval = max(0.1, min(5.0, seconds / 20))
    samples: list[tuple[float, list[int | None]]] = []
    build = fields_for(run_token(), bench.sizes.payload)
    async with bench.sink() as sink, bench.env.run_resources() as (dsn, stream):
        async with bench.services(sink, dsn, stream) as running:
            sampler = asyncio.create_task(_sample_rss(running, interval, samples))
            try:
                sent = await xadd_paced(bench.env.redis, stream, rate, seconds, build)
            finally:
                sampler.cancel()
            samples.append((seconds, [service.rss_kb() for service in running.processes]))
            lag = sent - (await sink.stats()).count
            await wait_for_count(sink, sent)
        counts = await table_counts(dsn)
    figures = {"rate": rate, "minutes": bench.sizes.soak_minutes, "delivered": float(sent), "lag_at_end": float(lag)}
    figures.update(_rss_figures(samples, seconds))
    details: dict[str, Any] = {
        "sink": sink.kind, "rate_source": source, "sample_interval_s": interval, "rows": counts,
        "rss_samples_kb": [[round(t, 1), *rss] for t, rss in samples], "services": running.summary(),
    }  # fmt: skip
    return {"figures": figures, "details": details}
