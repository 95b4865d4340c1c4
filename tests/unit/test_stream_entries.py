"""Decoding one Redis stream entry: bytes in, a command or a malformed record out (SPEC §2)."""

from __future__ import annotations

import orjson
import pytest

from mailsvc.domain.commands import request_hash
from mailsvc.domain.stream_entries import (
    MAX_ENTRY_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_RAW_BYTES,
    MalformedCommand,
    StreamCommand,
    decode_entry,
    raw_fields_blob,
)

ENTRY = "1700000000000-7"
PAYLOAD = {"to": ["ann@example.com"], "subject": "Hi", "text": "Hello"}


def entry(**overrides: bytes | None) -> dict[bytes, bytes]:
    fields: dict[bytes, bytes | None] = {b"type": b"send_email", b"payload": orjson.dumps(PAYLOAD)}
    fields.update({name.encode(): value for name, value in overrides.items()})
    return {name: value for name, value in fields.items() if value is not None}


def malformed(fields: dict[bytes, bytes]) -> MalformedCommand:
    decoded = decode_entry(ENTRY, fields)
    assert isinstance(decoded, MalformedCommand), decoded
    assert decoded.entry_id == ENTRY
    assert decoded.message
    assert b"\x00" not in decoded.raw_fields
    return decoded


def test_a_command_carries_the_nul_screen_of_the_json_its_digest_was_made_of() -> None:
    clean = decode_entry(ENTRY, entry())
    escaped = decode_entry(ENTRY, entry(payload=orjson.dumps({**PAYLOAD, "text": "a\x00b"})))
    assert isinstance(clean, StreamCommand)
    assert isinstance(escaped, StreamCommand)
    assert (clean.may_hold_nul, escaped.may_hold_nul) == (False, True)
    assert clean.request_hash == request_hash(PAYLOAD)


def test_well_formed_entry_decodes_with_the_entry_id_as_default_key() -> None:
    decoded = decode_entry(ENTRY, entry())
    assert isinstance(decoded, StreamCommand)
    assert decoded.entry_id == ENTRY
    assert decoded.idempotency_key == ENTRY
    assert decoded.payload == PAYLOAD
    assert decoded.request_hash == request_hash(PAYLOAD)
    assert decoded.traceparent is None


def test_explicit_idempotency_key_and_traceparent_are_kept() -> None:
    traceparent = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    decoded = decode_entry(ENTRY, entry(idempotency_key=b"order-42:receipt", traceparent=traceparent))
    assert isinstance(decoded, StreamCommand)
    assert decoded.idempotency_key == "order-42:receipt"
    assert decoded.traceparent == traceparent.decode()


def test_payload_formatting_does_not_change_the_request_hash() -> None:
    a = decode_entry(ENTRY, entry(payload=b'{"to":["ann@example.com"],"subject":"Hi","text":"Hello"}'))
    b = decode_entry(ENTRY, entry(payload=b'{ "text" : "Hello",\n "subject":"Hi", "to":["ann@example.com"] }'))
    assert isinstance(a, StreamCommand)
    assert isinstance(b, StreamCommand)
    assert a.request_hash == b.request_hash


@pytest.mark.parametrize(
    "fields",
    [
        {b"type": b"send_\xffemail", b"payload": b"{}"},
        {b"type": b"send_email", b"payload": b'{"to": ["\xc3\x28@example.com"]}'},
        {b"type": b"send_email", b"payload": b"{}", b"\xfe\xff": b"x"},
        {b"type": b"send_email", b"payload": b"{}", b"idempotency_key": b"\xed\xa0\x80"},  # a surrogate
    ],
)
def test_invalid_utf8_anywhere_is_malformed(fields: dict[bytes, bytes]) -> None:
    assert malformed(fields).reason == "invalid_encoding"


@pytest.mark.parametrize(
    "fields",
    [
        {b"type": b"send_email", b"payload": b'{"subject": "a\x00b"}'},
        {b"type": b"send\x00email", b"payload": b"{}"},
        {b"type": b"send_email", b"payload": b"{}", b"na\x00me": b"x"},
    ],
)
def test_nul_in_a_value_or_a_field_name_is_malformed(fields: dict[bytes, bytes]) -> None:
    record = malformed(fields)
    assert record.reason == "invalid_encoding"
    assert "NUL" in record.message


def test_missing_type_is_malformed_and_keeps_the_key() -> None:
    record = malformed(entry(type=None, idempotency_key=b"k1"))
    assert (record.reason, record.idempotency_key) == ("missing_field", "k1")


def test_unknown_type_is_malformed() -> None:
    record = malformed(entry(type=b"send_sms"))
    assert record.reason == "unknown_type"
    assert record.idempotency_key == ENTRY


def test_missing_payload_is_malformed() -> None:
    assert malformed(entry(payload=None)).reason == "missing_field"


def test_payload_at_the_limit_is_decoded_and_one_byte_over_is_malformed() -> None:
    filler = "x" * (MAX_PAYLOAD_BYTES - len(orjson.dumps({**PAYLOAD, "text": ""})))
    at_limit = orjson.dumps({**PAYLOAD, "text": filler})
    assert len(at_limit) == MAX_PAYLOAD_BYTES
    assert isinstance(decode_entry(ENTRY, entry(payload=at_limit)), StreamCommand)
    over = orjson.dumps({**PAYLOAD, "text": filler + "x"})
    assert malformed(entry(payload=over)).reason == "payload_too_large"


