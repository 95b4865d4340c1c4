"""Background loops are supervised: a crash is logged and the loop restarted, never silently gone."""

from __future__ import annotations

import asyncio
import logging

import pytest

from mailsvc.bootstrap import build_runtime
from mailsvc.loops.base import Supervisor
from mailsvc.settings import load_settings
from tests.support.infra import wait_until


class CrashingLoop:
    """Crashes on its first `crashes` runs, then works until stopped."""

    name = "crashing"

    def __init__(self, crashes: int) -> None:
        self.crashes = crashes
        self.runs = 0
        self.running = asyncio.Event()
        self._stop = asyncio.Event()

    async def run(self) -> None:
        self.runs += 1
        if self.runs <= self.crashes:
            raise RuntimeError(f"boom {self.runs}")
        self.running.set()
        await self._stop.wait()

    def stop(self) -> None:
        self._stop.set()


async def test_crashing_loop_is_restarted_inside_the_runtime(
    service_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(service_env, dotenv=None)
    loop = CrashingLoop(crashes=2)
    runtime = await build_runtime(settings, extra_loops=[loop])
    runtime.supervisor = Supervisor(initial_backoff=0.01, max_backoff=0.05)
    with caplog.at_level(logging.INFO, logger="mailsvc"):
        task = asyncio.create_task(runtime.run())
        await wait_until(lambda: _is_set(loop.running), what="loop running after two crashes")
        assert loop.runs == 3
        assert runtime.supervisor.restarts["crashing"] == 2
        runtime.request_stop("test")
        assert await asyncio.wait_for(task, 15) == 0
    crashes = [r for r in caplog.records if r.getMessage() == "loop_crashed"]
    assert len(crashes) == 2
    assert all(getattr(r, "loop", None) == "crashing" for r in crashes)


async def _is_set(event: asyncio.Event) -> bool:
    return event.is_set()


async def test_loop_returning_on_its_own_is_restarted_too() -> None:
    class Quitter:
        name = "quitter"
        runs = 0

        async def run(self) -> None:
            self.runs += 1

        def stop(self) -> None:
            pass

    quitter, stopping = Quitter(), asyncio.Event()
    supervisor = Supervisor(initial_backoff=0.001, max_backoff=0.002)
    task = asyncio.create_task(supervisor.supervise(quitter, stopping))
    await wait_until(lambda: _ge(quitter.runs, 3), what="three runs")
    stopping.set()
    await asyncio.wait_for(task, 5)


async def _ge(value: int, bound: int) -> bool:
    return value >= bound
