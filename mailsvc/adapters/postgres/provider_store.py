"""The provider's shared state row (migration 0008) as the operator sees and resets it (SPEC §12).

The hot paths (the claim's gate and bucket, the results' pause and resume) live in `queue_store`,
inside the statements that claim and finish; this is the rest: read it, resume it.
"""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from mailsvc.adapters.postgres.db import unavailable_as_domain_error
from mailsvc.adapters.postgres.operator_actions import record_actions
from mailsvc.domain.clock import utc_now
from mailsvc.domain.operator_actions import OperatorAction
from mailsvc.domain.provider import ProviderState

_READ = text("SELECT state, reason, since, next_probe_at, connect_failures FROM provider_state WHERE id = 1")

# `since = now()`: this statement resumed it (a resume of a provider already sending changes nothing)
_RESUME = text(
    """
    UPDATE provider_state s
    SET state = 'sending', reason = NULL, next_probe_at = NULL, connect_failures = 0,
        since = CASE WHEN s.state = 'paused' THEN now() ELSE s.since END
    WHERE s.id = 1
    RETURNING s.state, s.reason, s.since, s.next_probe_at, s.connect_failures, s.since = now() AS changed
    """
)


class ProviderStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def state(self) -> ProviderState:
        """The shared state (a missing row reads as sending since now)."""
        async with unavailable_as_domain_error(), self.engine.connect() as conn:
            row = (await conn.execute(_READ)).first()
        if row is None:
            return _sending()
        return ProviderState(row.state, row.reason, row.since, row.next_probe_at, row.connect_failures)

    async def resume(self, action: OperatorAction) -> tuple[ProviderState, bool]:
        """Resume sending; the state after, and whether this call changed it (it was paused).
        `action` is recorded in the same transaction, its counts saying `resumed` 1 or 0."""
        async with unavailable_as_domain_error(), self.engine.begin() as conn:
            row = (await conn.execute(_RESUME)).first()
            changed = row is not None and bool(row.changed)
            await record_actions(conn, [replace(action, counts={"resumed": int(changed)})])
        if row is None:
            return _sending(), False
        return ProviderState(row.state, row.reason, row.since, row.next_probe_at, row.connect_failures), changed


def _sending() -> ProviderState:
    return ProviderState("sending", None, utc_now(), None)
