"""What every scenario gets: the servers, the sizes asked for, and helpers to set a run up."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from bench.cpu import CpuWindow
from bench.infra import BenchEnv, unique_token
from bench.payloads import PayloadKind
from bench.processes import BenchError
from bench.service import Running, ServiceOptions, running_services
from bench.sinks import Sink, start_sink

RunResult = dict[str, Any]  # {"figures": {name: number}, "details": {...}}


@dataclass(frozen=True)
class Sizes:
    count: int = 20_000  # acceptance / e2e / scaleout backlog
    raw_count: int | None = None  # raw ceiling messages (default: count)
    rate: float | None = None  # latency / soak fixed rate (default: a fraction of the e2e max)
    latency_fraction: float = 0.2
    soak_fraction: float = 0.5
    latency_seconds: float = 20.0
    http_seconds: float = 10.0
    http_requests: int | None = None
    clients: int = 16
    soak_minutes: float = 10.0
    payload: PayloadKind = "template"
    backlog_count: int = 2_000  # http-backlog: large commands waiting for the consumer
    backlog_kib: int = 256  # ... each this big (SPEC §2's largest payload)
    backlog_rate: float = 50.0  # ... while POST /deliveries arrive at this rate


@dataclass
class Bench:
    env: BenchEnv
    sizes: Sizes
    service: ServiceOptions
    sink_kind: str  # auto | python | postfix
    cache_dir: Path
    notes: list[str] = field(default_factory=list)
    sink_kinds_used: set[str] = field(default_factory=set)
    max_rate: float | None = None  # the e2e median, once measured

    @contextlib.asynccontextmanager
    async def sink(self, kind: str | None = None) -> AsyncIterator[Sink]:
        sink, fallback = await start_sink(kind or self.sink_kind, self.cache_dir)
        if fallback and fallback not in self.notes:
            self.notes.append(fallback)
        self.sink_kinds_used.add(sink.kind)
        try:
            yield sink
        finally:
            await sink.close()

    @contextlib.asynccontextmanager
    async def services(
        self,
        sink: Sink,
        dsn: str,
        stream: str,
        replicas: int | None = None,
        *,
        events: bool | None = None,
        window: CpuWindow | None = None,
    ) -> AsyncIterator[Running]:
        """The services; `window` (from `cpu_window`) starts when the first of them answers."""
        options = self.service if replicas is None else replace(self.service, replicas=replicas)
        if events is not None:
            options = replace(options, events=events)
        async with running_services(
            options,
            dsn=dsn,
            redis_addr=self.env.redis_addr,
            redis_password=self.env.redis_password,
            stream=stream,
            sink_port=sink.port,
            on_first_ready=window.start if window is not None else None,
        ) as running:
            yield running

    def cpu_window(self, dsn: str) -> CpuWindow:
        """PostgreSQL CPU and WAL (and the services' CPU handed to its `stop()`) over a window
        (bench/cpu.py); give it to `services()` to open it when the first replica answers."""
        return CpuWindow(self.env.admin_dsn, urlsplit(dsn).path.lstrip("/"))


def run_token() -> str:
    return unique_token()


async def table_counts(dsn: str) -> dict[str, int]:
    """Deliveries by status, plus malformed commands: what the service made of the run."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT status, count(*) AS n FROM deliveries GROUP BY status")
        malformed = await conn.fetchval("SELECT count(*) FROM malformed_commands")
    finally:
        await conn.close()
    counts = {str(row["status"]): int(row["n"]) for row in rows}
    counts["malformed_commands"] = int(malformed)
    return counts


async def wait_for_offset(dsn: str, stream: str, last_id: str, *, stall: float = 30.0) -> int:
    """Poll `stream_offsets` until the stored offset is `last_id`; the moment it was seen (ns)."""
    conn = await asyncpg.connect(dsn)
    loop = asyncio.get_running_loop()
    seen: str | None = None
    moved = loop.time()
    try:
        while True:
            offset = await conn.fetchval("SELECT last_id FROM stream_offsets WHERE stream_key = $1", stream)
            if offset == last_id:
                return time.time_ns()
            if offset != seen:
                seen, moved = offset, loop.time()
            elif loop.time() - moved > stall:
                raise BenchError(f"the stream offset stayed at {seen} (want {last_id}) for {stall:.0f}s")
            await asyncio.sleep(0.005)
    finally:
        await conn.close()
