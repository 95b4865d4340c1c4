"""Identifiers: time-ordered UUIDv7 delivery ids (B-tree friendly: new rows land on the right)."""

from __future__ import annotations

import time
import uuid

from mailsvc.domain.randomness import random_bytes

_SET = object.__setattr__


def uuid7() -> uuid.UUID:
    """RFC 9562 version 7: 48-bit Unix milliseconds, then random bits."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(random_bytes(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | rand & ((1 << 80) - 1)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # variant
    # what `uuid.UUID(int=value)` ends with, without its generic argument checks (half the cost
    # of a delivery id): `value` is a 128-bit int by construction
    made = object.__new__(uuid.UUID)
    _SET(made, "int", value)
    _SET(made, "is_safe", uuid.SafeUUID.unknown)
    return made
