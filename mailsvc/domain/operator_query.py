"""Operator list queries (SPEC §3): filters, limits and opaque keyset cursors, parsed from query
parameters with every problem reported at once (pure, no I/O).

Lists are newest first, keyset-paginated on (timestamp DESC, id DESC). A cursor is the position
of the last item returned, so rows inserted while a client pages never shift what it sees next:
nothing is skipped or repeated. Cursors are opaque (urlsafe base64) and name the list they belong
to; one from another list is refused.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal
from uuid import UUID

import idna

from mailsvc.domain.commands import MAX_TAG_KEY, MAX_TAG_VALUE, MAX_TAGS, TEMPLATE_ID, Problem, ValidationFailed
from mailsvc.domain.events import EVENT_TYPES, FEED_START, EventPosition, EventType
from mailsvc.domain.operator_actions import ACTION_KINDS
from mailsvc.domain.suppression import REASONS, suppression_address

ListKind = Literal["deliveries", "dead_letters", "malformed", "operator_actions", "suppressions"]
Params = Mapping[str, Sequence[str]]

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
DEFAULT_EVENT_LIMIT = 100
MAX_EVENT_LIMIT = 1000
STATUSES = ("queued", "sending", "sent", "dead_lettered", "suppressed", "cancelled", "superseded")
SOURCES = ("notification", "auth", "resend")
MAX_PARAM_LENGTH = 1000
MAX_ADDRESS = 320
REASON = re.compile(r"[a-z0-9_]{1,64}")
_LIMIT = re.compile(r"[0-9]{1,6}")
_CURSOR_TAGS: dict[ListKind, str] = {
    "deliveries": "d",
    "dead_letters": "l",
    "malformed": "m",
    "operator_actions": "a",
    "suppressions": "s",
}


@dataclass(frozen=True, slots=True)
class Keyset:
    """A position in a newest-first list: the timestamp and id of the last item seen."""

    at: datetime
    key: str  # a UUID (deliveries, dead letters), an integer (malformed commands) or an address, as text


@dataclass(frozen=True, slots=True)
class PageRequest:
    limit: int = DEFAULT_LIMIT
    after: Keyset | None = None


@dataclass(frozen=True, slots=True)
class DeliveryFilter:
    """Every filter is optional; those given are combined with AND."""

    status: str | None = None
    source: str | None = None
    template: str | None = None
    recipient: str | None = None  # matched case-insensitively, exactly
    tags: Mapping[str, str] | None = None  # the delivery carries every one of these pairs
    created_after: datetime | None = None  # inclusive
    created_before: datetime | None = None  # exclusive


def encode_cursor(kind: ListKind, position: Keyset) -> str:
    raw = f"{_CURSOR_TAGS[kind]}|{position.at.astimezone(UTC).isoformat()}|{position.key}"
    return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()


def decode_cursor(kind: ListKind, cursor: str) -> Keyset:
    """The position a cursor names; `ValueError` for anything this list did not hand out."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("not a cursor this API returned") from None
    tag, _, rest = raw.partition("|")
    at_text, _, key = rest.partition("|")
    if tag != _CURSOR_TAGS[kind]:
        raise ValueError("not a cursor of this list")
    try:
        at = datetime.fromisoformat(at_text)
        if at.tzinfo is None:
            raise ValueError("naive")
        if kind == "suppressions":
            canonical = key if key and key == key.lower() else ""
        else:
            canonical = str(int(key)) if kind == "malformed" else str(UUID(key))
    except ValueError:
        raise ValueError("not a cursor this API returned") from None
    if canonical != key:
        raise ValueError("not a cursor this API returned")
    return Keyset(at, key)


