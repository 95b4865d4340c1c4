"""Operator actions (SPEC §14): what an operator write records about itself, and who did it.

Every operator write (resend, cancel, redrive, replay, suppression change, provider resume)
carries one `OperatorAction`; its store writes it in the same transaction as the write itself
(`adapters/postgres/operator_actions.py` `record_actions`), so the trail never lists what did
not happen nor misses what did.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from mailsvc.domain.ids import uuid7

ActionKind = Literal[
    "resend", "cancel", "redrive", "replay", "suppression_add", "suppression_remove", "provider_resume"
]
ACTION_KINDS: tuple[ActionKind, ...] = (
    "resend",
    "cancel",
    "redrive",
    "replay",
    "suppression_add",
    "suppression_remove",
    "provider_resume",
)
TRUSTED_NETWORK = "trusted-network"
MAX_NOTE = 1000


def token_fingerprint(token: bytes) -> str:
    """The actor of a request made with `token`: the first 12 hex digits of its SHA-256 — enough
    to tell operators apart and to find the token in a vault, useless to replay."""
    return hashlib.sha256(token).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class OperatorAction:
    """One audited operator write. `target` names what it acted on (ids as strings), `filter` the
    selection of a bulk action, `counts` what it did; all JSON objects."""

    kind: ActionKind
    actor: str
    target: Mapping[str, Any] | None = None
    filter: Mapping[str, Any] | None = None
    counts: Mapping[str, int] | None = None
    note: str | None = None
    action_id: UUID = field(default_factory=uuid7)
    # a bulk action asked for with `Idempotency-Key` (scope: its kind), and the request it answered
    idempotency_key: str | None = None
    request_hash: bytes | None = None
    created_at: datetime | None = None  # set by the store (the transaction's time); None until written
