"""The `send_email` payload (SPEC §2): validated into a `SendRequest`, every problem reported at once.

Pure: no I/O. Both doors (stream and HTTP) use it, so both enforce exactly the same rules.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from email_validator import EmailNotValidError, validate_email

from mailsvc.domain.model import Address, Priority, Recipient, RecipientKind
from mailsvc.errors import MailsvcError

MAX_RECIPIENTS = 50
MAX_HEADERS = 20
MAX_TAGS = 16
MAX_SUBJECT = 998
MAX_NAME = 200
MAX_TAG_KEY = 64
MAX_TAG_VALUE = 256
MAX_HEADER_VALUE = 900
IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:-]{1,200}")
HEADER_NAME = re.compile(r"X-[A-Za-z0-9][A-Za-z0-9-]{0,75}")
LOCALE = re.compile(r"[A-Za-z]{2,8}([-_][A-Za-z0-9]{1,8}){0,3}")
TEMPLATE_ID = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)*")
# C0 controls (CR, LF, NUL, tab ...), DEL, C1 controls (NEL \x85 among them) and the Unicode
# line separators: never inside a header value (the template path turns them into spaces)
_HEADER_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# headers a relay reads as instructions (add recipients, change routing or tracking), not as mail:
# SendGrid, Amazon SES, Mailgun, Postmark, Mandrill, SparkPost
_RELAY_CONTROL = re.compile(r"x-(?:smtpapi|msys-api|(?:ses|mailgun|pm|mc)-.*)", re.IGNORECASE)
_KNOWN_FIELDS = frozenset(
    {
        "to",
        "cc",
        "bcc",
        "reply_to",
        "template",
        "locale",
        "variables",
        "subject",
        "text",
        "html",
        "priority",
        "send_at",
        "expires_at",
        "headers",
        "tags",
        "sensitive",
        "collapse_key",
    }
)


@dataclass(frozen=True, slots=True)
class Problem:
    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class ValidationFailed(MailsvcError):
    """The payload breaks one or more rules; `problems` lists every one found."""

    def __init__(self, problems: list[Problem], reason: str = "validation_failed") -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SendRequest:
    """A valid `send_email` payload, not yet rendered."""

    recipients: tuple[Recipient, ...]
    reply_to: Address | None = None
    template: str | None = None
    locale: str | None = None
    variables: Mapping[str, Any] = field(default_factory=dict)
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    priority: Priority = Priority.NORMAL
    send_at: datetime | None = None
    expires_at: datetime | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    # raw content that is a secret (SPEC §13); a template's manifest decides for templated content
    sensitive: bool = False
    collapse_key: str | None = None  # a newer delivery with the same (source, key) supersedes this one (SPEC §12)


def canonical_json(payload: Any) -> bytes:
    """The payload as canonical JSON: key order and whitespace do not make two requests different.

    Raises `ValidationFailed` for a payload nested too deeply to serialize again.
    """
    try:
        return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        raise ValidationFailed([Problem("", "payload is nested too deeply")]) from None


def request_hash(payload: Any) -> bytes:
    """The digest of the payload's `canonical_json`; raises like it."""
    return canonical_digest(canonical_json(payload))


def canonical_digest(canonical: bytes) -> bytes:
    """`request_hash` of a payload whose `canonical_json` is `canonical`."""
    return hashlib.sha256(canonical).digest()


def keyed_digest(digest: bytes, key: bytes) -> bytes:
    """What is stored of a request: HMAC-SHA256 of its digest under the deployment's key, so a
    stored digest of a login code cannot be matched against guesses without the key (a six-digit
    code is a million SHA-256s away from a plain one). Without a key, the digest itself."""
    if not key:
        return digest
    keyed = _keyed_hmac(key).copy()  # the key's padded inner/outer states, computed once per key
    keyed.update(digest)
    return keyed.digest()


