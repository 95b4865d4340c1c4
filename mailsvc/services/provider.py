"""The provider's pause and rate limit as the operator sees them (SPEC §12), and the one `error`
log line and the gauge for each state change.

The state itself is decided by the statements that claim and record attempts (see `queue_store`);
this service hears of the changes this process wrote (`changed`), samples the state for the
`mail.provider.paused` gauge, and serves `GET /provider` and `POST /provider/resume`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from mailsvc.domain.events import rfc3339
from mailsvc.domain.operator_actions import OperatorAction
from mailsvc.domain.provider import ProviderChange, ProviderPolicy, ProviderState
from mailsvc.instruments import NO_INSTRUMENTS, Instruments

log = logging.getLogger("mailsvc.provider")


class ProviderStateStore(Protocol):
    async def state(self) -> ProviderState: ...

    async def resume(self, action: OperatorAction) -> tuple[ProviderState, bool]: ...


@dataclass(frozen=True, slots=True)
class ProviderView:
    mode: str
    state: ProviderState
    policy: ProviderPolicy

    def json(self) -> dict[str, Any]:
        """`GET /provider`: `rate_limit` is null when unlimited."""
        rate = {"per_second": self.policy.rate_limit, "burst": self.policy.burst} if self.policy.limited else None
        return {
            "mode": self.mode,
            "state": self.state.state,
            "reason": self.state.reason,
            "since": rfc3339(self.state.since),
            "next_probe_at": rfc3339(self.state.next_probe_at),
            "rate_limit": rate,
        }


class ProviderService:
    def __init__(
        self, store: ProviderStateStore, *, mode: str, policy: ProviderPolicy, instruments: Instruments = NO_INSTRUMENTS
    ) -> None:
        self.store = store
        self.mode = mode
        self.policy = policy
        self.paused: int | None = None  # the gauge's value, sampled (its callback must not query)
        self.on_change: Callable[[ProviderChange], None] = lambda change: None  # the worker pool hears of it
        if instruments.metering:
            instruments.watch("provider_paused", lambda: self.paused)

    def changed(self, change: ProviderChange) -> None:
        """A state change this process wrote: logged once, at `error` (SPEC §12)."""
        self.paused = 1 if change.state == "paused" else 0
        self.on_change(change)
        event = "provider_paused" if change.state == "paused" else "provider_resumed"
        log.error(event, extra={"state": change.state, "reason": change.reason, "by": change.by})

    async def sample(self) -> None:
        self.paused = 1 if (await self.store.state()).state == "paused" else 0

    async def show(self) -> ProviderView:
        return ProviderView(self.mode, await self.store.state(), self.policy)

    async def resume(self, *, actor: str, note: str | None = None) -> ProviderView:
        """`POST /provider/resume`: sending again at once (a provider already sending is left as it
        is); audited as a `provider_resume` operator action by `actor`, in the same transaction."""
        state, changed = await self.store.resume(OperatorAction("provider_resume", actor, note=note))
        if changed:
            self.changed(ProviderChange("sending", None, by="operator"))
        return ProviderView(self.mode, state, self.policy)