def test_ten_megabyte_payload_is_malformed_with_bounded_raw_fields() -> None:
    record = malformed(entry(payload=b'{"text": "' + b"x" * 10_000_000 + b'"}'))
    assert record.reason == "payload_too_large"
    assert len(record.raw_fields) <= MAX_RAW_BYTES


@pytest.mark.parametrize("payload", [b"", b"{", b"not json", b"{'single': 'quotes'}", b'{"a": 1e999}', b'"\\ud800"'])
def test_bad_json_is_malformed(payload: bytes) -> None:
    assert malformed(entry(payload=payload)).reason == "invalid_json"


@pytest.mark.parametrize("key", [b"", b"has space", b"k" * 201, b"slash/", "ümlaut".encode()])
def test_bad_idempotency_key_is_malformed(key: bytes) -> None:
    record = malformed(entry(idempotency_key=key))
    assert record.reason == "invalid_idempotency_key"
    assert record.idempotency_key is None


def test_raw_fields_keep_undecodable_bytes_readably_and_without_nul() -> None:
    blob = raw_fields_blob({b"type": b"send_email", b"payload": b"\xff\x00ok"})
    assert b"\x00" not in blob
    assert orjson.loads(blob) == {"type": "send_email", "payload": "\\xff\x00ok"}


def test_raw_fields_are_truncated_to_64_kib() -> None:
    assert len(raw_fields_blob({b"payload": b"x" * 200_000})) == MAX_RAW_BYTES


@pytest.mark.parametrize("depth", [300, 1000])
def test_payload_nested_too_deeply_to_hash_is_malformed(depth: int) -> None:
    nested = b'{"variables": ' + b"[" * depth + b"]" * depth + b"}"
    assert malformed(entry(payload=nested)).reason in {"validation_failed", "invalid_json"}


class Undecodable(bytes):
    """A value that fails the test if anything decodes it whole (a slice of it is plain bytes)."""

    def decode(self, *args: object, **kwargs: object) -> str:
        raise AssertionError(f"a {len(self)}-byte value was decoded whole")


def test_fields_other_than_payload_at_the_limit_are_decoded_and_one_byte_over_is_malformed() -> None:
    base = entry(idempotency_key=b"k1")
    used = sum(len(name) + len(value) for name, value in base.items() if name != b"payload")
    filler = b"x" * (MAX_ENTRY_BYTES - used - len(b"traceparent"))
    assert isinstance(decode_entry(ENTRY, {**base, b"traceparent": filler}), StreamCommand)
    record = malformed({**base, b"traceparent": filler + b"x"})
    assert record.reason == "entry_too_large"
    assert record.idempotency_key is None  # refused before any field was decoded


def test_many_small_fields_together_pass_the_entry_limit() -> None:
    fields = {**entry(), **{f"f{i}".encode(): b"v" * 10 for i in range(2000)}}
    assert malformed(fields).reason == "entry_too_large"


def test_a_large_payload_does_not_count_toward_the_entry_limit() -> None:
    text = "x" * (MAX_PAYLOAD_BYTES - 1000)
    assert isinstance(decode_entry(ENTRY, entry(payload=orjson.dumps({**PAYLOAD, "text": text}))), StreamCommand)


def test_a_fifty_megabyte_traceparent_is_refused_without_being_decoded() -> None:
    huge = Undecodable(b"00-" + b"a" * 50_000_000)
    record = malformed({**entry(idempotency_key=b"k1"), b"traceparent": huge})
    assert record.reason == "entry_too_large"
    assert len(record.raw_fields) == MAX_RAW_BYTES
    assert orjson.loads(record.raw_fields[: MAX_RAW_BYTES // 2] + b'"}')["type"] == "send_email"


def test_an_oversized_payload_is_refused_without_being_decoded() -> None:
    huge = Undecodable(b'{"text": "' + b"\xc3" * 20_000_000 + b'"}')
    record = malformed(entry(payload=huge))
    assert record.reason == "payload_too_large"
    assert len(record.raw_fields) <= MAX_RAW_BYTES


def test_raw_fields_of_a_huge_entry_show_the_same_prefix_as_untruncated_ones() -> None:
    fields = {b"type": b"send_email", b"traceparent": "é".encode() * 100_000, b"payload": b"{}"}
    everything = orjson.dumps({k.decode(): v.decode() for k, v in fields.items()})[:MAX_RAW_BYTES]
    assert raw_fields_blob(fields) == everything


def test_a_valid_command_computes_its_raw_fields_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    from mailsvc.domain import stream_entries

    calls: list[int] = []
    real = stream_entries.raw_fields_blob
    monkeypatch.setattr(stream_entries, "raw_fields_blob", lambda fields: calls.append(1) or real(fields))
    fields = entry(idempotency_key=b"k1")
    decoded = decode_entry(ENTRY, fields)
    assert isinstance(decoded, StreamCommand)
    assert calls == []  # most commands are never judged malformed: the blob is not built for them
    assert decoded.raw_fields == real(fields)