class _Reader:
    """Reads single- and multi-valued parameters, collecting problems instead of stopping."""

    def __init__(self, params: Params, allowed: frozenset[str]) -> None:
        self.params = params
        self.problems: list[Problem] = []
        for name in sorted(set(params) - allowed):
            self.problems.append(Problem(name, "unknown query parameter"))

    def many(self, name: str) -> list[str]:
        values = list(self.params.get(name, ()))
        for value in values:
            if not value:
                self.problems.append(Problem(name, "must not be empty"))
                return []
            if len(value) > MAX_PARAM_LENGTH or "\x00" in value:
                self.problems.append(Problem(name, f"must be at most {MAX_PARAM_LENGTH} characters, without NUL"))
                return []
        return values

    def one(self, name: str) -> str | None:
        values = self.many(name)
        if len(values) > 1:
            self.problems.append(Problem(name, "given more than once"))
            return None
        return values[0] if values else None

    def choice(self, name: str, choices: Sequence[str]) -> str | None:
        value = self.one(name)
        if value is not None and value not in choices:
            self.problems.append(Problem(name, f"must be one of {', '.join(choices)}"))
            return None
        return value

    def timestamp(self, name: str) -> datetime | None:
        value = self.one(name)
        if value is None:
            return None
        text = value.strip().replace(" ", "+")  # an unencoded "+" in a query string arrives as a space
        try:
            parsed = datetime.fromisoformat(text)
            if parsed.tzinfo is None or "T" not in text.upper():
                raise ValueError("no offset")
            return parsed.astimezone(UTC)
        except (ValueError, OverflowError):
            self.problems.append(Problem(name, "must be an RFC 3339 timestamp with offset, e.g. 2026-11-22T10:00:00Z"))
            return None

    def page(self, kind: ListKind) -> PageRequest:
        limit = DEFAULT_LIMIT
        raw_limit = self.one("limit")
        if raw_limit is not None:
            if not _LIMIT.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= MAX_LIMIT:
                self.problems.append(Problem("limit", f"must be an integer from 1 to {MAX_LIMIT}"))
            else:
                limit = int(raw_limit)
        after = None
        cursor = self.one("cursor")
        if cursor is not None:
            try:
                after = decode_cursor(kind, cursor)
            except ValueError as exc:
                self.problems.append(Problem("cursor", str(exc)))
        return PageRequest(limit, after)

    def done(self) -> None:
        if self.problems:
            raise ValidationFailed(self.problems)


_PAGE = frozenset({"limit", "cursor"})
_DELIVERY_PARAMS = _PAGE | {"status", "source", "template", "recipient", "tag", "created_after", "created_before"}


def parse_delivery_query(params: Params) -> tuple[DeliveryFilter, PageRequest]:
    """Filters and page of `GET /deliveries`; raise `ValidationFailed` listing every problem."""
    read = _Reader(params, _DELIVERY_PARAMS)
    template = read.one("template")
    if template is not None and not TEMPLATE_ID.fullmatch(template):
        read.problems.append(Problem("template", "not a template id (e.g. auth.login_code)"))
    recipient = read.one("recipient")
    if recipient is not None:
        recipient = _normalize_recipient(recipient, read.problems)
    query = DeliveryFilter(
        status=read.choice("status", STATUSES),
        source=read.choice("source", SOURCES),
        template=template,
        recipient=recipient,
        tags=_tags(read.many("tag"), read.problems),
        created_after=read.timestamp("created_after"),
        created_before=read.timestamp("created_before"),
    )
    page = read.page("deliveries")
    read.done()
    return query, page


def parse_dead_letter_query(params: Params) -> PageRequest:
    read = _Reader(params, _PAGE)
    page = read.page("dead_letters")
    read.done()
    return page


@dataclass(frozen=True, slots=True)
class MalformedQuery:
    reason: str | None = None
    include_raw: bool = False  # `?include=raw`: the raw fields, `payload.variables` masked (SPEC §13)


def parse_malformed_query(params: Params) -> tuple[MalformedQuery, PageRequest]:
    read = _Reader(params, _PAGE | {"reason", "include"})
    reason = read.one("reason")
    if reason is not None and not REASON.fullmatch(reason):
        read.problems.append(Problem("reason", "a reason code: 1-64 characters of a-z, 0-9 and _"))
    include = read.choice("include", ("raw",))
    page = read.page("malformed")
    read.done()
    return MalformedQuery(reason, include_raw=include == "raw"), page


