"""ExecutionService through its Provider Protocol: an in-memory provider, a fixed clock, no I/O."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from mailsvc.domain.model import ClaimedDelivery, OutgoingMessage, ProviderName, RecipientResult, SendResult
from mailsvc.domain.retry import RetryPolicy
from mailsvc.services.execution import ExecutionService

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
POLICY = RetryPolicy(base_delay=timedelta(seconds=10), max_delay=timedelta(minutes=10), max_attempts=3)


class FakeProvider:
    """Implements `services.execution.Provider`: replies with `reply` (a value, an exception, or a hang)."""

    name: ProviderName = "smtp"

    def __init__(self, reply: SendResult | BaseException | None = None) -> None:
        self.reply = reply  # None: never answers
        self.sent: list[OutgoingMessage] = []

    async def send(self, message: OutgoingMessage) -> SendResult:
        self.sent.append(message)
        if self.reply is None:
            await asyncio.Event().wait()
        if isinstance(self.reply, BaseException):
            raise self.reply
        assert self.reply is not None
        return self.reply

    async def close(self) -> None:
        pass


def claim(
    attempt: int = 1, *, expires_at: datetime | None = None, to: tuple[str, ...] = ("ann@example.org",)
) -> ClaimedDelivery:
    return ClaimedDelivery(
        delivery_id=uuid.uuid4(),
        claim_token=uuid.uuid4(),
        attempt_number=attempt,
        message_id="<m1@mail.example.com>",
        expires_at=expires_at,
        recipients=to,
        mime=b"Subject: hi\r\n\r\nbody\r\n",
        recipient_kinds=tuple("to" for _ in to),
    )


def service(
    provider: FakeProvider, *, clock: Callable[[], datetime] = lambda: NOW, timeout: float = 5.0
) -> ExecutionService:
    return ExecutionService(
        provider=provider,
        policy=POLICY,
        envelope_from="bounces@mail.example.com",
        attempt_timeout=timeout,
        clock=clock,
        jitter=lambda: 0.5,  # factor 1.0: the delay is exactly base · 2^(n-1)
    )


async def test_an_expired_claim_is_dead_lettered_without_calling_the_provider() -> None:
    provider = FakeProvider(SendResult("sent", smtp_code=250))
    record = await service(provider).execute(claim(expires_at=NOW))
    assert provider.sent == []
    assert (record.status, record.outcome, record.dead_reason) == ("dead_lettered", "expired", "expired")
    assert record.provider is None
    assert record.result is None


async def test_a_claim_not_yet_expired_is_sent_as_claimed() -> None:
    provider = FakeProvider(SendResult("sent", smtp_code=250))
    c = claim(2, expires_at=NOW + timedelta(seconds=1), to=("ann@example.org", "bob@example.org"))
    await service(provider).execute(c)
    [message] = provider.sent
    assert message.delivery_id == c.delivery_id
    assert message.envelope_from == "bounces@mail.example.com"
    assert message.recipients == ("ann@example.org", "bob@example.org")
    assert (message.attempt_number, message.mime, message.message_id) == (2, c.mime, c.message_id)


async def test_a_sent_result_records_the_attempt_as_sent() -> None:
    times = iter([NOW, NOW + timedelta(milliseconds=1500)])
    c = claim()
    record = await service(FakeProvider(SendResult("sent", smtp_code=250)), clock=lambda: next(times)).execute(c)
    assert (record.status, record.outcome, record.provider) == ("sent", "sent", "smtp")
    assert (record.delivery_id, record.claim_token, record.attempt_number) == (c.delivery_id, c.claim_token, 1)
    assert (record.started_at, record.finished_at, record.duration_ms) == (NOW, NOW + timedelta(seconds=1.5), 1500)
    assert record.next_attempt_at is None
    assert record.dead_reason is None
    assert record.last_error is None
    assert record.event.type == "delivery.sent"


async def test_a_4xx_requeues_with_the_backoff_of_its_attempt_number() -> None:
    result = SendResult("transient_failure", smtp_code=451, smtp_reply="4.7.1 try later")
    record = await service(FakeProvider(result)).execute(claim(2))
    assert (record.status, record.outcome) == ("queued", "transient_failure")
    assert record.next_attempt_at == NOW + timedelta(seconds=20)  # base 10 s · 2^(2-1)
    assert record.dead_reason is None
    assert record.last_error is not None
    assert "451" in record.last_error
    assert record.event.type == "delivery.deferred"


async def test_a_4xx_on_the_last_attempt_dead_letters_it_as_exhausted() -> None:
    record = await service(FakeProvider(SendResult("transient_failure", smtp_code=451))).execute(claim(3))
    assert (record.status, record.dead_reason, record.next_attempt_at) == ("dead_lettered", "attempts_exhausted", None)
    assert record.event.type == "delivery.dead_lettered"


async def test_a_5xx_dead_letters_it_at_once() -> None:
    record = await service(FakeProvider(SendResult("permanent_failure", smtp_code=550))).execute(claim(1))
    assert (record.status, record.dead_reason) == ("dead_lettered", "permanent_failure")


async def test_a_provider_that_never_answers_is_a_transient_timeout() -> None:
    provider = FakeProvider(None)
    record = await service(provider, timeout=0.01).execute(claim())
    assert len(provider.sent) == 1
    assert record.result is not None
    assert record.result.error_class == "timeout"
    assert (record.status, record.outcome) == ("queued", "transient_failure")
    assert record.next_attempt_at == NOW + timedelta(seconds=10)


async def test_a_provider_exception_is_an_internal_transient_error() -> None:
    record = await service(FakeProvider(RuntimeError("bug"))).execute(claim())
    assert record.result is not None
    assert record.result.error_class == "internal:RuntimeError"
    assert (record.status, record.outcome) == ("queued", "transient_failure")


async def test_refused_recipients_of_a_sent_attempt_are_kept_for_the_record() -> None:
    refused = RecipientResult("bob@example.org", accepted=False, smtp_code=550)
    result = SendResult(
        "sent", smtp_code=250, recipients=(RecipientResult("ann@example.org", accepted=True, smtp_code=250), refused)
    )
    record = await service(FakeProvider(result)).execute(claim(to=("ann@example.org", "bob@example.org")))
    assert record.status == "sent"
    assert record.recipient_outcomes == result.recipients
    outcomes = {r["address"]: r["outcome"] for r in record.event.data["recipients"]}
    assert outcomes == {"ann@example.org": "accepted", "bob@example.org": "refused"}
