"""The chaos load's commands: what each is, what it should become, and its bytes (pure, seeded).

Stream commands render `notification.generic` or carry raw content, half with an idempotency
key; about 5 % are malformed in one of several ways and about 5 % are exact duplicates of an
earlier keyed command. HTTP commands are what the auth service posts (`auth.login_code`, now and
then another template or raw content), always keyed. Some recipients ask the sink for a script
(bounce, defer, drop after the final dot, or one bounced recipient next to a good one). Every
well-formed command carries its id twice: the `chaos` tag (stored with the delivery) and the
`X-Chaos-Id` header (seen by the sink).
"""

from __future__ import annotations

import itertools
import json
import random
from collections import deque
from dataclasses import dataclass
from typing import Any

from bench.chaos.facts import Command

MALFORMED_KINDS = (
    "invalid_json", "unknown_type", "missing_payload", "invalid_address", "unknown_template",
    "missing_variables", "invalid_key", "invalid_encoding", "template_and_raw", "conflict",
)  # fmt: skip
SCRIPTS = (("bounce", 0.02), ("defer", 0.04), ("drop", 0.02), ("partial", 0.02))
_BODY = "Three pull requests were merged this week and the build stayed green.\n\nThank you."


@dataclass(frozen=True, slots=True)
class Built:
    command: Command
    fields: dict[bytes, bytes]  # the stream entry (stream commands)
    body: bytes = b""  # the request body (HTTP commands)
    duplicate: bool = False  # an exact re-send of an earlier command


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


class CommandFactory:
    def __init__(self, rng: random.Random, *, malformed: float = 0.05, duplicates: float = 0.05) -> None:
        self.rng = rng
        self.malformed_share = malformed
        self.duplicate_share = duplicates
        self._stream_numbers = itertools.count()
        self._http_numbers = itertools.count()
        self._keyed: deque[Built] = deque(maxlen=2000)  # recent keyed stream commands: duplicates, conflicts

    # -- pieces ------------------------------------------------------------------------------

    def _script(self) -> str | None:
        roll = self.rng.random()
        for name, share in SCRIPTS:
            if roll < share:
                return name
            roll -= share
        return None

    def _recipients(self, number: int, script: str | None) -> dict[str, list[str]]:
        user = f"user{number}"
        if script == "partial":
            return {"to": [f"{user}@example.com", f"{user}+bounce@example.org"]}
        address = f"{user}+{script}@example.com" if script else f"{user}@example.com"
        if self.rng.random() < 0.2:
            return {"to": [address], "cc": [f"team{number}@example.org"]}
        return {"to": [address]}

    def _content(self, chaos_id: str, number: int, kind: str) -> dict[str, Any]:
        title = f"Weekly summary #{number}"
        if kind == "template":
            return {"template": "notification.generic", "variables": {"title": title, "body": _BODY}}
        if kind == "login":
            return {"template": "auth.login_code", "variables": {"code": f"{number % 1_000_000:06d}",
                                                                  "expires_in_minutes": 10}}  # fmt: skip
        return {"subject": title, "text": _BODY, "html": f"<p>{title}</p>"}

    def _payload(self, chaos_id: str, number: int, kind: str, script: str | None) -> dict[str, Any]:
        return {
            **self._recipients(number, script),
            **self._content(chaos_id, number, kind),
            "tags": {"chaos": chaos_id},
            "headers": {"X-Chaos-Id": chaos_id},
        }

    # -- the stream --------------------------------------------------------------------------

    def stream(self, now: float) -> Built:
        roll = self.rng.random()
        if roll < self.duplicate_share and self._keyed:
            original = self.rng.choice(self._keyed)
            return Built(original.command, original.fields, duplicate=True)
        number = next(self._stream_numbers)
        chaos_id = f"s{number}"
        if roll < self.duplicate_share + self.malformed_share:
            return self._malformed(chaos_id, number, now)
        kind = "template" if self.rng.random() < 0.5 else "raw"
        script = self._script()
        key = f"ck-{number}" if self.rng.random() < 0.5 else None
        fields = {b"type": b"send_email", b"payload": _encode(self._payload(chaos_id, number, kind, script))}
        if key is not None:
            fields[b"idempotency_key"] = key.encode()
        built = Built(Command(chaos_id, "stream", key, "deliver", kind, scripted=script, at=now), fields)
        if key is not None:
            self._keyed.append(built)
        return built

    def _malformed(self, chaos_id: str, number: int, now: float) -> Built:
        kind = self.rng.choice(MALFORMED_KINDS)
        if kind == "conflict" and not self._keyed:
            kind = "invalid_json"
        payload = self._payload(chaos_id, number, "raw", None)
        fields = {b"type": b"send_email"}
        key: str | None = None
        conflict_of: str | None = None
        if kind == "invalid_json":
            fields[b"payload"] = b'{"to": ["user@example.com"], "subject": '
        elif kind == "unknown_type":
            fields.update({b"type": b"send_sms", b"payload": _encode(payload)})
        elif kind == "missing_payload":
            pass
        elif kind == "invalid_address":
            fields[b"payload"] = _encode({**payload, "to": ["not an address"]})
        elif kind == "unknown_template":
            fields[b"payload"] = _encode({**payload, "subject": None, "text": None, "template": "chaos.nothing"})
        elif kind == "missing_variables":
            templated = self._payload(chaos_id, number, "template", None)
            fields[b"payload"] = _encode({**templated, "variables": {"title": "no body"}})
        elif kind == "invalid_key":
            fields.update({b"payload": _encode(payload), b"idempotency_key": b"spaces are not allowed"})
        elif kind == "invalid_encoding":
            fields[b"payload"] = _encode(payload)[:-2] + b'\xff\xfe"}'
        elif kind == "template_and_raw":
            fields[b"payload"] = _encode({**payload, "template": "notification.generic", "variables": {}})
        else:  # conflict: an earlier key, another payload
            original = self.rng.choice(self._keyed)
            key, conflict_of = original.command.key, original.command.chaos_id
            assert key is not None
            fields.update({b"payload": _encode(payload), b"idempotency_key": key.encode()})
        if kind == "unknown_template":  # a payload with nulls is a different malformation: drop them
            body = json.loads(fields[b"payload"])
            fields[b"payload"] = _encode({k: v for k, v in body.items() if v is not None})
        command = Command(chaos_id, "stream", key, "malformed", kind, conflict_of=conflict_of, at=now)
        return Built(command, fields)

    # -- HTTP --------------------------------------------------------------------------------

    def http(self, now: float) -> Built:
        number = next(self._http_numbers)
        chaos_id = f"h{number}"
        roll = self.rng.random()
        kind = "login" if roll < 0.7 else "template" if roll < 0.85 else "raw"
        script = self._script()
        body = _encode(self._payload(chaos_id, number, kind, script))
        command = Command(chaos_id, "http", f"h-{number}", "deliver", kind, scripted=script, at=now)
        return Built(command, {}, body=body)
