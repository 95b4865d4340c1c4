"""Run `mailsvc serve` as a real child process and follow its JSON log lines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.infra import unique_name

REPO = Path(__file__).resolve().parents[2]


@dataclass
class ServiceProcess:
    process: asyncio.subprocess.Process
    lines: list[dict[str, Any]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    port: int | None = None
    _readers: list[asyncio.Task[None]] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            text = raw.decode(errors="replace").rstrip("\n")
            self.raw.append(text)
            with contextlib.suppress(ValueError):
                entry = json.loads(text)
                if isinstance(entry, dict):  # console exporters print indented JSON: its lines are no logs
                    self.lines.append(entry)
                    if entry.get("event") == "http_listening":
                        self.port = int(entry["port"])
            self._changed.set()

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            self.stderr.append(raw.decode(errors="replace").rstrip("\n"))
            self._changed.set()

    async def wait_for_event(self, event: str, timeout: float = 30.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for entry in self.lines:
                if entry.get("event") == event:
                    return entry
            if self.process.returncode is not None and all(r.done() for r in self._readers):
                raise AssertionError(f"process exited ({self.process.returncode}) before {event}: {self.output()}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no {event} within {timeout}s: {self.output()}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 0.5)):
                    await self._changed.wait()

    def events(self, event: str) -> list[dict[str, Any]]:
        return [entry for entry in self.lines if entry.get("event") == event]

    def output(self) -> str:
        return "\n".join(self.raw[-40:] + self.stderr[-20:])

    async def wait_exit(self, timeout: float = 30.0) -> int:
        async with asyncio.timeout(timeout):
            code = await self.process.wait()
            await asyncio.gather(*self._readers)
        return code

    def send_signal(self, sig: signal.Signals) -> None:
        if self.process.returncode is None:
            self.process.send_signal(sig)


async def start_service(env: dict[str, str], *args: str) -> ServiceProcess:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mailsvc",
        *(args or ("serve",)),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    service = ServiceProcess(process)
    service._readers = [
        asyncio.create_task(service._read_stdout()),
        asyncio.create_task(service._read_stderr()),
    ]
    return service


@contextlib.asynccontextmanager
async def running_service(env: dict[str, str], *, ready: bool = True) -> AsyncIterator[ServiceProcess]:
    """A `mailsvc serve` child; killed at the end if the test did not stop it."""
    service = await start_service(env)
    try:
        if ready:
            await service.wait_for_event("service_started")
        yield service
    finally:
        if service.process.returncode is None:
            service.process.kill()
        with contextlib.suppress(Exception):
            await service.wait_exit(10)


def service_environment(database_dsn: str, redis_addr: str, **overrides: str) -> dict[str, str]:
    """A stub-mode `mailsvc serve` environment on a free loopback port, with its own stream key."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("MAIL_", "OTEL_"))}
    return {
        **keep,
        "MAIL_REDIS_MASTER_ADDR": redis_addr,
        "MAIL_REDIS_PASSWORD": "",
        "MAIL_POSTGRES_PRIMARY_DSN": database_dsn,
        "MAIL_REDIS_COMMAND_STREAM": f"mailsvc-test:{unique_name('http')}:commands",
        "MAIL_REDIS_EVENT_STREAM": f"mailsvc-test:{unique_name('http')}:events",
        "MAIL_INTERNAL_HTTP_ADDR": "127.0.0.1:0",
        "MAIL_TEMPLATE_DIR": str(REPO / "templates"),
        "MAIL_SHUTDOWN_TIMEOUT": "10s",
        **overrides,
    }
