"""`POST /dead-letters/redrive` (SPEC §14): the request, parsed with every problem reported at
once, and the answer (pure, no I/O).

`matched` counts the dead letters the filter selects; `skipped` those of them that cannot be
redriven — already resent by an earlier redrive, or redacted (sensitive content is gone, §13);
`redriven` those resent now (at most `limit`; with `dry_run`, those that would be), and
`remaining` the redrivable ones left for another run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import idna

from mailsvc.domain.commands import TEMPLATE_ID, Problem, ValidationFailed, request_hash
from mailsvc.domain.model import DeadLetterReason
from mailsvc.domain.operator_actions import MAX_NOTE

MAX_REDRIVE = 10_000
DEFAULT_REDRIVE = 1_000
REASONS: tuple[DeadLetterReason, ...] = ("permanent_failure", "attempts_exhausted", "expired")
SOURCES = ("notification", "auth", "resend")
_FILTER_FIELDS = frozenset({"reason", "source", "template", "created_after", "created_before", "recipient_domain"})
_FIELDS = frozenset({"filter", "limit", "dry_run", "note"})


@dataclass(frozen=True, slots=True)
class RedriveFilter:
    """Combined with AND; `created_*` is when the delivery was dead-lettered; `recipient_domain`
    matches any recipient (to, cc, bcc) at that domain, case-insensitively, in its IDNA form."""

    reason: str | None = None
    source: str | None = None
    template: str | None = None
    created_after: datetime | None = None  # inclusive
    created_before: datetime | None = None  # exclusive
    recipient_domain: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            name: value.isoformat() if isinstance(value, datetime) else value
            for name, value in asdict(self).items()
            if value is not None
        }


@dataclass(frozen=True, slots=True)
class RedriveRequest:
    filter: RedriveFilter = field(default_factory=RedriveFilter)
    limit: int = DEFAULT_REDRIVE
    dry_run: bool = False
    note: str | None = None

    @property
    def digest(self) -> bytes:
        """What a retry with the same `Idempotency-Key` must repeat."""
        return request_hash({"filter": self.filter.as_json(), "limit": self.limit, "dry_run": self.dry_run})


@dataclass(frozen=True, slots=True)
class RedriveCounts:
    matched: int = 0
    redriven: int = 0
    skipped_redacted: int = 0
    skipped_already_redriven: int = 0
    remaining: int = 0

    @property
    def skipped(self) -> int:
        return self.skipped_redacted + self.skipped_already_redriven

    def as_json(self) -> dict[str, int]:
        return {**asdict(self), "skipped": self.skipped}

    @classmethod
    def from_json(cls, counts: Mapping[str, Any]) -> RedriveCounts:
        return cls(**{name: int(counts.get(name, 0)) for name in cls.__dataclass_fields__})


@dataclass(frozen=True, slots=True)
class RedriveAnswer:
    action_id: UUID | None  # None for a dry run: nothing was written
    dry_run: bool
    counts: RedriveCounts
    idempotent_replay: bool = False


def _timestamp(value: Any, name: str, problems: list[Problem]) -> datetime | None:
    if value is None:
        return None
    try:
        if not isinstance(value, str) or "T" not in value.upper():
            raise ValueError(name)
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError(name)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        problems.append(Problem(f"filter.{name}", "must be an RFC 3339 timestamp with offset"))
        return None


def _choice(value: Any, name: str, choices: tuple[str, ...], problems: list[Problem]) -> str | None:
    if value is None:
        return None
    if value not in choices:
        problems.append(Problem(f"filter.{name}", f"must be one of {', '.join(choices)}"))
        return None
    return str(value)


def _domain(value: Any, problems: list[Problem]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or "@" in value or len(value) > 253:
        problems.append(Problem("filter.recipient_domain", "must be a domain name, e.g. example.com"))
        return None
    domain = value.strip().rstrip(".").lower()
    if not domain.isascii():  # addresses are stored with their domain in punycode
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except UnicodeError:
            problems.append(Problem("filter.recipient_domain", "is not a valid internationalised domain"))
            return None
    return domain


def parse_redrive_request(body: Any) -> RedriveRequest:
    """Raise `ValidationFailed` listing every problem of the body."""
    if not isinstance(body, Mapping):
        raise ValidationFailed([Problem("", "body must be a JSON object")])
    problems = [Problem(str(name), "unknown field") for name in sorted(set(body) - _FIELDS, key=str)]
    raw_filter = body.get("filter", {})
    if not isinstance(raw_filter, Mapping):
        problems.append(Problem("filter", "must be an object"))
        raw_filter = {}
    problems += [Problem(f"filter.{n}", "unknown field") for n in sorted(set(raw_filter) - _FILTER_FIELDS, key=str)]
    template = raw_filter.get("template")
    if template is not None and not (isinstance(template, str) and TEMPLATE_ID.fullmatch(template)):
        problems.append(Problem("filter.template", "not a template id (e.g. auth.login_code)"))
        template = None
    after = _timestamp(raw_filter.get("created_after"), "created_after", problems)
    before = _timestamp(raw_filter.get("created_before"), "created_before", problems)
    if after is not None and before is not None and before <= after:
        problems.append(Problem("filter.created_before", "must be after created_after"))
    limit = body.get("limit", DEFAULT_REDRIVE)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_REDRIVE:
        problems.append(Problem("limit", f"must be an integer from 1 to {MAX_REDRIVE}"))
        limit = DEFAULT_REDRIVE
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        problems.append(Problem("dry_run", "must be true or false"))
    note = body.get("note")
    if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE or "\x00" in note):
        problems.append(Problem("note", f"must be a string of at most {MAX_NOTE} characters"))
    chosen = RedriveFilter(
        reason=_choice(raw_filter.get("reason"), "reason", REASONS, problems),
        source=_choice(raw_filter.get("source"), "source", SOURCES, problems),
        template=template,
        created_after=after,
        created_before=before,
        recipient_domain=_domain(raw_filter.get("recipient_domain"), problems),
    )
    if problems:
        raise ValidationFailed(problems)
    return RedriveRequest(chosen, limit, dry_run is True, note)
