"""The provider's state (SPEC §12 circuit breaker): what a batch of attempts says about the provider.

Pure: `provider_report` reads attempt records in the order they finished and says what the shared
state row must learn from them; the queue store applies it in the statement that writes the
results, so a batch of ordinary successes while sending touches nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from mailsvc.domain.model import SendResult

ProviderStateName = Literal["sending", "paused"]
CONNECT_FAILURES_REASON = "connect_failed"  # the reason of a pause by MAIL_PROVIDER_PAUSE_AFTER failures


@dataclass(frozen=True, slots=True)
class ProviderPolicy:
    """MAIL_PROVIDER_PAUSE_AFTER, MAIL_PROVIDER_PROBE_INTERVAL, MAIL_SMTP_RATE_LIMIT / _BURST."""

    pause_after: int = 20
    probe_interval: timedelta = timedelta(seconds=30)
    rate_limit: float = 0.0  # messages/s across every replica; 0 = unlimited
    rate_burst: int = 0  # bucket size; 0 = derived (`burst`)

    @property
    def limited(self) -> bool:
        return self.rate_limit > 0

    @property
    def burst(self) -> int:
        """The bucket's size: as set, else half a second's worth (at least 1) — over any 10 s the
        provider then sees at most 10.5 times the limit, within the 10 % SPEC §12 allows."""
        if self.rate_burst > 0:
            return self.rate_burst
        return max(1, int(self.rate_limit / 2))


DEFAULT_PROVIDER_POLICY = ProviderPolicy()


@dataclass(frozen=True, slots=True)
class ProviderReport:
    """What a batch of attempts tells the shared state, in order: a success (`reset`) first
    resumes and zeroes the connection failures; then the failures after the last success.

    `reset_started` / `fault_started` are when the attempt that resumes / pauses started: one that
    started before the state's last change (an attempt in flight when an operator resumed, or when
    it paused) says nothing about the state since, and is ignored by the store."""

    reset: bool = False
    connect_failures: int = 0
    pause_reason: str | None = None
    reset_started: datetime | None = None
    fault_started: datetime | None = None

    @property
    def empty(self) -> bool:
        return not self.reset and not self.connect_failures and self.pause_reason is None


def provider_report(results: Iterable[tuple[datetime, datetime, SendResult | None]]) -> ProviderReport:
    """The report for `(started_at, finished_at, result)` of each attempt, in the order they
    finished (results without a provider verdict say nothing)."""
    report = ProviderReport()
    for started, _, result in sorted((item for item in results if item[2] is not None), key=lambda item: item[1]):
        assert result is not None
        if result.outcome == "sent":
            report = ProviderReport(reset=True, reset_started=started)
        elif result.fault == "connect":
            report = replace(report, connect_failures=report.connect_failures + 1)
        elif result.fault == "pause":
            report = replace(report, pause_reason=pause_reason(result), fault_started=started)
    return report


def pause_reason(result: SendResult) -> str:
    """What the state row says paused the provider: the error class and the reply code."""
    parts = [result.error_class or "provider_fault"]
    if result.smtp_code is not None:
        parts.append(str(result.smtp_code))
    return " ".join(parts)


@dataclass(frozen=True, slots=True)
class ProviderState:
    """The shared row as `GET /provider` shows it."""

    state: ProviderStateName
    reason: str | None
    since: datetime
    next_probe_at: datetime | None
    connect_failures: int = 0


@dataclass(frozen=True, slots=True)
class ProviderChange:
    """A state change written by one statement (logged once, by the replica that wrote it)."""

    state: ProviderStateName
    reason: str | None
    by: str  # "attempt" | "operator"
