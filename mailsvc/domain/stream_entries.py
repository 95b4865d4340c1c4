"""Decoding one Redis stream entry (bytes) into a command or a malformed record (SPEC §2)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from mailsvc.domain.commands import (
    ValidationFailed,
    canonical_digest,
    canonical_json,
    json_may_hold_nul,
    valid_idempotency_key,
)

MAX_PAYLOAD_BYTES = 256 * 1024
MAX_ENTRY_BYTES = 16 * 1024  # every field but `payload`, names and values together
MAX_RAW_BYTES = 64 * 1024
COMMAND_TYPE = "send_email"
CANCEL_TYPE = "cancel_email"


@dataclass(frozen=True, slots=True)
class StreamCommand:
    entry_id: str
    idempotency_key: str
    payload: Any
    request_hash: bytes
    traceparent: str | None
    # the fields as Redis gave them: the malformed row's `raw_fields` if the command turns out
    # malformed later (e.g. a key conflict) — computed only then, most commands never need it
    fields: Mapping[bytes, bytes]
    # `json_may_hold_nul` of the canonical JSON the digest was made of: validation's NUL screen
    may_hold_nul: bool = True

    @property
    def raw_fields(self) -> bytes:
        return raw_fields_blob(self.fields)


@dataclass(frozen=True, slots=True)
class CancelCommand:
    """`cancel_email` (SPEC §2): take back the queued `send_email` with `target_key` (scope notification)."""

    entry_id: str
    target_key: str
    traceparent: str | None
    fields: Mapping[bytes, bytes]  # for the malformed row when it cannot apply (unknown_target, not_cancellable)
    idempotency_key: str | None = None

    @property
    def raw_fields(self) -> bytes:
        return raw_fields_blob(self.fields)


@dataclass(frozen=True, slots=True)
class MalformedCommand:
    entry_id: str
    reason: str  # machine-readable code
    message: str  # for humans
    raw_fields: bytes
    idempotency_key: str | None = None


def raw_fields_blob(fields: Mapping[bytes, bytes]) -> bytes:
    """The fields as Redis gave them, readable and unambiguous, at most 64 KiB.

    JSON with undecodable bytes backslash-escaped: nothing is lost, and NUL stays an escape
    (the column is `bytea`, so even the escape never meets a `text` column). Each input byte
    becomes at least one output byte, so the fields are cut to the budget *before* decoding:
    what is cut could never have shown, and a 50 MB value costs no more than a 64 KiB one.
    """
    readable: dict[str, str] = {}
    budget = MAX_RAW_BYTES
    for full_name, full_value in fields.items():
        if budget <= 0:
            break
        name = full_name[:budget]
        value = full_value[: budget - len(name)]
        budget -= len(name) + len(value)
        readable[name.decode("utf-8", "backslashreplace")] = value.decode("utf-8", "backslashreplace")
    return orjson.dumps(readable)[:MAX_RAW_BYTES]


def _entry_size(fields: dict[bytes, bytes]) -> int:
    """Bytes in every field but `payload` (names and values), counted without decoding any."""
    size = 0
    for name, value in fields.items():
        if name != b"payload":
            size += len(name) + len(value)
            if size > MAX_ENTRY_BYTES:
                break  # enough to refuse it: no need to count a million more fields
    return size


def decode_entry(entry_id: str, fields: dict[bytes, bytes]) -> StreamCommand | CancelCommand | MalformedCommand:
    def malformed(reason: str, message: str, key: str | None = None) -> MalformedCommand:
        return MalformedCommand(entry_id, reason, message, raw_fields_blob(fields), key)

    if _entry_size(fields) > MAX_ENTRY_BYTES:
        return malformed(
            "entry_too_large", f"the fields other than payload pass {MAX_ENTRY_BYTES} bytes (names and values)"
        )
    text: dict[str, str] = {}
    for name, value in fields.items():
        if name == b"payload":
            continue  # decoded below, once its size is known to be within the limit
        try:
            decoded_name, decoded = name.decode("utf-8"), value.decode("utf-8")
        except UnicodeDecodeError:
            return malformed("invalid_encoding", f"field {name[:64]!r} is not valid UTF-8")
        if "\x00" in decoded or "\x00" in decoded_name:
            return malformed("invalid_encoding", f"field {decoded_name[:64]!r} contains a NUL character")
        text[decoded_name] = decoded

    key = text.get("idempotency_key")
    if key is not None and not valid_idempotency_key(key):
        return malformed("invalid_idempotency_key", "idempotency_key must be 1-200 chars of [A-Za-z0-9._:-]")
    key = key or entry_id
    command_type = text.get("type")
    if command_type is None:
        return malformed("missing_field", "field 'type' is required", key)
    if command_type not in (COMMAND_TYPE, CANCEL_TYPE):
        return malformed("unknown_type", f"unknown command type {command_type[:64]!r}", key)
    raw_payload = fields.get(b"payload")
    if raw_payload is None:
        return malformed("missing_field", "field 'payload' is required", key)
    if len(raw_payload) > MAX_PAYLOAD_BYTES:
        return malformed(
            "payload_too_large", f"payload is {len(raw_payload)} bytes, the limit is {MAX_PAYLOAD_BYTES}", key
        )
    try:
        raw_payload.decode("utf-8")
    except UnicodeDecodeError:
        return malformed("invalid_encoding", "field 'payload' is not valid UTF-8", key)
    if b"\x00" in raw_payload:
        return malformed("invalid_encoding", "field 'payload' contains a NUL character", key)
    try:
        payload = orjson.loads(raw_payload)
    except orjson.JSONDecodeError as exc:
        return malformed("invalid_json", f"payload is not valid JSON: {exc}", key)
    try:
        canonical = canonical_json(payload)
    except ValidationFailed as error:
        return malformed(error.reason, str(error), key)
    traceparent = text.get("traceparent")
    if command_type == CANCEL_TYPE:
        return _cancel(entry_id, key, payload, traceparent, fields) or malformed(
            "validation_failed", 'payload must be {"idempotency_key": "<key of the send_email to cancel>"}', key
        )
    # the digest and validation's NUL screen, from the one serialisation
    digest, may_hold_nul = canonical_digest(canonical), json_may_hold_nul(canonical)
    return StreamCommand(entry_id, key, payload, digest, traceparent, fields, may_hold_nul)


def _cancel(
    entry_id: str, key: str, payload: Any, traceparent: str | None, fields: dict[bytes, bytes]
) -> CancelCommand | None:
    if not isinstance(payload, dict) or set(payload) != {"idempotency_key"}:
        return None
    target = payload["idempotency_key"]
    if not isinstance(target, str) or not valid_idempotency_key(target):
        return None
    return CancelCommand(entry_id, target, traceparent, fields, key)
