"""The LISTEN loop that wakes the scheduler when another replica accepted work, over a network
that breaks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import pytest

from mailsvc.adapters.postgres.intake_store import WORK_CHANNEL
from mailsvc.adapters.postgres.notifications import WorkListener
from tests.support.infra import wait_until
from tests.support.tcp_proxy import TcpProxy, dsn_through, proxy_to


@pytest.fixture
async def proxy(database_dsn: str) -> AsyncIterator[TcpProxy]:
    running = proxy_to(database_dsn)
    await running.start()
    yield running
    await running.stop()


async def test_a_connection_lost_while_it_starts_listening_is_retried_not_a_crash(
    database_dsn: str, proxy: TcpProxy
) -> None:
    """Found by the chaos run: the connection broke between connecting and `LISTEN`, the error
    escaped the loop ("loop_crashed work-listener") and only the supervisor's restart, after a
    growing backoff, brought the wakeups back."""
    woken: list[int] = []
    listener = WorkListener(dsn_through(database_dsn, proxy.port), lambda: woken.append(1), max_backoff=0.2)
    proxy.cut_on = b"LISTEN"  # the network breaks with the LISTEN in flight, every time
    task = asyncio.create_task(listener.run())
    try:
        await asyncio.sleep(1.5)  # several tries, each cut
        assert not task.done(), task.exception()
        proxy.cut_on = None
        notifier = await asyncpg.connect(database_dsn)
        try:

            async def notified() -> bool:
                woken.clear()
                await notifier.execute(f"SELECT pg_notify('{WORK_CHANNEL}', '')")
                await asyncio.sleep(0.05)
                return bool(woken)

            await wait_until(notified, timeout=10, what="a notification to wake the listener once the network is back")
        finally:
            await notifier.close()
    finally:
        listener.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)