@dataclass(frozen=True, slots=True)
class EventQuery:
    """`GET /events`: the feed after `after` (oldest first), optionally one delivery's, some types."""

    after: EventPosition = FEED_START
    delivery_id: UUID | None = None
    types: tuple[EventType, ...] = ()
    limit: int = DEFAULT_EVENT_LIMIT


def parse_event_query(params: Params) -> EventQuery:
    """Raise `ValidationFailed` listing every problem."""
    read = _Reader(params, frozenset({"after", "delivery_id", "type", "limit"}))
    after = FEED_START
    if (token := read.one("after")) is not None:
        try:
            after = EventPosition.from_token(token)
        except ValueError as exc:
            read.problems.append(Problem("after", str(exc)))
    delivery_id = None
    if (raw_id := read.one("delivery_id")) is not None:
        try:
            delivery_id = UUID(raw_id)
        except ValueError:
            read.problems.append(Problem("delivery_id", "must be a delivery id (UUID)"))
    types: list[EventType] = []
    for value in read.many("type"):
        if value not in EVENT_TYPES:
            read.problems.append(Problem("type", f"must be one of {', '.join(EVENT_TYPES)}"))
        elif value not in types:
            types.append(value)
    limit = DEFAULT_EVENT_LIMIT
    if (raw_limit := read.one("limit")) is not None:
        if not _LIMIT.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= MAX_EVENT_LIMIT:
            read.problems.append(Problem("limit", f"must be an integer from 1 to {MAX_EVENT_LIMIT}"))
        else:
            limit = int(raw_limit)
    read.done()
    return EventQuery(after, delivery_id, tuple(types), limit)


def parse_suppression_query(params: Params) -> tuple[str | None, str | None, PageRequest]:
    """`GET /suppressions`: `reason`, `address` (compared as the list stores it) and the page."""
    read = _Reader(params, _PAGE | {"reason", "address"})
    reason = read.choice("reason", REASONS)
    address = read.one("address")
    if address is not None:
        try:
            address = suppression_address(address)
        except ValueError as exc:
            read.problems.append(Problem("address", str(exc)))
            address = None
    page = read.page("suppressions")
    read.done()
    return reason, address, page


def parse_operator_action_query(params: Params) -> tuple[str | None, PageRequest]:
    """`GET /operator-actions`: an optional `kind`, and the page."""
    read = _Reader(params, _PAGE | {"kind"})
    kind = read.choice("kind", ACTION_KINDS)
    page = read.page("operator_actions")
    read.done()
    return kind, page


def parse_include(params: Params) -> bool:
    """`?include=body` on the detail route: True when the rendered bodies are wanted."""
    read = _Reader(params, frozenset({"include"}))
    include = read.choice("include", ("body",))
    read.done()
    return include == "body"


def require_no_params(params: Params) -> None:
    _Reader(params, frozenset()).done()


def _normalize_recipient(value: str, problems: list[Problem]) -> str | None:
    address = value.strip()
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or len(address) > MAX_ADDRESS:
        problems.append(Problem("recipient", "must be one email address"))
        return None
    if not domain.isascii():  # addresses are stored with their domain in punycode
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except UnicodeError:  # idna.IDNAError and friends
            problems.append(Problem("recipient", "has an invalid internationalised domain"))
            return None
    return f"{local}@{domain}"


def _tags(values: list[str], problems: list[Problem]) -> dict[str, str] | None:
    if not values:
        return None
    if len(values) > MAX_TAGS:
        problems.append(Problem("tag", f"at most {MAX_TAGS} tag filters"))
        return None
    tags: dict[str, str] = {}
    for value in values:
        key, colon, tag_value = value.partition(":")
        if not colon or not 0 < len(key) <= MAX_TAG_KEY or len(tag_value) > MAX_TAG_VALUE:
            problems.append(Problem("tag", f"must be key:value (key 1-{MAX_TAG_KEY} characters, no ':')"))
        elif key in tags:
            problems.append(Problem("tag", f"key {key!r} given more than once"))
        else:
            tags[key] = tag_value
    return tags
