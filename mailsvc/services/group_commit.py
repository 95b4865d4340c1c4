"""Group commit for single-delivery acceptances (HTTP intake, resend).

Each HTTP request used to run its own transaction of five statements; under concurrency the
round trips, the per-statement driver overhead and the connections they hold dominated. Here
concurrent `accept` calls without a stream offset are merged into one store transaction: the
first caller's batch starts at once, and whatever arrives while it is in flight goes into the
next one. The store already judges a key repeated within a batch (as if the requests had run one
after the other), so outcomes are the same as one transaction per request.

Stream batches (with an offset) pass straight through: they are batches already.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from mailsvc.domain.intake import CancelOutcome, KeyOutcome, NewDelivery, OffsetAdvance
from mailsvc.domain.stream_entries import CancelCommand, MalformedCommand
from mailsvc.errors import StoreUnavailable
from mailsvc.services.acceptance_types import AcceptanceStore

log = logging.getLogger("mailsvc.acceptance")


@dataclass(slots=True)
class _Waiting:
    deliveries: Sequence[NewDelivery]
    stream_key: str
    ttl: timedelta
    future: asyncio.Future[list[KeyOutcome]]


class GroupCommitStore:
    """An `AcceptanceStore` that merges concurrent offset-less acceptances into one transaction."""

    def __init__(self, store: AcceptanceStore, *, max_batch: int = 256) -> None:
        self.store = store
        self.max_batch = max_batch
        self._waiting: list[_Waiting] = []
        self._flusher: asyncio.Task[None] | None = None

    async def accept(
        self,
        deliveries: Sequence[NewDelivery],
        malformed: Sequence[MalformedCommand],
        *,
        stream_key: str,
        offset: OffsetAdvance | None,
        idempotency_ttl: timedelta,
        cancels: Sequence[CancelCommand] = (),
        cancel_outcomes: list[CancelOutcome] | None = None,
    ) -> list[KeyOutcome]:
        """As `AcceptanceStore.accept`; returns once the transaction holding these deliveries committed."""
        if offset is not None or malformed or cancels or not deliveries:
            return await self.store.accept(
                deliveries,
                malformed,
                stream_key=stream_key,
                offset=offset,
                idempotency_ttl=idempotency_ttl,
                cancels=cancels,
                cancel_outcomes=cancel_outcomes,
            )
        future: asyncio.Future[list[KeyOutcome]] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)  # an error nobody awaits any more is not "never retrieved"
        self._waiting.append(_Waiting(deliveries, stream_key, idempotency_ttl, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="acceptance-group-commit")
        # shielded: a caller that goes away must not cancel the batch the others wait for
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        batch: list[_Waiting] = []
        try:
            while self._waiting:
                batch = self._take()
                await self._commit(batch)
        except BaseException:  # cancelled (shutdown): nobody is left waiting forever
            for waiting in [*batch, *self._waiting]:
                waiting.future.cancel()
            self._waiting = []
            raise
        finally:
            self._flusher = None

    def _take(self) -> list[_Waiting]:
        """The oldest waiters sharing the first one's stream key and TTL, up to `max_batch` deliveries."""
        first = self._waiting[0]
        batch: list[_Waiting] = []
        rest: list[_Waiting] = []
        size = 0
        for waiting in self._waiting:
            fits = size + len(waiting.deliveries) <= self.max_batch or not batch
            if fits and waiting.stream_key == first.stream_key and waiting.ttl == first.ttl:
                batch.append(waiting)
                size += len(waiting.deliveries)
            else:
                rest.append(waiting)
        self._waiting = rest
        return batch

    async def _commit(self, batch: list[_Waiting]) -> None:
        first = batch[0]
        try:
            outcomes = await self.store.accept(
                [d for waiting in batch for d in waiting.deliveries],
                [],
                stream_key=first.stream_key,
                offset=None,
                idempotency_ttl=first.ttl,
            )
        except Exception as exc:
            if len(batch) == 1 or isinstance(exc, StoreUnavailable):
                for waiting in batch:
                    _settle(waiting, exc)
                return
            # one bad request must not fail the others: commit each alone
            log.warning("group_commit_split", extra={"error_class": type(exc).__name__, "requests": len(batch)})
            for waiting in batch:
                await self._commit([waiting])
            return
        start = 0
        for waiting in batch:
            end = start + len(waiting.deliveries)
            _settle(waiting, outcomes[start:end])
            start = end


def _retrieve(future: asyncio.Future[list[KeyOutcome]]) -> None:
    if not future.cancelled():
        future.exception()


def _settle(waiting: _Waiting, result: list[KeyOutcome] | Exception) -> None:
    if waiting.future.done():
        return
    if isinstance(result, Exception):
        waiting.future.set_exception(result)
    else:
        waiting.future.set_result(result)