@functools.lru_cache(maxsize=8)
def _keyed_hmac(key: bytes) -> hmac.HMAC:
    """An HMAC-SHA256 with `key` and nothing hashed yet: copying it costs about half of keying a
    new one (`hmac.digest`), for every command accepted."""
    return hmac.new(key, digestmod=hashlib.sha256)


def json_may_hold_nul(json_text: bytes) -> bool:
    """A quick screen before `_nul_paths`, on the payload's JSON: JSON escapes NUL as `\\u0000` (a
    literal backslash followed by `u0000` also matches, which only costs the walk)."""
    return b"\\u0000" in json_text


def _may_hold_nul(payload: Any) -> bool:
    try:
        return json_may_hold_nul(orjson.dumps(payload))
    except orjson.JSONEncodeError:
        return True


def _nul_paths(payload: Any) -> list[str]:
    """Where a NUL character hides (PostgreSQL text and jsonb cannot hold one), in keys or values."""
    found: list[str] = []
    stack: list[tuple[str, Any]] = [("", payload)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                found.append(path)
        elif isinstance(value, Mapping):
            for key, item in value.items():
                child = f"{path}.{key}" if path else str(key)
                if "\x00" in str(key):
                    found.append(child.replace("\x00", "\\x00"))
                else:
                    stack.append((child, item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{index}]", item) for index, item in enumerate(value))
    return sorted(found)


def utf8_size(text: str) -> int:
    """Bytes `text` takes in UTF-8, without encoding it when it is ASCII (nearly always)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def valid_idempotency_key(key: str) -> bool:
    return IDEMPOTENCY_KEY.fullmatch(key) is not None


def has_header_unsafe(text: str) -> bool:
    return _HEADER_UNSAFE.search(text) is not None


# Plain ASCII dot-atom addresses (nearly all of them) are checked by this strict pattern alone;
# anything else goes through email-validator (~100 µs each). The pattern accepts only what
# email-validator accepts too: no special-use TLDs, no numeric TLDs, LDH labels, length limits.
_PLAIN_ADDRESS = re.compile(
    r"(?=.{6,254}$)(?=[^@]{1,64}@)"
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+([A-Za-z]{2,24})"
)
_SPECIAL_USE_TLDS = frozenset({"arpa", "invalid", "local", "localhost", "onion", "test"})


@functools.lru_cache(maxsize=8192)
def normalize_email(raw: str) -> str:
    """The address as it goes on the wire (IDN domain in punycode), or ValueError."""
    if has_header_unsafe(raw):
        raise ValueError("must not contain control characters or line breaks")
    plain = _PLAIN_ADDRESS.fullmatch(raw)
    if plain is not None and plain.group(1).lower() not in _SPECIAL_USE_TLDS and "xn--" not in raw.lower():
        return raw
    try:
        result = validate_email(raw, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid address ({exc})") from None
    return str(result.ascii_email)


class _Checker:
    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def string(self, payload: Mapping[str, Any], key: str, *, limit: int | None = None) -> str | None:
        value = payload.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(key, "must be a string")
            return None
        if limit is not None and len(value) > limit:
            self.fail(key, f"must be at most {limit} characters")
            return None
        return value

    def address(self, value: Any, path: str) -> Address | None:
        name: str | None
        email: Any
        if isinstance(value, str):
            email, name = value, None
        elif isinstance(value, Mapping):
            unknown = set(value) - {"email", "name"}
            if unknown:
                self.fail(path, f"unknown field(s) {', '.join(sorted(map(str, unknown)))}")
                return None
            email, raw_name = value.get("email"), value.get("name")
            if not isinstance(email, str):
                self.fail(f"{path}.email", "required, must be a string")
                return None
            if raw_name is not None and not isinstance(raw_name, str):
                self.fail(f"{path}.name", "must be a string")
                return None
            name = raw_name
            if name is not None:
                if len(name) > MAX_NAME:
                    self.fail(f"{path}.name", f"must be at most {MAX_NAME} characters")
                    return None
                if has_header_unsafe(name):
                    self.fail(f"{path}.name", "must not contain control characters or line breaks")
                    return None
                name = name.strip() or None
        else:
            self.fail(path, "must be an address string or an object with email and name")
            return None
        try:
            return Address(normalize_email(email.strip()), name)
        except ValueError as exc:
            self.fail(f"{path}.email" if isinstance(value, Mapping) else path, str(exc))
            return None

    def recipients(self, payload: Mapping[str, Any]) -> tuple[Recipient, ...]:
        found: list[Recipient] = []
        total = 0
        kinds: tuple[RecipientKind, ...] = ("to", "cc", "bcc")
        for kind in kinds:
            value = payload.get(kind)
            if value is None:
                continue
            if not isinstance(value, list):
                self.fail(kind, "must be a list of addresses")
                continue
            total += len(value)
            if total > MAX_RECIPIENTS:
                continue
            for index, item in enumerate(value):
                address = self.address(item, f"{kind}[{index}]")
                if address is not None:
                    found.append(Recipient(kind, address))
        if total == 0:
            self.fail("to", "at least one recipient is required in to, cc or bcc")
        elif total > MAX_RECIPIENTS:
            self.fail("to", f"at most {MAX_RECIPIENTS} recipients in total (got {total})")
        return tuple(found)

    def timestamp(self, payload: Mapping[str, Any], key: str) -> datetime | None:
        value = self.string(payload, key, limit=64)
        if value is None:
            return None
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            self.fail(key, "must be an RFC 3339 timestamp, e.g. 2026-11-22T10:00:00Z")
            return None
        if parsed.tzinfo is None or "T" not in value.upper():
            self.fail(key, "must be an RFC 3339 timestamp with a UTC offset, e.g. 2026-11-22T10:00:00Z")
            return None
        try:
            parsed.astimezone(UTC)
        except OverflowError:
            self.fail(key, "is out of range")
            return None
        return parsed

    def string_map(self, payload: Mapping[str, Any], key: str, limit: int) -> dict[str, str]:
        value = payload.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.fail(key, "must be an object of string values")
            return {}
        if len(value) > limit:
            self.fail(key, f"at most {limit} entries (got {len(value)})")
            return {}
        out: dict[str, str] = {}
        for name, item in value.items():
            if not isinstance(item, str):
                self.fail(f"{key}.{name}", "must be a string")
            else:
                out[name] = item
        return out

    def headers(self, payload: Mapping[str, Any]) -> dict[str, str]:
        headers = self.string_map(payload, "headers", MAX_HEADERS)
        seen: set[str] = set()
        for name, value in headers.items():
            if not HEADER_NAME.fullmatch(name):
                self.fail(f"headers.{name}", "only X-* headers may be added (letters, digits and '-')")
            elif _RELAY_CONTROL.fullmatch(name):
                self.fail(f"headers.{name}", "a relay reads this header as instructions: it may not be added")
            elif name.lower() in seen:
                self.fail(f"headers.{name}", "given twice (header names are case-insensitive)")
            if has_header_unsafe(value):
                self.fail(f"headers.{name}", "must not contain control characters or line breaks")
            elif len(value) > MAX_HEADER_VALUE:
                self.fail(f"headers.{name}", f"must be at most {MAX_HEADER_VALUE} characters")
            seen.add(name.lower())
        return headers

    def tags(self, payload: Mapping[str, Any]) -> dict[str, str]:
        tags = self.string_map(payload, "tags", MAX_TAGS)
        for name, value in tags.items():
            if not 0 < len(name) <= MAX_TAG_KEY or ":" in name:
                self.fail(f"tags.{name}", f"keys are 1-{MAX_TAG_KEY} characters without ':'")
            if len(value) > MAX_TAG_VALUE:
                self.fail(f"tags.{name}", f"values are at most {MAX_TAG_VALUE} characters")
        return tags


def parse_send_request(payload: Any, *, may_hold_nul: bool | None = None) -> SendRequest:
    """Validate a decoded `send_email` payload; raise `ValidationFailed` listing every problem.

    `may_hold_nul`: what `json_may_hold_nul` said of the JSON the caller already made of this
    payload (the stream door's `canonical_json`), so it is not serialised a second time for the
    screen; None when the caller has none.
    """
    if not isinstance(payload, Mapping):
        raise ValidationFailed([Problem("", "payload must be a JSON object")])
    check = _Checker()
    if not _KNOWN_FIELDS.issuperset(payload):  # nearly always: no set to build and sort
        for key in sorted(set(payload) - _KNOWN_FIELDS, key=str):
            check.fail(str(key), "unknown field")
    recipients = check.recipients(payload)
    reply_to = None
    if payload.get("reply_to") is not None:
        reply_to = check.address(payload["reply_to"], "reply_to")

    template = check.string(payload, "template", limit=200)
    locale = check.string(payload, "locale", limit=35)
    subject = check.string(payload, "subject", limit=MAX_SUBJECT)
    text = check.string(payload, "text")
    html = check.string(payload, "html")
    variables = payload.get("variables")
    raw_given = [name for name in ("subject", "text", "html") if payload.get(name) is not None]
    if template is not None:
        if raw_given:
            check.fail(raw_given[0], "give either template (with variables) or subject/text/html, not both")
        if not TEMPLATE_ID.fullmatch(template):
            check.fail("template", "not a template id (e.g. auth.login_code)")
        if variables is not None and not isinstance(variables, Mapping):
            check.fail("variables", "must be an object")
        if locale is not None and not LOCALE.fullmatch(locale):
            check.fail("locale", "not a locale (e.g. en, pt-BR)")
    else:
        if variables is not None:
            check.fail("variables", "only meaningful with template")
        if locale is not None:
            check.fail("locale", "only meaningful with template")
        if subject is None and payload.get("subject") is None:
            check.fail("subject", "required when no template is given")
        if text is None and payload.get("text") is None:
            check.fail("text", "required when no template is given")
        if subject is not None and has_header_unsafe(subject):
            check.fail("subject", "must be one line without control characters")
        if subject is not None and not subject.strip():
            check.fail("subject", "must not be empty")

    priority = Priority.NORMAL
    raw_priority = payload.get("priority")
    if raw_priority is not None:
        if raw_priority in ("high", "normal", "low"):
            priority = Priority.from_label(raw_priority)
        else:
            check.fail("priority", "must be high, normal or low")
    send_at = check.timestamp(payload, "send_at")
    expires_at = check.timestamp(payload, "expires_at")
    if send_at is not None and expires_at is not None and expires_at <= send_at:
        check.fail("expires_at", "must be after send_at")
    headers = check.headers(payload)
    tags = check.tags(payload)
    sensitive = payload.get("sensitive")
    if sensitive is not None and not isinstance(sensitive, bool):
        check.fail("sensitive", "must be true or false")
    collapse_key = check.string(payload, "collapse_key", limit=200)
    if collapse_key is not None and not valid_idempotency_key(collapse_key):
        check.fail("collapse_key", "must be 1-200 characters of A-Z a-z 0-9 . _ : -")
    if _may_hold_nul(payload) if may_hold_nul is None else may_hold_nul:
        reported = {p.field for p in check.problems}
        for path in _nul_paths(payload):
            if path not in reported:
                check.fail(path, "must not contain NUL characters")
    if check.problems:
        raise ValidationFailed(check.problems)
    return SendRequest(
        recipients=recipients,
        reply_to=reply_to,
        template=template,
        locale=locale,
        variables=variables if isinstance(variables, Mapping) else {},
        subject=subject.strip() if subject is not None else None,
        text=text,
        html=html,
        priority=priority,
        send_at=send_at,
        expires_at=expires_at,
        headers=headers,
        tags=tags,
        sensitive=sensitive is True,
        collapse_key=collapse_key,
    )
