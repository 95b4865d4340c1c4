"""The stub provider (`MAIL_SMTP_MODE=stub`): accepts messages without a mail server.

Scriptable by recipient local part, so producers can exercise their failure paths (SPEC §4); the
first matching rule wins, in this order:

- `…+bounce@…`  → 550, permanent failure;
- `…+timeout@…` → transient failure classified as a timeout (returned at once, no sleeping);
- `…+defer@…`   → 451, transient failure on attempt 1, accepted on later attempts.

Accepted messages are remembered (the last `history` Message-IDs, for tests) and, when
`outbox_dir` is set, written atomically as `<delivery_id>.eml`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections import deque
from pathlib import Path
from uuid import UUID

from mailsvc.domain.model import OutgoingMessage, ProviderName, RecipientResult, SendResult

__all__ = ["StubProvider", "write_outbox"]

_log = logging.getLogger(__name__)


def _tagged(recipients: tuple[str, ...], tag: str) -> tuple[str, ...]:
    suffix = "+" + tag
    return tuple(r for r in recipients if r.rpartition("@")[0].lower().endswith(suffix))


class StubProvider:
    """A provider that never touches the network."""

    name: ProviderName = "stub"

    def __init__(self, outbox_dir: Path | None = None, *, history: int = 1000) -> None:
        self._outbox_dir = outbox_dir
        self._sent: deque[str] = deque(maxlen=history)

    @property
    def sent_message_ids(self) -> list[str]:
        """Message-IDs of the most recently accepted messages, oldest first."""
        return list(self._sent)

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Answer like a mail server would for this message's scripted recipients (never raises
        for a scripted failure; an outbox write error propagates as `OSError`)."""
        bounced = _tagged(message.recipients, "bounce")
        if bounced:
            reply = "5.1.1 stub: mailbox unavailable (+bounce)"
            return SendResult(
                outcome="permanent_failure",
                smtp_code=550,
                smtp_reply=reply,
                error_class="recipients_refused",
                recipients=tuple(RecipientResult(r, False, 550, reply) for r in bounced),
            )
        if _tagged(message.recipients, "timeout"):
            return SendResult(outcome="transient_failure", error_class="timeout")
        if _tagged(message.recipients, "defer") and message.attempt_number <= 1:
            return SendResult(
                outcome="transient_failure",
                smtp_code=451,
                smtp_reply="4.3.0 stub: try again later (+defer)",
                error_class="smtp_4xx",
            )
        if self._outbox_dir is not None:
            await write_outbox(self._outbox_dir, message.delivery_id, message.mime)
        self._sent.append(message.message_id)
        _log.debug("stub.accepted", extra={"delivery_id": str(message.delivery_id)})
        return SendResult(
            outcome="sent",
            smtp_code=250,
            smtp_reply="2.0.0 stub: accepted",
            recipients=tuple(RecipientResult(r, True, 250) for r in message.recipients),
        )

    async def close(self) -> None:
        """Nothing to release."""


async def write_outbox(directory: Path, delivery_id: UUID, mime: bytes) -> None:
    """Write `mime` as `<delivery_id>.eml` in `directory`, atomically (also used for the auth
    deliveries that stub mode suppresses, so a developer sees the login code, SPEC §4)."""
    await asyncio.to_thread(_write_eml, directory, delivery_id, mime)


def _write_eml(directory: Path, delivery_id: UUID, mime: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{delivery_id}.eml"
    temp = directory / f".{delivery_id}.{uuid.uuid4().hex}.tmp"
    try:
        with temp.open("wb") as fh:
            fh.write(mime)
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
