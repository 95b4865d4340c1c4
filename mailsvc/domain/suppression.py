"""The suppression list's rules (SPEC §12): how an address is compared, and which refusal adds one.

Pure. An address is compared in its wire form (the IDN domain in punycode, as validation leaves
every recipient) in lower case, so `Ann@Bücher.example` and `ann@xn--bcher-kva.example` are one
entry. A recipient refused at `RCPT TO` with a 5xx that says the mailbox does not exist or is
disabled — enhanced code 5.1.1, 5.1.2, 5.1.3, 5.1.6, 5.1.10 or 5.2.1, or, without an enhanced
code, a 550, 551 or 553 — is a hard bounce. A policy refusal (5.7.x, or any other enhanced code)
and every 4xx never are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from mailsvc.domain.commands import Problem, ValidationFailed, has_header_unsafe, normalize_email
from mailsvc.domain.model import RecipientResult

SuppressionReason = Literal["hard_bounce", "complaint", "manual"]
REASONS: tuple[SuppressionReason, ...] = ("hard_bounce", "complaint", "manual")
MANUAL_REASONS: tuple[SuppressionReason, ...] = ("manual", "complaint")

_HARD_BOUNCE_CODES = frozenset({"5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10", "5.2.1"})
_BARE_HARD_BOUNCES = frozenset({550, 551, 553})
# RFC 3463: class.subject.detail at the start of the reply text
_ENHANCED = re.compile(r"\s*([245])\.(\d{1,3})\.(\d{1,3})(?!\d)")


@dataclass(frozen=True, slots=True)
class Suppression:
    address: str
    reason: SuppressionReason
    delivery_id: UUID | None
    note: str | None
    created_at: datetime
    expires_at: datetime | None


MAX_NOTE = 1000


@dataclass(frozen=True, slots=True)
class SuppressionRequest:
    """`PUT /suppressions/{address}`: an operator's entry (SPEC §12)."""

    address: str
    reason: SuppressionReason
    note: str | None
    expires_at: datetime | None


def parse_suppression_request(address: str, body: Any, now: datetime) -> SuppressionRequest:
    """Validate an operator's entry; raise `ValidationFailed` listing every problem."""
    problems: list[Problem] = []
    key = ""
    try:
        key = suppression_address(address)
    except ValueError as exc:
        problems.append(Problem("address", str(exc)))
    if not isinstance(body, dict):
        raise ValidationFailed([*problems, Problem("", "body must be a JSON object")])
    for name in sorted(set(body) - {"reason", "note", "expires_at"}):
        problems.append(Problem(str(name), "unknown field"))
    reason = body.get("reason")
    if reason not in MANUAL_REASONS:
        problems.append(Problem("reason", "required: manual or complaint (hard_bounce entries are automatic)"))
    note = body.get("note")
    if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE or "\x00" in note):
        problems.append(Problem("note", f"must be a string of at most {MAX_NOTE} characters without NUL"))
    expires_at = None
    raw_expiry = body.get("expires_at")
    if raw_expiry is not None:
        expires_at = _timestamp(raw_expiry, now, problems)
    if problems:
        raise ValidationFailed(problems)
    assert reason in MANUAL_REASONS
    return SuppressionRequest(key, reason, note, expires_at)


def _timestamp(value: Any, now: datetime, problems: list[Problem]) -> datetime | None:
    if not isinstance(value, str) or len(value) > 64 or has_header_unsafe(value):
        problems.append(Problem("expires_at", "must be an RFC 3339 timestamp, e.g. 2026-11-22T10:00:00Z"))
        return None
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None or "T" not in value.upper():
            raise ValueError("no offset")
        parsed = parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        problems.append(Problem("expires_at", "must be an RFC 3339 timestamp with offset, e.g. 2026-11-22T10:00:00Z"))
        return None
    if parsed <= now:
        problems.append(Problem("expires_at", "must be in the future"))
        return None
    return parsed


def suppression_address(address: str) -> str:
    """The key an address is suppressed under: its wire form in lower case; ValueError when
    it is not an address at all."""
    return normalize_email(address.strip()).lower()


def key_of(wire_address: str) -> str:
    """The key of an address validation already normalised (a recipient's stored address)."""
    return wire_address.lower()


def enhanced_code(reply: str | None) -> str | None:
    """The RFC 3463 enhanced status code a reply text starts with (`5.1.1`), or None."""
    if not reply:
        return None
    found = _ENHANCED.match(reply)
    if found is None:
        return None
    return ".".join(str(int(part)) for part in found.groups())


def is_hard_bounce(smtp_code: int | None, reply: str | None) -> bool:
    """A refusal at RCPT TO that says the mailbox does not exist or is disabled."""
    if smtp_code is None or not 500 <= smtp_code <= 599:
        return False
    enhanced = enhanced_code(reply)
    if enhanced is not None:
        return enhanced in _HARD_BOUNCE_CODES
    return smtp_code in _BARE_HARD_BOUNCES


def hard_bounces(recipients: Iterable[RecipientResult]) -> tuple[str, ...]:
    """The keys of the refused recipients that are hard bounces, each once, in order."""
    found: dict[str, None] = {}
    for recipient in recipients:
        if not recipient.accepted and is_hard_bounce(recipient.smtp_code, recipient.smtp_reply):
            found.setdefault(key_of(recipient.address), None)
    return tuple(found)
