"""The provider pause's pure parts (SPEC §12): what a batch of attempts says about the provider,
and what a provider fault makes of a delivery (never counted toward the maximum)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from mailsvc.domain import transitions
from mailsvc.domain.model import ClaimedDelivery, SendResult
from mailsvc.domain.provider import ProviderPolicy, ProviderReport, provider_report
from mailsvc.domain.retry import RetryPolicy

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(timedelta(seconds=30), timedelta(hours=1), max_attempts=3)
SENT = SendResult("sent", 250)
AUTH = SendResult("transient_failure", 535, error_class="auth_failed", fault="pause")
CONNECT = SendResult("transient_failure", error_class="connect_failed", fault="connect")
LATER = SendResult("transient_failure", 451, error_class="mail_refused")


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def attempt(claim: ClaimedDelivery, result: SendResult) -> transitions.AttemptRecord:
    return transitions.after_attempt(
        claim, result, started=NOW, finished=NOW, policy=POLICY, jitter=0.5, provider="smtp"
    )


def report(*results: SendResult | None) -> ProviderReport:
    return provider_report((at(i), at(i + 0.5), r) for i, r in enumerate(results))


def test_a_batch_of_successes_only_resets() -> None:
    assert report(SENT, SENT) == ProviderReport(reset=True, reset_started=at(1))


def test_failures_after_the_last_success_are_what_counts() -> None:
    assert report(CONNECT, SENT, CONNECT, CONNECT) == ProviderReport(
        reset=True, connect_failures=2, reset_started=at(1)
    )
    assert report(AUTH, SENT) == ProviderReport(reset=True, reset_started=at(1))
    assert report(SENT, AUTH) == ProviderReport(
        reset=True, pause_reason="auth_failed 535", reset_started=at(0), fault_started=at(1)
    )


def test_ordinary_failures_and_records_without_a_verdict_say_nothing() -> None:
    assert report(LATER, None).empty
    assert report().empty


def test_the_order_is_by_finish_time_not_by_position() -> None:
    late_success = (at(0), at(9), SENT)
    early_fault = (at(1), at(2), AUTH)
    assert provider_report([late_success, early_fault]).pause_reason is None


def test_a_provider_fault_is_never_counted_toward_the_maximum() -> None:
    claim = _claim(attempt=7, provider_faults=6)  # six faults before: this is the first counted attempt
    paused = attempt(claim, AUTH)
    assert (paused.status, paused.next_attempt_at, paused.provider_fault) == ("queued", NOW, True)
    connect = attempt(claim, CONNECT)
    assert connect.status == "queued"
    assert connect.next_attempt_at == NOW + POLICY.delay(1, 0.5)
    ordinary = attempt(claim, LATER)
    assert (ordinary.status, ordinary.provider_fault) == ("queued", False)  # 1 counted of 3


def test_the_counted_attempts_still_exhaust_and_the_expiry_still_holds() -> None:
    exhausted = attempt(_claim(attempt=5, provider_faults=2), LATER)
    assert (exhausted.status, exhausted.dead_reason) == ("dead_lettered", "attempts_exhausted")
    expired = attempt(_claim(attempt=1, expires_at=NOW), AUTH)
    assert (expired.status, expired.dead_reason) == ("dead_lettered", "expired")
    recovered = transitions.abandoned(uuid.uuid4(), uuid.uuid4(), 4, NOW, max_attempts=3, provider_faults=2)
    assert recovered.status == "queued"


def test_the_burst_defaults_to_half_a_second_of_the_limit() -> None:
    assert ProviderPolicy(rate_limit=100).burst == 50
    assert ProviderPolicy(rate_limit=1).burst == 1
    assert ProviderPolicy(rate_limit=100, rate_burst=7).burst == 7
    assert not ProviderPolicy().limited


def _claim(attempt: int, provider_faults: int = 0, expires_at: datetime | None = None) -> ClaimedDelivery:
    return ClaimedDelivery(
        delivery_id=uuid.uuid4(),
        claim_token=uuid.uuid4(),
        attempt_number=attempt,
        message_id="<m@example.com>",
        expires_at=expires_at,
        recipients=("ann@example.com",),
        mime=b"",
        recipient_kinds=("to",),
        provider_faults=provider_faults,
    )
