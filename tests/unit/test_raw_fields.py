"""A malformed command's raw fields are shown with every `payload.variables` value masked."""

from __future__ import annotations

import orjson

from mailsvc.domain.raw_fields import masked_raw_fields
from mailsvc.domain.stream_entries import MAX_RAW_BYTES, raw_fields_blob


def blob(payload: object, **fields: bytes) -> bytes:
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return raw_fields_blob({b"type": b"send_email", b"payload": raw, **{k.encode(): v for k, v in fields.items()}})


def test_variables_are_masked_and_their_names_kept() -> None:
    payload = {"to": ["a@example.com"], "template": "auth.login_code", "variables": {"code": "481516", "n": 5}}
    shown = orjson.loads(masked_raw_fields(blob(payload, idempotency_key=b"k-1")))
    assert shown["type"] == "send_email"
    assert shown["idempotency_key"] == "k-1"
    assert orjson.loads(shown["payload"]) == {**payload, "variables": {"code": "***", "n": "***"}}


def test_variables_that_are_not_an_object_are_masked_whole() -> None:
    shown = masked_raw_fields(blob({"template": "auth.login_code", "variables": ["481516"]}))
    assert "481516" not in shown
    assert orjson.loads(orjson.loads(shown)["payload"])["variables"] == "***"


def test_a_payload_that_is_not_json_is_cut_before_its_variables() -> None:
    shown = masked_raw_fields(blob(b'{"template": "auth.login_code", "variables": {"code": "481516"'))
    assert "481516" not in shown
    assert orjson.loads(shown)["payload"].startswith('{"template": "auth.login_code", "')


def test_fields_cut_at_64_kib_are_cut_before_the_variables() -> None:
    payload = {"variables": {"code": "481516"}, "text": "x" * MAX_RAW_BYTES}
    raw = blob(payload)
    assert len(raw) == MAX_RAW_BYTES  # no longer JSON
    shown = masked_raw_fields(raw)
    assert "481516" not in shown
    assert "variables" in shown  # the note that says what was cut


def test_fields_without_variables_are_shown_as_stored() -> None:
    raw = b'{"payload": "\xff broken"}'
    assert masked_raw_fields(raw) == '{"payload": "\ufffd broken"}'
