"""The real service under test: `python -m mailsvc serve` child processes against a bench run's
database and stream, delivering over SMTP to the sink.

Logs are kept at `warn` (logging costs), so readiness is not read from `service_started`: each
replica gets an HTTP port we pick, and the service is ready when that port answers HTTP (uvicorn
and every loop start together in `Runtime.run`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mailsvc
from bench.cpu import process_cpu_s
from bench.infra import events_stream_for
from bench.payloads import FROM_EMAIL
from bench.processes import BenchError, stop_process
from devtools.embedded import free_port

_READY_TIMEOUT = 60.0
_SHUTDOWN = 10


@dataclass(frozen=True)
class ServiceOptions:
    replicas: int = 1
    concurrency: int = 16
    log_level: str = "warn"
    extra_env: tuple[tuple[str, str], ...] = ()
    events: bool = True  # False: MAIL_REDIS_EVENT_STREAM empty, delivery events are not published (SPEC §11)


def template_dir() -> Path:
    beside = Path(mailsvc.__file__).resolve().parent.parent / "templates"
    return beside if beside.is_dir() else Path("templates").resolve()


def service_env(options: ServiceOptions, *, dsn: str, redis_addr: str, redis_password: str, stream: str,
                sink_port: int, http_port: int) -> dict[str, str]:  # fmt: skip
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("MAIL_", "OTEL_"))}
    env = {
        **keep,
        "MAIL_POSTGRES_PRIMARY_DSN": dsn,
        "MAIL_REDIS_MASTER_ADDR": redis_addr,
        "MAIL_REDIS_PASSWORD": redis_password,
        "MAIL_REDIS_COMMAND_STREAM": stream,
        "MAIL_REDIS_EVENT_STREAM": events_stream_for(stream),
        "MAIL_INTERNAL_HTTP_ADDR": f"127.0.0.1:{http_port}",
        "MAIL_TEMPLATE_DIR": str(template_dir()),
        "MAIL_SMTP_MODE": "smtp",
        "MAIL_SMTP_ADDR": f"127.0.0.1:{sink_port}",
        "MAIL_SMTP_TLS": "none",
        "MAIL_SMTP_FROM_EMAIL": FROM_EMAIL,
        "MAIL_LOG_LEVEL": options.log_level,
        "MAIL_ATTEMPT_WORKER_CONCURRENCY": str(options.concurrency),
        "MAIL_SHUTDOWN_TIMEOUT": f"{_SHUTDOWN}s",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
    }
    if not options.events:
        env["MAIL_REDIS_EVENT_STREAM"] = ""
    env.update(dict(options.extra_env))
    return env


@dataclass
class ServiceProcess:
    process: asyncio.subprocess.Process
    port: int
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=20))
    levels: dict[str, int] = field(default_factory=dict)
    readers: list[asyncio.Task[None]] = field(default_factory=list)
    exit_code: int | None = None
    cpu_ready: float | None = None
    cpu_s: float | None = None

    async def _follow(self, stream: asyncio.StreamReader | None) -> None:
        assert stream is not None
        async for raw in stream:
            text = raw.decode(errors="replace").rstrip("\n")
            self.tail.append(text[:500])
            level = "other"
            with contextlib.suppress(ValueError, AttributeError):
                level = str(json.loads(text).get("level", "other"))
            self.levels[level] = self.levels.get(level, 0) + 1

    async def _answers_http(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        try:
            writer.write(b"GET /api/v1/internal/deliveries HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            async with asyncio.timeout(5):
                return (await reader.readline()).startswith(b"HTTP/")
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()

    async def wait_ready(self) -> int:
        """Poll until the service answers HTTP; the moment it did (ns)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _READY_TIMEOUT
        while not await self._answers_http():
            if self.process.returncode is not None:
                await asyncio.gather(*self.readers, return_exceptions=True)
                raise BenchError(f"the service exited with {self.process.returncode}:\n" + "\n".join(self.tail))
            if loop.time() > deadline:
                raise BenchError(f"the service did not answer HTTP within {_READY_TIMEOUT:.0f}s")
            await asyncio.sleep(0.01)
        self.cpu_ready = self.cpu_seconds()
        return time.time_ns()

    def rss_kb(self) -> int | None:
        """Resident set size from /proc (Linux), or None."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return None

    def cpu_seconds(self) -> float | None:
        """User + system CPU time so far (with the children it waited for), from /proc (Linux), or None."""
        return process_cpu_s(self.process.pid, children=True)

    async def stop(self) -> None:
        self.cpu_s = self.cpu_seconds()
        self.exit_code = await stop_process(self.process, _SHUTDOWN + 5)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.gather(*self.readers, return_exceptions=True)

    def cpu_since_ready(self) -> float | None:
        """CPU seconds used since this replica answered HTTP, or None."""
        now = self.cpu_seconds()
        return None if now is None or self.cpu_ready is None else now - self.cpu_ready

    def _cpu_used(self) -> float | None:
        if self.cpu_s is None or self.cpu_ready is None:
            return None
        return round(self.cpu_s - self.cpu_ready, 2)

    def summary(self) -> dict[str, Any]:
        problems = self.levels.get("warning", 0) + self.levels.get("error", 0) + self.levels.get("other", 0)
        out: dict[str, Any] = {"exit_code": self.exit_code, "cpu_s_after_ready": self._cpu_used()}
        out["log_lines"] = dict(self.levels)
        if problems or self.exit_code not in (0, None):
            out["log_tail"] = list(self.tail)
        return out


@dataclass
class Running:
    processes: list[ServiceProcess]
    ready_ns: int = 0  # the first replica's readiness: work may start from then

    def summary(self) -> list[dict[str, Any]]:
        return [process.summary() for process in self.processes]


async def _start_one(env: dict[str, str], cwd: Path, port: int) -> ServiceProcess:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mailsvc", "serve",
        env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    service = ServiceProcess(process, port)
    service.readers = [asyncio.create_task(service._follow(stream)) for stream in (process.stdout, process.stderr)]
    return service


@contextlib.asynccontextmanager
async def running_services(
    options: ServiceOptions, on_first_ready: Callable[[], Awaitable[None]] | None = None, **where: Any
) -> AsyncIterator[Running]:
    """`options.replicas` services, all ready; stopped (SIGTERM, then kill) on the way out.

    `on_first_ready` is awaited the moment the first replica answers (a measurement window opens).
    `where`: dsn, redis_addr, redis_password, stream, sink_port (see `service_env`)."""
    # a folder without a .env: the bench sets every variable the service reads
    with tempfile.TemporaryDirectory(prefix="mailsvc-bench-service-") as cwd:
        running = Running([])
        try:
            for _ in range(options.replicas):
                port = free_port()
                env = service_env(options, http_port=port, **where)
                running.processes.append(await _start_one(env, Path(cwd), port))
            first = asyncio.Lock()
            fired = False

            async def ready(service: ServiceProcess) -> int:
                nonlocal fired
                answered = await service.wait_ready()
                async with first:
                    if on_first_ready is not None and not fired:
                        fired = True
                        await on_first_ready()
                return answered

            readiness = await asyncio.gather(*(ready(service) for service in running.processes))
            running.ready_ns = min(readiness)
            yield running
        finally:
            await asyncio.gather(*(service.stop() for service in running.processes), return_exceptions=True)
