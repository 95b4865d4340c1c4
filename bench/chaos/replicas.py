"""The three replicas: `python -m mailsvc serve` in slots, killed, stopped and restarted on demand.

Each slot keeps its HTTP port for the whole run (clients know where to go) and reaches
PostgreSQL, Redis and the sink through its own routes of the fault proxy. Every incarnation logs
to its own file. Every exit is recorded with its cause: the signal we sent (`sigkill`, `sigterm`,
`stop` at the end of the run), a start refused because a server was unreachable
(`refused_start`: the service fails fast at startup, by design), or `unexpected` — anything else,
which the reconciliation reports as a violation.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.chaos.facts import ReplicaExit
from bench.chaos.ledger import Ledger

_READY_TIMEOUT = 60.0
_STOP_GRACE = 40.0  # MAIL_SHUTDOWN_TIMEOUT (10 s) + closing, with room for a busy machine


@dataclass
class Incarnation:
    number: int
    process: asyncio.subprocess.Process
    log: Path
    started: float
    ready: bool = False
    ready_at: float | None = None
    expected: str | None = None  # the cause, once we signalled it
    exited: asyncio.Event = field(default_factory=asyncio.Event)


class ReplicaSlot:
    def __init__(self, index: int, env: dict[str, str], http_port: int, folder: Path, ledger: Ledger) -> None:
        self.index, self.env, self.http_port, self.folder, self.ledger = index, env, http_port, folder, ledger
        self.current: Incarnation | None = None
        self.incarnations = 0
        self.down_until = 0.0  # the harness keeps it down until then (a kill's pause)
        self._watchers: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> bool:
        return self.current is not None and not self.current.exited.is_set()

    @property
    def ready(self) -> bool:
        return self.running and self.current is not None and self.current.ready

    async def start(self) -> Incarnation:
        self.incarnations += 1
        log = self.folder / f"replica{self.index}-{self.incarnations:03d}.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mailsvc", "serve", env=self.env, cwd=self.folder, stdout=out, stderr=out
            )
        incarnation = Incarnation(self.incarnations, process, log, time.time())
        self.current = incarnation
        watcher = asyncio.create_task(self._watch(incarnation), name=f"replica{self.index}-{incarnation.number}")
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return incarnation

    async def _watch(self, incarnation: Incarnation) -> None:
        ready = asyncio.create_task(self._wait_ready(incarnation))
        code = await incarnation.process.wait()
        ready.cancel()
        await asyncio.gather(ready, return_exceptions=True)
        cause, detail = incarnation.expected, ""
        if cause is None:
            tail = _tail(incarnation.log)
            refused = not incarnation.ready and code == 1 and "startup_failed" in tail
            cause = "refused_start" if refused else "unexpected"
            detail = tail[-600:]
            self.down_until = time.monotonic() + 2.0
        record = ReplicaExit(
            self.index, incarnation.number, cause, code, incarnation.ready, time.time(), detail, incarnation.ready_at
        )
        self.ledger.exit(record)
        incarnation.exited.set()

    async def _wait_ready(self, incarnation: Incarnation) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        while time.monotonic() < deadline:
            if await _answers_http(self.http_port):
                incarnation.ready, incarnation.ready_at = True, time.time()
                return
            await asyncio.sleep(0.2)
        if incarnation.expected is None:  # it never became ready: take it down, it is reported
            incarnation.expected = "start_timeout"
            with contextlib.suppress(ProcessLookupError):
                incarnation.process.kill()

    async def wait_ready(self, timeout: float = _READY_TIMEOUT) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready:
                return True
            await asyncio.sleep(0.1)
        return False

    async def kill(self) -> bool:
        """kill -9; False when there was nothing running to kill."""
        incarnation = self.current
        if incarnation is None or incarnation.exited.is_set():
            return False
        incarnation.expected = "sigkill"
        with contextlib.suppress(ProcessLookupError):
            incarnation.process.send_signal(signal.SIGKILL)
        await incarnation.exited.wait()
        return True

    async def terminate(self, cause: str = "sigterm") -> bool:
        """SIGTERM and wait for a graceful exit (kill -9 after the grace: recorded as a hang)."""
        incarnation = self.current
        if incarnation is None or incarnation.exited.is_set():
            return False
        incarnation.expected = cause
        with contextlib.suppress(ProcessLookupError):
            incarnation.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(_STOP_GRACE):
                await incarnation.exited.wait()
        except TimeoutError:
            incarnation.expected = f"{cause}_hung"
            with contextlib.suppress(ProcessLookupError):
                incarnation.process.kill()
            await incarnation.exited.wait()
        return True

    async def close(self) -> None:
        await self.terminate("stop")
        await asyncio.gather(*self._watchers, return_exceptions=True)


class Replicas:
    """The slots, and a keeper that restarts any slot that is down and not held down."""

    def __init__(self, slots: list[ReplicaSlot]) -> None:
        self.slots = slots
        self.keeping = True

    async def keep_up(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self.keeping:
                for slot in self.slots:
                    if not slot.running and time.monotonic() >= slot.down_until:
                        await slot.start()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.25):
                    await stop.wait()

    async def all_ready(self, timeout: float = _READY_TIMEOUT) -> bool:
        for slot in self.slots:
            if not slot.running and time.monotonic() >= slot.down_until:
                await slot.start()
        results = await asyncio.gather(*(slot.wait_ready(timeout) for slot in self.slots))
        return all(results)

    async def close(self) -> None:
        self.keeping = False
        await asyncio.gather(*(slot.close() for slot in self.slots))


async def _answers_http(port: int) -> bool:
    try:
        async with asyncio.timeout(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"GET /api/v1/internal/templates HTTP/1.1\r\nHost: chaos\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(5):
            return (await reader.readline()).startswith(b"HTTP/")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


def _tail(path: Path, size: int = 4000) -> str:
    try:
        with path.open("rb") as log:
            log.seek(max(0, log.seek(0, 2) - size))
            return log.read().decode(errors="replace")
    except OSError:
        return ""
