"""The `send_email` payload rules of SPEC §2, one test (at least) per rule, and the request hash."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from mailsvc.domain.commands import (
    MAX_HEADERS,
    MAX_RECIPIENTS,
    MAX_TAGS,
    Problem,
    SendRequest,
    ValidationFailed,
    canonical_digest,
    canonical_json,
    json_may_hold_nul,
    keyed_digest,
    parse_send_request,
    request_hash,
    valid_idempotency_key,
)
from mailsvc.domain.model import Address, Priority, Recipient


def raw(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"to": ["ann@example.com"], "subject": "Hello", "text": "Hi Ann"}
    payload.update(overrides)
    return {k: v for k, v in payload.items() if v is not None}


def problems(payload: Any) -> list[Problem]:
    with pytest.raises(ValidationFailed) as caught:
        parse_send_request(payload)
    assert caught.value.reason == "validation_failed"
    assert caught.value.problems, "ValidationFailed without problems"
    return caught.value.problems


def fields(payload: Any) -> set[str]:
    return {p.field for p in problems(payload)}


def emails(count: int) -> list[str]:
    return [f"user{i}@example.com" for i in range(count)]


# -- a valid payload -------------------------------------------------------------------------


def test_minimal_raw_payload_is_accepted_with_defaults() -> None:
    request = parse_send_request(raw())
    assert request == SendRequest(
        recipients=(Recipient("to", Address("ann@example.com")),), subject="Hello", text="Hi Ann"
    )
    assert request.priority is Priority.NORMAL


def test_full_payload_is_parsed() -> None:
    request = parse_send_request(
        {
            "to": [{"email": "ann@example.com", "name": "Ann Lee"}, "bob@example.com"],
            "cc": ["carol@example.com"],
            "bcc": [{"email": "dan@example.com"}],
            "reply_to": "support@example.com",
            "template": "auth.login_code",
            "locale": "pt-BR",
            "variables": {"code": "481516"},
            "priority": "high",
            "send_at": "2026-11-22T10:00:00Z",
            "expires_at": "2026-11-22T10:15:00+00:00",
            "headers": {"X-Campaign": "winter"},
            "tags": {"tenant": "acme"},
        }
    )
    assert [(r.kind, r.address) for r in request.recipients] == [
        ("to", Address("ann@example.com", "Ann Lee")),
        ("to", Address("bob@example.com")),
        ("cc", Address("carol@example.com")),
        ("bcc", Address("dan@example.com")),
    ]
    assert request.reply_to == Address("support@example.com")
    assert (request.template, request.locale, dict(request.variables)) == (
        "auth.login_code",
        "pt-BR",
        {"code": "481516"},
    )
    assert request.priority is Priority.HIGH
    assert request.send_at == datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    assert request.expires_at == datetime(2026, 11, 22, 10, 15, tzinfo=UTC)
    assert dict(request.headers) == {"X-Campaign": "winter"}
    assert dict(request.tags) == {"tenant": "acme"}


@pytest.mark.parametrize("priority", ["high", "normal", "low"])
def test_each_priority_label_is_accepted(priority: str) -> None:
    assert parse_send_request(raw(priority=priority)).priority is Priority.from_label(priority)


# -- recipients ------------------------------------------------------------------------------


def test_zero_recipients_is_refused() -> None:
    assert fields(raw(to=[])) == {"to"}
    assert fields({"subject": "s", "text": "t"}) == {"to"}


def test_fifty_recipients_across_kinds_is_the_limit() -> None:
    request = parse_send_request(raw(to=emails(20), cc=emails(20), bcc=emails(10)))
    assert len(request.recipients) == MAX_RECIPIENTS


def test_fifty_one_recipients_is_refused() -> None:
    found = problems(raw(to=emails(30), cc=emails(20), bcc=emails(1)))
    assert [p.field for p in found] == ["to"]
    assert "51" in found[0].message


def test_one_thousand_recipients_is_one_problem_not_a_thousand() -> None:
    found = problems(raw(to=emails(1000)))
    assert len(found) == 1
    assert "1000" in found[0].message


@pytest.mark.parametrize(
    "address",
    [
        "not-an-address",
        "ann@",
        "@example.com",
        "ann@@example.com",
        "ann lee@example.com",
        "ann@example..com",
        "ann@-example.com",
        "",
    ],
)
def test_invalid_addresses_are_refused(address: str) -> None:
    assert fields(raw(to=[address])) == {"to[0]"}


def test_invalid_address_in_object_names_the_email_field() -> None:
    assert fields(raw(to=["ok@example.com", {"email": "nope"}])) == {"to[1].email"}


def test_internationalized_domain_is_accepted_in_punycode() -> None:
    request = parse_send_request(raw(to=["ann@bücher.example"], cc=[{"email": "bob@例え.jp", "name": "Bob"}]))
    assert [r.address.email for r in request.recipients] == ["ann@xn--bcher-kva.example", "bob@xn--r8jz45g.jp"]


def test_non_ascii_local_part_is_refused() -> None:
    assert fields(raw(to=["jöran@example.com"])) == {"to[0]"}


@pytest.mark.parametrize("name", ["Ann\r\nBcc: x@evil.example", "Ann\nLee", "Ann\rLee", "Ann\x00", "Ann\u2028Lee"])
def test_display_name_with_line_breaks_or_controls_is_refused(name: str) -> None:
    assert fields(raw(to=[{"email": "ann@example.com", "name": name}])) == {"to[0].name"}


@pytest.mark.parametrize("address", ["ann@example.com\r\nBcc: x@evil.example", "ann@exa\nmple.com", "a\rb@example.com"])
def test_address_with_line_breaks_is_refused(address: str) -> None:
    assert fields(raw(to=[address])) == {"to[0]"}
    assert fields(raw(reply_to=address)) == {"reply_to"}


@pytest.mark.parametrize(
    "recipient",
    [42, None, ["ann@example.com"], {"email": 1}, {"name": "Ann"}, {"email": "ann@example.com", "extra": "x"}],
)
def test_recipient_of_the_wrong_shape_is_refused(recipient: Any) -> None:
    assert {f.split(".")[0] for f in fields(raw(to=[recipient]))} == {"to[0]"}


def test_recipient_list_must_be_a_list() -> None:
    assert "to" in fields(raw(to="ann@example.com"))


# -- content: template XOR raw ----------------------------------------------------------------


def test_template_payload_needs_no_subject_or_text() -> None:
    request = parse_send_request({"to": ["ann@example.com"], "template": "auth.login_code", "variables": {"code": "1"}})
    assert request.template == "auth.login_code"
    assert request.subject is None


@pytest.mark.parametrize("extra", [{"subject": "s"}, {"text": "t"}, {"html": "<p>h</p>"}])
def test_template_and_raw_content_together_is_refused(extra: dict[str, str]) -> None:
    payload = {"to": ["ann@example.com"], "template": "auth.login_code", "variables": {"code": "1"}, **extra}
    assert fields(payload) == set(extra)


def test_neither_template_nor_raw_content_is_refused() -> None:
    assert fields({"to": ["ann@example.com"]}) == {"subject", "text"}


def test_raw_content_needs_subject_and_text() -> None:
    assert fields(raw(subject=None)) == {"subject"}
    assert fields(raw(text=None)) == {"text"}
    assert fields(raw(subject="   ")) == {"subject"}


def test_variables_and_locale_without_template_are_refused() -> None:
    assert fields(raw(variables={"a": "b"}, locale="en")) == {"variables", "locale"}


def test_template_fields_of_the_wrong_shape_are_refused() -> None:
    payload = {"to": ["ann@example.com"], "template": "Not A Template!", "locale": "12", "variables": [1]}
    assert fields(payload) == {"template", "locale", "variables"}


@pytest.mark.parametrize("subject", ["Hello\r\nBcc: x@evil.example", "Hello\nWorld", "tab\tnot-allowed\x01"])
def test_raw_subject_must_be_one_line(subject: str) -> None:
    assert fields(raw(subject=subject)) == {"subject"}


def test_non_string_content_is_refused() -> None:
    assert fields(raw(subject=1, text=["t"], html={"h": 1})) == {"subject", "text", "html"}


# -- unknown fields, priority, timestamps ----------------------------------------------------


def test_unknown_fields_are_refused_each_by_name() -> None:
    assert fields(raw(bcc_all=True, From="x@example.com")) == {"bcc_all", "From"}


@pytest.mark.parametrize("priority", ["urgent", "HIGH", "", 1, ["high"], {"high": 1}])
def test_bad_priority_is_refused(priority: Any) -> None:
    assert fields(raw(priority=priority)) == {"priority"}


@pytest.mark.parametrize(
    "timestamp",
    ["2026-11-22T10:00:00", "2026-11-22 10:00:00", "2026-11-22", "yesterday", "2026-13-40T10:00:00Z", 1763805600],
)
def test_timestamps_need_rfc3339_with_offset(timestamp: Any) -> None:
    assert fields(raw(send_at=timestamp)) == {"send_at"}
    assert fields(raw(expires_at=timestamp)) == {"expires_at"}


def test_timestamps_with_offsets_are_compared_in_utc() -> None:
    request = parse_send_request(raw(send_at="2026-11-22T10:00:00+02:00", expires_at="2026-11-22T08:30:00Z"))
    assert request.expires_at is not None
    assert request.send_at is not None
    assert request.expires_at > request.send_at


@pytest.mark.parametrize(
    ("send_at", "expires_at"),
    [("2026-11-22T10:00:00Z", "2026-11-22T10:00:00Z"), ("2026-11-22T10:00:00Z", "2026-11-22T09:59:59Z")],
)
def test_expires_at_must_be_after_send_at(send_at: str, expires_at: str) -> None:
    assert fields(raw(send_at=send_at, expires_at=expires_at)) == {"expires_at"}


@pytest.mark.parametrize("timestamp", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_timestamps_outside_the_representable_utc_range_are_refused(timestamp: str) -> None:
    assert fields(raw(send_at=timestamp)) == {"send_at"}


# -- headers and tags ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Subject", "Bcc", "From", "Reply-To", "Xcampaign", "X-", "X-Bad Name", "X-a:b"])
def test_only_x_headers_may_be_added(name: str) -> None:
    assert fields(raw(headers={name: "v"})) == {f"headers.{name}"}


def test_twenty_headers_is_the_limit() -> None:
    headers = {f"X-H{i}": "v" for i in range(MAX_HEADERS)}
    assert dict(parse_send_request(raw(headers=headers)).headers) == headers


def test_more_than_twenty_headers_is_refused() -> None:
    assert fields(raw(headers={f"X-H{i}": "v" for i in range(MAX_HEADERS + 1)})) == {"headers"}


@pytest.mark.parametrize("value", ["a\r\nBcc: x@evil.example", "a\nb", "a\rb", "a\x00b", "a\u2029b"])
def test_header_value_with_line_breaks_is_refused(value: str) -> None:
    assert fields(raw(headers={"X-Campaign": value})) == {"headers.X-Campaign"}


# every C0 control (tab included), DEL and every C1 control (NEL \x85, CSI \x9b ...)
CONTROLS = [chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]]


@pytest.mark.parametrize("control", CONTROLS, ids=[f"U+{ord(c):04X}" for c in CONTROLS])
def test_c0_and_c1_controls_are_refused_in_every_raw_header_value(control: str) -> None:
    assert fields(raw(subject=f"Hello{control}World")) == {"subject"}
    assert fields(raw(headers={"X-Campaign": f"a{control}b"})) == {"headers.X-Campaign"}
    assert fields(raw(to=[{"email": "ann@example.com", "name": f"Ann{control}Lee"}])) == {"to[0].name"}
    assert fields(raw(reply_to={"email": "ann@example.com", "name": f"Ann{control}"})) == {"reply_to.name"}


def test_printable_non_ascii_header_values_are_kept() -> None:
    named = [{"email": "a@example.com", "name": "Jörg"}]
    request = parse_send_request(raw(subject="Olá, São Paulo \u00a0€", headers={"X-Campaign": "été ☃"}, to=named))
    assert request.subject == "Olá, São Paulo \u00a0€"
    assert dict(request.headers) == {"X-Campaign": "été ☃"}


RELAY_CONTROL = [
    "X-SMTPAPI",
    "X-SmtpApi",
    "X-SES-CONFIGURATION-SET",
    "X-Ses-Message-Tags",
    "X-Mailgun-Variables",
    "X-MAILGUN-TAG",
    "X-PM-Message-Stream",
    "X-pm-tag",
    "X-MC-Template",
    "X-Mc-BccAddress",
    "X-MSYS-API",
    "X-msys-Api",
]


@pytest.mark.parametrize("name", RELAY_CONTROL)
def test_headers_a_relay_reads_as_instructions_are_refused(name: str) -> None:
    (problem,) = problems(raw(headers={name: '{"to": ["x@evil.example"]}'}))
    assert problem.field == f"headers.{name}"
    assert "relay" in problem.message


@pytest.mark.parametrize("name", ["X-SES", "X-Sesame", "X-PMO", "X-MCP", "X-SMTPAPI2", "X-Mailgunner", "X-Campaign"])
def test_headers_that_merely_resemble_relay_control_ones_are_kept(name: str) -> None:
    assert dict(parse_send_request(raw(headers={name: "v"})).headers) == {name: "v"}


def test_header_given_twice_in_different_case_is_refused() -> None:
    assert fields(raw(headers={"X-Campaign": "a", "X-CAMPAIGN": "b"})) == {"headers.X-CAMPAIGN"}


def test_header_values_must_be_strings() -> None:
    assert fields(raw(headers={"X-Count": 3})) == {"headers.X-Count"}
    assert fields(raw(headers=["X-Count"])) == {"headers"}


def test_sixteen_tags_is_the_limit() -> None:
    tags = {f"k{i}": "v" for i in range(MAX_TAGS)}
    assert dict(parse_send_request(raw(tags=tags)).tags) == tags


def test_more_than_sixteen_tags_is_refused() -> None:
    assert fields(raw(tags={f"k{i}": "v" for i in range(MAX_TAGS + 1)})) == {"tags"}


def test_tag_keys_and_values_are_bounded() -> None:
    assert fields(raw(tags={"a:b": "v", "": "v", "big": "x" * 257, "n": 1})) == {
        "tags.a:b",
        "tags.",
        "tags.big",
        "tags.n",
    }


# -- NUL: PostgreSQL text cannot hold it ------------------------------------------------------


def test_nul_anywhere_in_the_payload_is_refused() -> None:
    payload = {
        "to": ["ann@example.com"],
        "subject": "s",
        "text": "body\x00",
        "html": "<p>\x00</p>",
        "tags": {"t\x00": "v", "k": "\x00"},
    }
    found = fields(payload)
    assert {"text", "html"} <= found
    assert any(f.startswith("tags") for f in found)


def test_the_nul_screen_can_come_from_the_callers_own_json() -> None:
    clean = raw(text="body")
    nul = raw(text="body\x00", tags={"k\x00": "v"})
    assert not json_may_hold_nul(canonical_json(clean))
    assert json_may_hold_nul(canonical_json(nul))
    assert parse_send_request(clean, may_hold_nul=False) == parse_send_request(clean)
    with pytest.raises(ValidationFailed) as screened:
        parse_send_request(nul, may_hold_nul=True)
    with pytest.raises(ValidationFailed) as unscreened:
        parse_send_request(nul)
    assert screened.value.problems == unscreened.value.problems
    assert {p.field for p in screened.value.problems} == {"text", "tags.k\\x00"}
    assert request_hash(nul) == canonical_digest(canonical_json(nul))


def test_nul_in_template_variables_is_refused() -> None:
    payload = {
        "to": ["ann@example.com"],
        "template": "notification.generic",
        "variables": {"title": "t", "body": "\x00"},
    }
    assert fields(payload) == {"variables.body"}


# -- every problem at once -------------------------------------------------------------------


def test_every_problem_is_reported_at_once() -> None:
    payload = {
        "to": ["nope", {"email": "ann@example.com", "name": "A\r\nB"}],
        "cc": "x",
        "reply_to": "also-nope",
        "subject": "line\nbreak",
        "text": "fine",
        "priority": "urgent",
        "send_at": "2026-11-22T10:00:00",
        "expires_at": "soon",
        "headers": {"Bcc": "x@evil.example", "X-Ok": "a\nb"},
        "tags": {f"k{i}": "v" for i in range(17)},
        "surprise": 1,
    }
    assert fields(payload) == {
        "surprise",
        "to[0]",
        "to[1].name",
        "cc",
        "reply_to",
        "subject",
        "priority",
        "send_at",
        "expires_at",
        "headers.Bcc",
        "headers.X-Ok",
        "tags",
    }


def test_payload_must_be_an_object() -> None:
    for payload in ([], "x", 1, None):
        assert len(problems(payload)) == 1


def test_validation_failed_message_joins_every_problem() -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_send_request(raw(priority="urgent", unknown=1))
    assert "priority: must be high, normal or low" in str(caught.value)
    assert "unknown: unknown field" in str(caught.value)
    assert [p.as_dict()["field"] for p in caught.value.problems] == ["unknown", "priority"]


# -- idempotency keys and the request hash ---------------------------------------------------


@pytest.mark.parametrize("key", ["a", "A-z_0.9:x", "k" * 200, "1700000000000-0"])
def test_valid_idempotency_keys(key: str) -> None:
    assert valid_idempotency_key(key)


@pytest.mark.parametrize("key", ["", "k" * 201, "has space", "slash/", "ümlaut", "new\nline", "nul\x00"])
def test_invalid_idempotency_keys(key: str) -> None:
    assert not valid_idempotency_key(key)


def test_request_hash_ignores_key_order_and_whitespace() -> None:
    import orjson

    a = orjson.loads(b'{"to": ["ann@example.com"], "subject": "Hi", "tags": {"a": "1", "b": "2"}}')
    b = orjson.loads(b'{"tags":{"b":"2","a":"1"},\n  "subject":"Hi","to":[ "ann@example.com" ]}')
    assert request_hash(a) == request_hash(b)


def test_request_hash_sees_every_value_difference() -> None:
    base = raw(tags={"a": "1"})
    assert request_hash(base) != request_hash(raw(tags={"a": "2"}))
    assert request_hash(base) != request_hash(raw(tags={"a": "1"}, priority="high"))
    # list order is meaning, not formatting
    assert request_hash(raw(to=["a@example.com", "b@example.com"])) != request_hash(
        raw(to=["b@example.com", "a@example.com"])
    )


def test_keyed_digest_is_hmac_sha256_under_each_key_of_its_own() -> None:
    """What is stored of a request is HMAC-SHA256 of its digest (a key's HMAC state is reused):
    each key gives its own, the same digest twice gives the same value, and no key the digest."""
    import hashlib
    import hmac

    digest = hashlib.sha256(b"request").digest()
    first, second = b"k" * 32, b"another deployment's key"
    assert keyed_digest(digest, first) == hmac.digest(first, digest, "sha256")
    assert keyed_digest(digest, second) == hmac.digest(second, digest, "sha256")
    other = hashlib.sha256(b"other").digest()
    assert keyed_digest(other, first) == hmac.digest(first, other, "sha256")
    assert keyed_digest(digest, first) == hmac.digest(first, digest, "sha256")  # nothing left in the state
    assert keyed_digest(digest, b"") == digest


def test_request_hash_refuses_a_payload_nested_too_deeply() -> None:
    nested: Any = []
    for _ in range(300):
        nested = [nested]
    with pytest.raises(ValidationFailed):
        request_hash({"variables": nested})
