"""Redrive (SPEC §14): resend the dead letters a filter selects, each at most once across
redrives, in bounded batches, audited as one operator action.

The counts are taken first (`matched`, and of those the ones skipped: already redriven, or
redacted); then batches of at most `batch_size` run, each its own transaction (the store's), until
`limit` are resent or none is left. The action is recorded by the first batch and its counts
updated by each following one, so the trail always says how far a redrive got. With
`Idempotency-Key` a retried request answers with the recorded counts; a dry run writes nothing
(and records no action).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from functools import partial
from typing import Protocol

from mailsvc.domain.intake import NewDelivery
from mailsvc.domain.model import ResendSource
from mailsvc.domain.operator_actions import ActionKind, OperatorAction
from mailsvc.domain.redrive import RedriveAnswer, RedriveCounts, RedriveFilter, RedriveRequest
from mailsvc.errors import ActionKeyTaken, IdempotencyConflict
from mailsvc.services.resend import ResendService

BATCH_SIZE = 200


class RedriveStore(Protocol):
    async def count(self, chosen: RedriveFilter) -> tuple[int, int, int]: ...

    async def find_action(self, kind: ActionKind, key: str) -> OperatorAction | None: ...

    async def redrive_batch(
        self,
        chosen: RedriveFilter,
        size: int,
        build: Callable[[Sequence[ResendSource]], list[NewDelivery]],
        action: OperatorAction,
        counts_after: Callable[[int], RedriveCounts],
        *,
        first: bool,
        idempotency_ttl: timedelta,
    ) -> int: ...


def _after(counts: Callable[[int], RedriveCounts], before: int, created: int) -> RedriveCounts:
    return counts(before + created)


def redrive_key(source: ResendSource) -> str:
    """The resend's idempotency key: one per dead letter, so even two redrives racing past every
    other guard would create one delivery (scope `resend`)."""
    return f"redrive:{source.delivery_id}"


class RedriveService:
    def __init__(
        self,
        *,
        store: RedriveStore,
        resends: ResendService,
        idempotency_ttl: timedelta,
        wake_scheduler: Callable[[], None] = lambda: None,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self.store = store
        self.resends = resends
        self.idempotency_ttl = idempotency_ttl
        self.wake_scheduler = wake_scheduler
        self.batch_size = batch_size

    def _build(self, sources: Sequence[ResendSource]) -> list[NewDelivery]:
        return [self.resends.prepare(source, redrive_key(source)) for source in sources]

    async def redrive(self, request: RedriveRequest, *, actor: str, idempotency_key: str | None) -> RedriveAnswer:
        """Raises `IdempotencyConflict` (the key answered another request), `StoreUnavailable`."""
        if idempotency_key is not None and not request.dry_run:
            earlier = await self._earlier(request, idempotency_key)
            if earlier is not None:
                return earlier
        matched, already, redacted = await self.store.count(request.filter)
        eligible = matched - already - redacted

        def counts(redriven: int) -> RedriveCounts:
            return RedriveCounts(matched, redriven, redacted, already, eligible - redriven)

        if request.dry_run:
            return RedriveAnswer(None, True, counts(min(eligible, request.limit)))
        action = OperatorAction(
            "redrive",
            actor,
            filter={**request.filter.as_json(), "limit": request.limit},
            counts=counts(0).as_json(),
            note=request.note,
            idempotency_key=idempotency_key,
            request_hash=request.digest,
        )
        done = 0
        first = True
        while done < request.limit:
            size = min(self.batch_size, request.limit - done)
            try:
                n = await self.store.redrive_batch(
                    request.filter,
                    size,
                    self._build,
                    action,
                    partial(_after, counts, done),
                    first=first,
                    idempotency_ttl=self.idempotency_ttl,
                )
            except ActionKeyTaken:
                assert idempotency_key is not None
                raced = await self._earlier(request, idempotency_key)
                assert raced is not None  # its row committed before ours was refused
                return raced
            first = False
            done += n
            if n:
                self.wake_scheduler()
            if n < size:
                break
        return RedriveAnswer(action.action_id, False, counts(done))

    async def _earlier(self, request: RedriveRequest, key: str) -> RedriveAnswer | None:
        found = await self.store.find_action("redrive", key)
        if found is None:
            return None
        if found.request_hash != request.digest:
            raise IdempotencyConflict(key)
        return RedriveAnswer(
            found.action_id, False, RedriveCounts.from_json(found.counts or {}), idempotent_replay=True
        )
