"""Which refusals are hard bounces, how an address is keyed, what an operator's entry may say (SPEC §12)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mailsvc.domain.commands import ValidationFailed, parse_send_request
from mailsvc.domain.model import RecipientResult
from mailsvc.domain.suppression import (
    enhanced_code,
    hard_bounces,
    is_hard_bounce,
    parse_suppression_request,
    suppression_address,
)

NOW = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("code", "reply"),
    [
        (550, "5.1.1 user unknown"),
        (550, "5.1.2 bad destination system"),
        (551, "5.1.3 bad address syntax"),
        (550, "5.1.6 mailbox moved"),
        (550, "5.1.10 null MX"),
        (550, "5.2.1 mailbox disabled"),
        (550, "no such user"),
        (551, "user not local"),
        (553, "mailbox name not allowed"),
        (550, "5.001.001 padded"),
    ],
)
def test_mailbox_gone_or_disabled_is_a_hard_bounce(code: int, reply: str) -> None:
    assert is_hard_bounce(code, reply)


@pytest.mark.parametrize(
    ("code", "reply"),
    [
        (550, "5.7.1 relaying denied"),
        (554, "5.7.26 unauthenticated mail"),
        (550, "5.2.2 mailbox full"),
        (550, "5.1.100 not a known code"),
        (554, "transaction failed"),
        (552, "too much mail"),
        (450, "4.1.1 try later"),
        (451, "4.2.1 try later"),
        (550, "4.1.1 a 5xx quoting a 4.x.x code is not a hard bounce"),
        (None, "invalid address"),
    ],
)
def test_policy_refusals_temporary_ones_and_other_codes_are_not(code: int | None, reply: str) -> None:
    assert not is_hard_bounce(code, reply)


def test_enhanced_codes_are_read_from_the_start_of_the_reply() -> None:
    assert enhanced_code("5.1.1 user unknown") == "5.1.1"
    assert enhanced_code("  5.1.10 null MX") == "5.1.10"
    assert enhanced_code("user unknown 5.1.1") is None
    assert enhanced_code(None) is None


def test_hard_bounces_are_keyed_once_each_in_order() -> None:
    results = [
        RecipientResult("Gone@Example.org", False, 550, "5.1.1 unknown"),
        RecipientResult("ok@example.org", True, 250, "2.1.5 ok"),
        RecipientResult("gone@example.org", False, 550, "5.1.1 unknown"),
        RecipientResult("policy@example.org", False, 550, "5.7.1 no"),
        RecipientResult("bare@example.org", False, 553, "not allowed"),
    ]
    assert hard_bounces(results) == ("gone@example.org", "bare@example.org")


def test_an_address_is_keyed_in_its_wire_form_in_lower_case() -> None:
    assert suppression_address(" Ann@Bücher.Example.org ") == "ann@xn--bcher-kva.example.org"
    assert suppression_address("ANN@xn--bcher-kva.example.org") == "ann@xn--bcher-kva.example.org"
    with pytest.raises(ValueError):
        suppression_address("not an address")


def test_an_operators_entry_is_manual_or_a_complaint_with_a_future_expiry() -> None:
    entry = parse_suppression_request("A@Example.org", {"reason": "complaint", "note": "n"}, NOW)
    assert (entry.address, entry.reason, entry.note, entry.expires_at) == ("a@example.org", "complaint", "n", None)
    later = parse_suppression_request("a@example.org", {"reason": "manual", "expires_at": "2026-12-02T00:00:00Z"}, NOW)
    assert later.expires_at == NOW + timedelta(days=1)
    with pytest.raises(ValidationFailed) as refused:
        parse_suppression_request(
            "nope", {"reason": "hard_bounce", "expires_at": "2026-11-30T00:00:00Z", "extra": 1}, NOW
        )
    assert {p.field for p in refused.value.problems} == {"address", "reason", "expires_at", "extra"}


def test_a_collapse_key_follows_the_idempotency_key_rules() -> None:
    request = parse_send_request({"to": ["a@example.org"], "subject": "s", "text": "t", "collapse_key": "login:u-1"})
    assert request.collapse_key == "login:u-1"
    with pytest.raises(ValidationFailed) as refused:
        parse_send_request({"to": ["a@example.org"], "subject": "s", "text": "t", "collapse_key": "with space"})
    assert [p.field for p in refused.value.problems] == ["collapse_key"]
