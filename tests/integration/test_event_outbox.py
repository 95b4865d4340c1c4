"""The transactional outbox (SPEC §11): every status change writes its event in the same statement
as the change itself, through the transitions — acceptance, results, expiry, stale recovery — and a
result that is not applied (a late worker) writes none."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mailsvc.domain.model import RecipientResult, SendResult
from mailsvc.domain.transitions import expired
from tests.support.queue import Queue, attempted, sent

LEASE = timedelta(seconds=30)


async def test_acceptance_writes_delivery_queued_with_its_schedule(queue: Queue) -> None:
    delivery_id = await queue.accept(priority="high", expires_at="2100-01-01T00:00:00Z")
    [(kind, data)] = await queue.db.events(delivery_id)
    assert kind == "delivery.queued"
    assert data["priority"] == "high"
    assert data["collapse_key"] is None
    assert datetime.fromisoformat(data["expires_at"]) == datetime(2100, 1, 1, tzinfo=UTC)
    assert datetime.fromisoformat(data["send_at"]) <= datetime.now(UTC)


async def test_auth_mail_in_stub_mode_writes_delivery_suppressed(queue: Queue) -> None:
    queue.acceptance.suppress_auth = True
    accepted = await queue.acceptance.accept_request(
        "auth", "login-1", {"to": ["ann@example.org"], "subject": "s", "text": "t"}
    )
    assert accepted.status == "suppressed"
    assert await queue.db.events(accepted.delivery_id) == [("delivery.suppressed", {"reason": "stub_mode"})]


async def test_results_write_sent_deferred_and_dead_lettered_in_order(queue: Queue) -> None:
    ok, retry, bounce = [
        await queue.accept(f"{name}@example.org", "cc@example.org") for name in ("ok", "retry", "bounce")
    ]
    claims = {c.delivery_id: c for c in await queue.store.claim(10, LEASE)}
    refused = RecipientResult("cc@example.org", False, 550, "5.1.1 unknown")
    partly = SendResult("sent", 250, "ok", recipients=(RecipientResult("ok@example.org", True, 250), refused))
    records = [
        attempted(claims[ok], partly),
        attempted(claims[retry], SendResult("transient_failure", 451, "later", error_class="smtp_4xx")),
        attempted(claims[bounce], SendResult("permanent_failure", 550, "5.1.1 no", error_class="rcpt_refused")),
    ]
    assert await queue.store.finish(records) == {ok, retry, bounce}

    events = await queue.db.events(ok)
    assert [kind for kind, _ in events] == ["delivery.queued", "delivery.sent"]
    assert events[1][1] == {
        "attempt": 1,
        "smtp_code": 250,
        "recipients": [
            {"address": "ok@example.org", "kind": "to", "outcome": "accepted"},
            {"address": "cc@example.org", "kind": "to", "outcome": "refused"},
        ],
    }
    [_, (kind, data)] = await queue.db.events(retry)
    assert kind == "delivery.deferred"
    assert (data["attempt"], data["outcome"], data["smtp_code"], data["ambiguous"]) == (
        1,
        "transient_failure",
        451,
        False,
    )
    assert data["next_attempt_at"] is not None
    [_, (kind, data)] = await queue.db.events(bounce)
    assert kind == "delivery.dead_lettered"
    assert (data["reason"], data["attempt"], data["smtp_code"]) == ("permanent_failure", 1, 550)
    assert "5.1.1 no" in data["last_error"]


async def test_expiry_and_stale_recovery_write_their_events(queue: Queue) -> None:
    late, stale = await queue.accept(), await queue.accept()
    claims = {c.delivery_id: c for c in await queue.store.claim(10, LEASE)}
    assert await queue.store.finish([expired(claims[late], datetime.now(UTC))]) == {late}
    [_, (kind, data)] = await queue.db.events(late)
    assert (kind, data["reason"]) == ("delivery.dead_lettered", "expired")

    await queue.expire_claim(stale)
    recovered = await queue.store.recover(datetime.now(UTC), max_attempts=10)
    assert recovered.requeued == 1
    [_, (kind, data)] = await queue.db.events(stale)
    assert (kind, data["outcome"], data["attempt"]) == ("delivery.deferred", "abandoned", 1)


async def test_a_result_that_is_not_applied_writes_no_event(queue: Queue) -> None:
    delivery_id = await queue.accept()
    [claim] = await queue.store.claim(10, LEASE)
    await queue.store.release([claim])  # the claim is given back: its token no longer holds
    assert await queue.store.finish([sent(claim)]) == set()
    assert [kind for kind, _ in await queue.db.events(delivery_id)] == ["delivery.queued"]


async def test_a_delivery_s_events_are_in_its_transactions_order(queue: Queue) -> None:
    delivery_id = await queue.accept()
    for _ in range(3):
        [claim] = await queue.store.claim(10, LEASE)
        await queue.store.finish([attempted(claim, SendResult("transient_failure", 421, "busy"))])
        await queue.db.conn.execute(
            "UPDATE delivery_queue SET next_attempt_at = now() WHERE delivery_id = $1", delivery_id
        )
    [claim] = await queue.store.claim(10, LEASE)
    await queue.store.finish([sent(claim)])
    events = await queue.db.events(delivery_id)
    assert [kind for kind, _ in events] == ["delivery.queued", *["delivery.deferred"] * 3, "delivery.sent"]
    assert [data.get("attempt") for _, data in events] == [None, 1, 2, 3, 4]
