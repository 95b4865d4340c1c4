"""Operator views as JSON: the shapes `mailsvc/http/openapi.py` documents, field for field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from mailsvc.domain.model import Address
from mailsvc.domain.operator_actions import OperatorAction
from mailsvc.domain.templates import TemplateInfo
from mailsvc.domain.views import (
    AttemptView,
    DeadLetterItem,
    DeliveryDetail,
    DeliverySummary,
    MalformedItem,
    RecipientView,
    Redaction,
)


def timestamp(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with a `Z`, microseconds kept."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def summary_json(d: DeliverySummary) -> dict[str, Any]:
    return {
        "delivery_id": str(d.delivery_id),
        "source": d.source,
        "status": d.status,
        "template": d.template,
        "locale": d.locale,
        "template_digest": d.template_digest,
        "priority": d.priority.label,
        "send_at": timestamp(d.send_at),
        "expires_at": timestamp(d.expires_at),
        "idempotency_key": d.idempotency_key,
        "message_id": d.message_id,
        "tags": dict(d.tags),
        "attempt_count": d.attempt_count,
        "next_attempt_at": timestamp(d.next_attempt_at),
        "last_error": d.last_error,
        "resend_of": None if d.resend_of is None else str(d.resend_of),
        "created_at": timestamp(d.created_at),
        "updated_at": timestamp(d.updated_at),
        "finished_at": timestamp(d.finished_at),
        "to": list(d.to),
        "recipient_count": d.recipient_count,
        "collapse_key": d.collapse_key,
        "superseded_by": None if d.superseded_by is None else str(d.superseded_by),
    }


def _address(a: Address | None) -> dict[str, Any] | None:
    return None if a is None else {"email": a.email, "name": a.name}


def _recipient(r: RecipientView) -> dict[str, Any]:
    return {
        "kind": r.kind,
        "address": r.address,
        "name": r.name,
        "outcome": r.outcome,
        "smtp_code": r.smtp_code,
        "smtp_reply": r.smtp_reply,
    }


def attempt_json(a: AttemptView) -> dict[str, Any]:
    return {
        "number": a.number,
        "started_at": timestamp(a.started_at),
        "finished_at": timestamp(a.finished_at),
        "outcome": a.outcome,
        "ambiguous": a.ambiguous,
        "smtp_code": a.smtp_code,
        "smtp_reply": a.smtp_reply,
        "error_class": a.error_class,
        "provider": a.provider,
        "duration_ms": a.duration_ms,
    }


def detail_json(d: DeliveryDetail) -> dict[str, Any]:
    body = summary_json(d.summary)
    body.update(
        subject=d.subject,
        reply_to=_address(d.reply_to),
        headers=dict(d.headers),
        recipients=[_recipient(r) for r in d.recipients],
        attempts=[attempt_json(a) for a in d.attempts],
        dead_letter=None
        if d.dead_letter is None
        else {
            "reason": d.dead_letter.reason,
            "last_error": d.dead_letter.last_error,
            "created_at": timestamp(d.dead_letter.created_at),
        },
        resends=[str(r) for r in d.resends],
        sensitive=d.sensitive,
        redacted=d.redaction is not None,
        content_digest=None if d.redaction is None else _redaction(d.redaction),
    )
    if d.body is not None:
        body.update(text_body=d.body.text, html_body=d.body.html)
    return body


def _redaction(r: Redaction) -> dict[str, Any]:
    return {
        "redacted_at": timestamp(r.redacted_at),
        "mime_sha256": r.mime_sha256,
        "mime_bytes": r.mime_bytes,
        "subject_bytes": r.subject_bytes,
        "text_bytes": r.text_bytes,
        "html_bytes": r.html_bytes,
    }


def dead_letter_json(d: DeadLetterItem) -> dict[str, Any]:
    return {
        "delivery_id": str(d.delivery_id),
        "reason": d.reason,
        "last_error": d.last_error,
        "created_at": timestamp(d.created_at),
        "source": d.source,
        "status": d.status,
        "template": d.template,
        "attempt_count": d.attempt_count,
        "to": list(d.to),
    }


def malformed_json(m: MalformedItem) -> dict[str, Any]:
    body = {
        "malformed_id": m.malformed_id,
        "stream_key": m.stream_key,
        "stream_entry_id": m.stream_entry_id,
        "idempotency_key": m.idempotency_key,
        "reason": m.reason,
        "message": m.message,
        "received_at": timestamp(m.received_at),
        "replayed_as": None if m.replayed_as is None else str(m.replayed_as),
        "replayed_at": timestamp(m.replayed_at),
    }
    if m.raw_fields is not None:
        body["raw_fields"] = m.raw_fields
    return body


def template_json(t: TemplateInfo) -> dict[str, Any]:
    return {
        "id": t.id,
        "description": t.description,
        "default_locale": t.default_locale,
        "locales": list(t.locales),
        "variables": list(t.variables),
        "required_variables": list(t.required_variables),
        "sensitive": t.sensitive,
    }


def operator_action_json(a: OperatorAction) -> dict[str, Any]:
    return {
        "action_id": str(a.action_id),
        "kind": a.kind,
        "actor": a.actor,
        "target": None if a.target is None else dict(a.target),
        "filter": None if a.filter is None else dict(a.filter),
        "counts": None if a.counts is None else dict(a.counts),
        "note": a.note,
        "created_at": timestamp(a.created_at),
    }
