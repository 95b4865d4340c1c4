"""Runs the HTTP listener and every background loop; owns signals and the shutdown order.

Shutdown (SIGTERM/SIGINT): stop reading the stream and accepting HTTP, stop claiming, let running
attempts finish within `MAIL_SHUTDOWN_TIMEOUT`, cancel what is left, close connections, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Sequence

from mailsvc.http.protocol import EmbeddedServer
from mailsvc.loops.base import Loop, Supervisor

log = logging.getLogger("mailsvc.runtime")


class Runtime:
    def __init__(
        self,
        *,
        server: EmbeddedServer,
        sockets: list[socket.socket],
        loops: Sequence[Loop],
        shutdown_timeout: float,
        closers: Sequence[Callable[[], Awaitable[None]]] = (),
        supervisor: Supervisor | None = None,
    ) -> None:
        self.server = server
        self.sockets = sockets
        self.loops = list(loops)  # stopped in this order: intake first, execution last
        self.shutdown_timeout = shutdown_timeout
        self.closers = list(closers)
        self.supervisor = supervisor or Supervisor()
        self.stopping = asyncio.Event()
        self.exit_code = 0

    def request_stop(self, reason: str = "requested") -> None:
        if not self.stopping.is_set():
            log.info("shutdown_started", extra={"reason": reason})
            self.stopping.set()

    def _install_signals(self) -> list[signal.Signals]:
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.request_stop, sig.name)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):  # not the main thread (tests)
                pass
        return installed

    async def _serve_http(self) -> None:
        try:
            await self.server.serve(sockets=self.sockets)
        except Exception:
            log.exception("http_server_failed")
            self.exit_code = 1
        if not self.stopping.is_set():
            self.exit_code = 1
            self.request_stop("http_server_exited")

    async def run(self) -> int:
        installed = self._install_signals()
        http_task = asyncio.create_task(self._serve_http(), name="http")
        loop_tasks = [
            asyncio.create_task(self.supervisor.supervise(loop, self.stopping), name=loop.name) for loop in self.loops
        ]
        log.info("service_started", extra={"loops": [loop.name for loop in self.loops]})
        try:
            await self.stopping.wait()
        finally:
            await self._shutdown(http_task, loop_tasks)
            for sig in installed:
                asyncio.get_running_loop().remove_signal_handler(sig)
        log.info("service_stopped", extra={"exit_code": self.exit_code})
        return self.exit_code

    async def _shutdown(self, http_task: asyncio.Task[None], loop_tasks: list[asyncio.Task[None]]) -> None:
        self.stopping.set()
        self.server.should_exit = True
        for loop in self.loops:
            loop.stop()
        tasks = [http_task, *loop_tasks]
        _, pending = await asyncio.wait(tasks, timeout=self.shutdown_timeout)
        if pending:
            log.warning("shutdown_deadline_passed", extra={"cancelling": sorted(t.get_name() for t in pending)})
            self.server.force_exit = True
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=5)
        for close in self.closers:
            try:
                await close()
            except Exception:
                log.exception("close_failed")
