"""The SMTP provider as its tests drive it: providers for a test server, messages, bounded sends."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from mailsvc.adapters.smtp_provider import SmtpProvider
from mailsvc.domain.mime import build_message, make_message_id
from mailsvc.domain.model import Address, OutgoingMessage, SendResult
from mailsvc.settings import HostPort, SmtpSettings

SENDER = "noreply@example.com"
DEADLINE = 10.0  # generous upper bound for any single attempt in these tests

ProviderFactory = Callable[..., SmtpProvider]


def outgoing(*recipients: str, text: str = "Olá!\n.a line with a leading dot\n") -> OutgoingMessage:
    to = [Address(r) for r in recipients]
    mime = build_message(
        from_addr=Address(SENDER, "Example"),
        to=to,
        cc=[],
        reply_to=None,
        subject="Código de acesso",
        text=text,
        html="<p>Olá!</p>",
        headers={},
        message_id=make_message_id("example.com"),
        date=datetime.now(UTC),
    ).mime
    return OutgoingMessage(
        delivery_id=uuid.uuid4(),
        message_id="<m@example.com>",
        envelope_from=SENDER,
        recipients=tuple(recipients),
        mime=mime,
    )


async def send(provider: SmtpProvider, message: OutgoingMessage) -> SendResult:
    return await asyncio.wait_for(provider.send(message), DEADLINE)


class Providers:
    """Builds providers for a server address (`make`, the `provider_for` fixture); `close()` closes
    every one made."""

    def __init__(self) -> None:
        self._made: list[SmtpProvider] = []

    def make(self, addr: HostPort, *, concurrency: int = 2, **overrides: Any) -> SmtpProvider:
        fields: dict[str, Any] = {
            "mode": "smtp",
            "addr": addr,
            "from_email": SENDER,
            "timeout": timedelta(seconds=5),
            "tls": "auto",
        }
        fields.update(overrides)
        provider = SmtpProvider(SmtpSettings(**fields), concurrency, local_hostname="client.test")
        self._made.append(provider)
        return provider

    async def close(self) -> None:
        for provider in self._made:
            await provider.close()
