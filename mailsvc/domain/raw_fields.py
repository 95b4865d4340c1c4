"""A malformed command's raw fields as an operator may read them (SPEC §13): `payload.variables`
masked, since a command refused for a missing variable may still carry a login code.

Pure. The stored blob is the JSON object `raw_fields_blob` wrote (at most 64 KiB, so the JSON may
be cut); whatever cannot be parsed is cut before the first mention of `variables`.
"""

from __future__ import annotations

from typing import Any

import orjson

MASK = "***"
_CUT = "…(cut: template variables are not shown)"


def _mask_variables(payload: Any) -> Any:
    if isinstance(payload, dict) and "variables" in payload:
        variables = payload["variables"]
        masked = {str(name): MASK for name in variables} if isinstance(variables, dict) else MASK
        return {**payload, "variables": masked}
    return payload


def _cut_at_variables(text: str) -> str:
    at = text.find("variables")
    return text if at < 0 else text[:at] + _CUT


def masked_raw_fields(raw: bytes) -> str:
    """The raw fields for display: UTF-8 (undecodable bytes as U+FFFD), each `payload.variables`
    value replaced by `***` (the names stay: they explain a missing-variable refusal)."""
    text = raw.decode("utf-8", "replace")
    if "variables" not in text:
        return text
    try:
        fields = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _cut_at_variables(text)
    if not isinstance(fields, dict):
        return _cut_at_variables(text)
    payload = fields.get("payload")
    if isinstance(payload, str) and "variables" in payload:
        try:
            decoded = orjson.loads(payload)
        except orjson.JSONDecodeError:
            fields["payload"] = _cut_at_variables(payload)
        else:
            fields["payload"] = orjson.dumps(_mask_variables(decoded)).decode()
    return orjson.dumps(fields).decode()


def recorded_command(raw: bytes) -> tuple[str | None, Any]:
    """The `type` and decoded `payload` of recorded raw fields (for a replay); `ValueError` when
    the record cannot give them back (cut at 64 KiB, no payload, payload not JSON)."""
    try:
        fields = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValueError("the recorded fields were cut at 64 KiB: give the payload") from None
    if not isinstance(fields, dict) or not isinstance(fields.get("payload"), str):
        raise ValueError("the record holds no payload: give one")
    try:
        payload = orjson.loads(fields["payload"])
    except orjson.JSONDecodeError:
        raise ValueError("the recorded payload is not JSON: give a corrected one") from None
    kind = fields.get("type")
    return (kind if isinstance(kind, str) else None), payload
