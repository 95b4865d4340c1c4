"""The one home for status changes (domain/transitions.py): each transition and the event it carries."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from mailsvc.domain import transitions
from mailsvc.domain.model import ClaimedDelivery, Priority, RecipientResult, SendResult
from mailsvc.domain.retry import RetryPolicy

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(timedelta(seconds=30), timedelta(hours=1), max_attempts=3)


def claim(attempt: int = 1, expires_at: datetime | None = None) -> ClaimedDelivery:
    return ClaimedDelivery(
        delivery_id=uuid.uuid4(),
        claim_token=uuid.uuid4(),
        attempt_number=attempt,
        message_id="<m@example.com>",
        expires_at=expires_at,
        recipients=("ann@example.com", "bob@example.com"),
        mime=b"",
        recipient_kinds=("to", "bcc"),
    )


def attempted(c: ClaimedDelivery, result: SendResult) -> transitions.AttemptRecord:
    return transitions.after_attempt(c, result, started=NOW, finished=NOW, policy=POLICY, jitter=0.5, provider="smtp")


def test_a_sent_attempt_finishes_the_delivery_and_lists_every_recipient_with_its_outcome() -> None:
    refused = RecipientResult("bob@example.com", False, 550, "5.1.1 no such user")
    result = SendResult("sent", 250, "2.0.0 ok", recipients=(RecipientResult("ann@example.com", True, 250), refused))
    record = attempted(claim(), result)
    assert (record.status, record.outcome, record.dead_reason, record.last_error) == ("sent", "sent", None, None)
    assert record.event.type == "delivery.sent"
    assert record.event.data == {
        "attempt": 1,
        "smtp_code": 250,
        "recipients": [
            {"address": "ann@example.com", "kind": "to", "outcome": "accepted"},
            {"address": "bob@example.com", "kind": "bcc", "outcome": "refused"},
        ],
    }
    assert record.recipient_outcomes == result.recipients  # some were refused: every row is stored


def test_a_fully_accepted_attempt_stores_no_per_recipient_rows() -> None:
    result = SendResult("sent", 250, "ok", recipients=(RecipientResult("ann@example.com", True, 250),))
    assert attempted(claim(), result).recipient_outcomes == ()


def test_a_transient_failure_is_deferred_with_the_next_attempt_time() -> None:
    record = attempted(claim(), SendResult("transient_failure", 451, "4.3.0 later", error_class="smtp_4xx"))
    assert record.status == "queued"
    assert record.next_attempt_at == NOW + timedelta(seconds=30)
    assert record.last_error == "transient_failure 451 smtp_4xx 4.3.0 later"
    assert record.event.type == "delivery.deferred"
    assert record.event.data == {
        "attempt": 1,
        "outcome": "transient_failure",
        "smtp_code": 451,
        "ambiguous": False,
        "next_attempt_at": (NOW + timedelta(seconds=30)).isoformat(),
    }


def test_an_ambiguous_failure_says_so_in_its_event() -> None:
    record = attempted(claim(), SendResult("transient_failure", error_class="connection_lost", ambiguous=True))
    assert record.event.data["ambiguous"] is True


def test_a_permanent_failure_and_the_last_attempt_are_dead_lettered_with_their_reason() -> None:
    permanent = attempted(claim(), SendResult("permanent_failure", 550, "5.1.1 unknown", error_class="rcpt_refused"))
    assert (permanent.status, permanent.dead_reason) == ("dead_lettered", "permanent_failure")
    assert permanent.event.type == "delivery.dead_lettered"
    assert permanent.event.data == {
        "reason": "permanent_failure",
        "attempt": 1,
        "smtp_code": 550,
        "last_error": "permanent_failure 550 rcpt_refused 5.1.1 unknown",
    }
    exhausted = attempted(claim(attempt=3), SendResult("transient_failure", 451, "later"))
    assert (exhausted.status, exhausted.dead_reason) == ("dead_lettered", "attempts_exhausted")
    assert exhausted.event.data["reason"] == "attempts_exhausted"


def test_a_retry_that_would_start_after_the_expiry_is_dead_lettered_as_expired() -> None:
    record = attempted(claim(expires_at=NOW + timedelta(seconds=10)), SendResult("transient_failure", 451, "later"))
    assert (record.status, record.dead_reason) == ("dead_lettered", "expired")


def test_an_expired_claim_is_dead_lettered_without_an_smtp_conversation() -> None:
    record = transitions.expired(claim(), NOW)
    assert (record.status, record.outcome, record.dead_reason, record.provider) == (
        "dead_lettered",
        "expired",
        "expired",
        None,
    )
    assert record.event.data == {
        "reason": "expired",
        "attempt": 1,
        "smtp_code": None,
        "last_error": transitions.EXPIRED_ERROR,
    }


def test_an_abandoned_claim_is_retried_at_once_until_the_attempts_are_used_up() -> None:
    delivery_id, token = uuid.uuid4(), uuid.uuid4()
    again = transitions.abandoned(delivery_id, token, 2, NOW, max_attempts=3)
    assert (again.status, again.outcome, again.next_attempt_at, again.error_class) == (
        "queued",
        "abandoned",
        NOW,
        "claim_expired",
    )
    assert again.event.type == "delivery.deferred"
    assert again.event.data["outcome"] == "abandoned"
    last = transitions.abandoned(delivery_id, token, 3, NOW, max_attempts=3)
    assert (last.status, last.dead_reason) == ("dead_lettered", "attempts_exhausted")
    assert last.event.type == "delivery.dead_lettered"


def test_acceptance_is_queued_except_auth_mail_in_stub_mode() -> None:
    assert transitions.accepted_status("auth", suppress_auth=True) == "suppressed"
    assert transitions.accepted_status("auth", suppress_auth=False) == "queued"
    assert transitions.accepted_status("notification", suppress_auth=True) == "queued"
    queued = transitions.acceptance_event("queued", send_at=NOW, expires_at=None, priority=Priority.HIGH)
    assert queued.type == "delivery.queued"
    assert queued.data == {"send_at": NOW.isoformat(), "expires_at": None, "priority": "high", "collapse_key": None}
    suppressed = transitions.acceptance_event("suppressed", send_at=NOW, expires_at=None, priority=Priority.NORMAL)
    assert (suppressed.type, suppressed.data) == ("delivery.suppressed", {"reason": "stub_mode"})
