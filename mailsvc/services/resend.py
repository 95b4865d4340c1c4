"""Resend (SPEC §3): a terminal delivery sent again as a NEW delivery.

The new delivery has `source=resend`, `resend_of` set, a new `Message-ID`, and the stored
rendered payload of the original (subject, bodies, reply-to, headers, recipients, tags, template
trace) — nothing is rendered again. It has no expiry (an operator asked for it now) and goes
through normal scheduling. Idempotency scope is (`resend`, key): the same key for the same
original replays the first resend; for another original it is a conflict.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Protocol
from uuid import UUID

from mailsvc.domain.commands import SendRequest, request_hash
from mailsvc.domain.intake import NewDelivery
from mailsvc.domain.model import TERMINAL_STATUSES, RenderedContent, ResendSource
from mailsvc.domain.operator_actions import OperatorAction
from mailsvc.errors import ContentRedacted, NotFound, NotResendable
from mailsvc.services.acceptance import AcceptanceService
from mailsvc.services.acceptance_types import Accepted


class ResendSourceStore(Protocol):
    async def load_resend_source(self, delivery_id: UUID) -> ResendSource | None: ...


@dataclass(frozen=True, slots=True)
class Resent:
    accepted: Accepted
    resend_of: UUID


def generated_key() -> str:
    """The key of a resend asked for without `Idempotency-Key`: unique, so never a replay."""
    return f"resend:{uuid.uuid4().hex}"


class ResendService:
    def __init__(self, *, sources: ResendSourceStore, acceptance: AcceptanceService) -> None:
        self.sources = sources  # the primary: a replica may not have seen the final status yet
        self.acceptance = acceptance

    async def resend(self, delivery_id: UUID, idempotency_key: str | None, *, actor: str) -> Resent:
        """Create (and commit) the new delivery, or replay the one created earlier with this key.
        A created resend records its operator action (by `actor`) in the same transaction; a replay
        records nothing, since it wrote nothing.

        Raises `NotFound` (no such delivery), `NotResendable` (not terminal yet), `ContentRedacted`
        (a sensitive delivery: its content is gone, the producer must issue a new one),
        `IdempotencyConflict` (key used to resend another delivery), `StoreUnavailable`.
        """
        source = await self.sources.load_resend_source(delivery_id)
        if source is None:
            raise NotFound(f"no delivery {delivery_id}")
        prepared = self.prepare(source, idempotency_key or generated_key())
        action = OperatorAction(
            "resend",
            actor,
            target={"delivery_id": str(delivery_id), "resend_delivery_id": str(prepared.delivery_id)},
            counts={"resent": 1},
        )
        prepared = replace(prepared, operator_action=action)
        return Resent(await self.acceptance.persist_one(prepared), delivery_id)

    def prepare(self, source: ResendSource, idempotency_key: str) -> NewDelivery:
        """The new delivery resending `source` (CPU only, nothing written). Raises `NotResendable`
        (not terminal yet) or `ContentRedacted` (sensitive: its content is gone)."""
        delivery_id = source.delivery_id
        if source.status not in TERMINAL_STATUSES:
            raise NotResendable(f"delivery {delivery_id} is {source.status}; only a finished delivery can be resent")
        if source.redacted or source.subject is None or source.text is None:
            raise ContentRedacted(f"delivery {delivery_id} was sensitive: its content was removed when it finished")
        request = SendRequest(
            recipients=source.recipients,
            reply_to=source.reply_to,
            template=source.template,
            locale=source.locale,
            priority=source.priority,
            headers=dict(source.headers),
            tags=dict(source.tags),
        )
        content = RenderedContent(
            subject=source.subject,
            text=source.text,
            html=source.html,
            locale=source.locale,
            template_digest=source.template_digest,
        )
        return self.acceptance.build(
            "resend",
            idempotency_key,
            request_hash({"resend_of": str(delivery_id)}),
            request,
            content,
            resend_of=delivery_id,
        )
