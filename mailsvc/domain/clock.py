"""The clock is passed in (STYLE 8): backoff, claim deadlines and retention cut-offs are pure
functions of an explicit `now`; this is the real one."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)
