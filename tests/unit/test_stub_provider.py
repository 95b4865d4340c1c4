"""The stub provider: accepts, records, writes the outbox, and follows the +defer/+bounce/+timeout script."""

from __future__ import annotations

import uuid
from pathlib import Path

from mailsvc.adapters.stub_provider import StubProvider
from mailsvc.domain.model import OutgoingMessage


def message(*recipients: str, attempt: int = 1, mime: bytes = b"Subject: hi\r\n\r\nbody\r\n") -> OutgoingMessage:
    return OutgoingMessage(
        delivery_id=uuid.uuid4(),
        message_id=f"<{uuid.uuid4().hex}@example.com>",
        envelope_from="noreply@example.com",
        recipients=recipients,
        mime=mime,
        attempt_number=attempt,
    )


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def test_accepts_records_and_writes_the_outbox(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    stub = StubProvider(outbox)
    msg = message("ann@example.org", "bob@example.org", mime=b"Subject: x\r\n\r\nol\xc3\xa1\r\n")
    result = await stub.send(msg)
    assert result.outcome == "sent"
    assert result.smtp_code == 250
    assert [(r.address, r.accepted) for r in result.recipients] == [
        ("ann@example.org", True),
        ("bob@example.org", True),
    ]
    assert stub.sent_message_ids == [msg.message_id]
    assert (outbox / f"{msg.delivery_id}.eml").read_bytes() == msg.mime
    assert names(outbox) == [f"{msg.delivery_id}.eml"]  # no temp files left
    await stub.close()


async def test_without_outbox_nothing_is_written(tmp_path: Path) -> None:
    stub = StubProvider()
    assert (await stub.send(message("ann@example.org"))).outcome == "sent"
    assert names(tmp_path) == []


async def test_history_is_bounded() -> None:
    stub = StubProvider(history=3)
    messages = [message("ann@example.org") for _ in range(5)]
    for msg in messages:
        await stub.send(msg)
    assert stub.sent_message_ids == [m.message_id for m in messages[-3:]]


async def test_defer_fails_the_first_attempt_then_accepts(tmp_path: Path) -> None:
    stub = StubProvider(tmp_path)
    first = message("ann@example.org", "ann+defer@example.org", attempt=1)
    result = await stub.send(first)
    assert result.outcome == "transient_failure"
    assert result.smtp_code == 451
    assert not (tmp_path / f"{first.delivery_id}.eml").exists()
    assert stub.sent_message_ids == []

    retry = OutgoingMessage(
        first.delivery_id, first.message_id, first.envelope_from, first.recipients, first.mime, attempt_number=2
    )
    assert (await stub.send(retry)).outcome == "sent"
    assert (tmp_path / f"{first.delivery_id}.eml").exists()


async def test_bounce_is_permanent(tmp_path: Path) -> None:
    stub = StubProvider(tmp_path)
    msg = message("ann@example.org", "Bob+Bounce@example.org")
    result = await stub.send(msg)
    assert result.outcome == "permanent_failure"
    assert result.smtp_code == 550
    assert [(r.address, r.accepted, r.smtp_code) for r in result.recipients] == [("Bob+Bounce@example.org", False, 550)]
    assert names(tmp_path) == []


async def test_timeout_is_transient_and_immediate() -> None:
    stub = StubProvider()
    result = await stub.send(message("ann+timeout@example.org", attempt=3))
    assert result.outcome == "transient_failure"
    assert result.error_class == "timeout"
    assert not result.ambiguous


async def test_tags_only_count_at_the_end_of_the_local_part() -> None:
    stub = StubProvider()
    assert (await stub.send(message("ann+bounce.x@example.org", "bounce@example.org"))).outcome == "sent"
    assert (await stub.send(message("ann@bounce.example.org"))).outcome == "sent"
