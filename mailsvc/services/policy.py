"""Sending policy for operators (SPEC §12): the suppression list and cancelling a queued delivery.

Automatic suppressions (hard bounces) are decided in `transitions.after_attempt` and written with
the attempt; the check at acceptance is part of the acceptance transaction. This service serves
the routes: list, read, add or replace, remove an entry; cancel one delivery.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol
from uuid import UUID

from mailsvc.domain.clock import utc_now
from mailsvc.domain.intake import CancelOutcome
from mailsvc.domain.operator_actions import OperatorAction
from mailsvc.domain.operator_query import Keyset, PageRequest, encode_cursor
from mailsvc.domain.suppression import Suppression, SuppressionRequest, parse_suppression_request
from mailsvc.domain.transitions import CancelledBy
from mailsvc.domain.views import DeliveryDetail, Page
from mailsvc.errors import NotCancellable, NotFound
from mailsvc.instruments import NO_INSTRUMENTS, Instruments
from mailsvc.services.operator_read import OperatorReadStore


class SuppressionStore(Protocol):
    async def get(self, address: str) -> Suppression | None: ...

    async def put(self, request: SuppressionRequest, action: OperatorAction) -> tuple[Suppression, bool]: ...

    async def delete(self, address: str, action: OperatorAction) -> bool: ...

    async def list(self, reason: str | None, address: str | None, page: PageRequest) -> list[Suppression]: ...


class CancelStore(Protocol):
    async def cancel_delivery(
        self, delivery_id: UUID, by: CancelledBy, action: OperatorAction | None = None
    ) -> CancelOutcome: ...


class PolicyService:
    """Every method may raise `StoreUnavailable`."""

    def __init__(
        self,
        *,
        suppressions: SuppressionStore,
        cancels: CancelStore,
        reads: OperatorReadStore,
        clock: Callable[[], Any] = utc_now,
        instruments: Instruments = NO_INSTRUMENTS,
    ) -> None:
        self.suppressions = suppressions
        self.cancels = cancels
        self.reads = reads  # the primary: the answer shows the cancel just committed
        self.clock = clock
        self.instruments = instruments

    async def list_suppressions(self, reason: str | None, address: str | None, page: PageRequest) -> Page[Suppression]:
        rows = await self.suppressions.list(reason, address, PageRequest(page.limit + 1, page.after))
        items = tuple(rows[: page.limit])
        if len(rows) <= page.limit or not items:
            return Page(items, None)
        last = items[-1]
        return Page(items, encode_cursor("suppressions", Keyset(last.created_at, last.address)))

    async def suppression(self, address: str) -> Suppression:
        """The entry in force for `address` (already normalised); raise `NotFound`."""
        found = await self.suppressions.get(address)
        if found is None:
            raise NotFound(f"{address!r} is not suppressed")
        return found

    async def put_suppression(self, address: str, body: Any, *, actor: str) -> tuple[Suppression, bool]:
        """Add or replace an operator's entry (audited); True when it is new. Raise `ValidationFailed`."""
        request = parse_suppression_request(address, body, self.clock())
        action = OperatorAction(
            "suppression_add",
            actor,
            target={"address": request.address, "reason": request.reason},
            counts={"added": 1},
            note=request.note,
        )
        entry, created = await self.suppressions.put(request, action)
        self.instruments.suppressions_added.add(1, {"reason": request.reason})
        return entry, created

    async def remove_suppression(self, address: str, *, actor: str) -> None:
        """Remove an entry (audited); raise `NotFound` when none is in force."""
        action = OperatorAction("suppression_remove", actor, target={"address": address}, counts={"removed": 1})
        if not await self.suppressions.delete(address, action):
            raise NotFound(f"{address!r} is not suppressed")

    async def cancel(self, delivery_id: UUID, *, actor: str) -> DeliveryDetail:
        """Cancel a queued delivery (committed with its operator action, SPEC §12) and return it;
        raise `NotFound`, or `NotCancellable` when it is being sent or finished."""
        action = OperatorAction("cancel", actor, target={"delivery_id": str(delivery_id)}, counts={"cancelled": 1})
        outcome = await self.cancels.cancel_delivery(delivery_id, "operator", action)
        if outcome.kind == "unknown_target":
            raise NotFound(f"no delivery {delivery_id}")
        if outcome.kind == "not_cancellable":
            raise NotCancellable(f"delivery {delivery_id} is no longer queued (being sent, or finished)")
        self.instruments.deliveries_finished.add(1, {"status": "cancelled"})
        found = await self.reads.get_delivery(delivery_id, include_body=False)
        if found is None:  # retention cannot take it this soon; a racing delete could
            raise NotFound(f"no delivery {delivery_id}")
        return found
