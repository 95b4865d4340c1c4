"""Sharing the one event loop between bulk CPU work and requests that someone waits for (SPEC §2).

Preparing a stream batch (decode, validate, render, build MIME) is CPU work on the event loop. Cut
into slices it no longer blocks the loop, but every step of an HTTP acceptance — and it takes a
dozen: the request, the pool checkout, each statement of its transaction, the response — still
waits for the slice running when it became ready. So, besides slicing, the bulk work gives way:
while an HTTP acceptance is in flight, a slice ends by waiting for it to finish (for a bounded
time, so a steady stream of requests slows a backlog down but never stops it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

SLICE_S = 0.001  # bulk work between two turns of the event loop
GIVE_WAY_S = 0.02  # the longest a slice waits for requests in flight to finish


class LoopShare:
    """Counts the requests in flight (`waited_for`) and hands out `Slices` to bulk work."""

    def __init__(self, *, slice_s: float = SLICE_S, give_way_s: float = GIVE_WAY_S) -> None:
        self.slice_s = slice_s
        self.give_way_s = give_way_s
        self._in_flight = 0
        self._quiet = asyncio.Event()
        self._quiet.set()

    @contextlib.contextmanager
    def waited_for(self) -> Iterator[None]:
        """Around work someone is waiting for: bulk work gives way to it while it runs."""
        self._in_flight += 1
        self._quiet.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._quiet.set()

    def slices(self) -> Slices:
        return Slices(self)

    async def give_way(self) -> None:
        await asyncio.sleep(0)  # whatever is ready runs now
        if self._in_flight:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.give_way_s):
                    await self._quiet.wait()


class Slices:
    """One run of bulk work: `checkpoint()` between its steps ends a slice once it is due."""

    __slots__ = ("_share", "_started")

    def __init__(self, share: LoopShare) -> None:
        self._share = share
        self._started = time.perf_counter()

    async def checkpoint(self) -> None:
        """Cheap when the slice is not over (one clock read); else lets the loop run first."""
        if time.perf_counter() - self._started >= self._share.slice_s:
            await self._share.give_way()
            self._started = time.perf_counter()
