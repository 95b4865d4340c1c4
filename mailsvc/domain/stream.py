"""Positions in a Redis stream and what `XINFO STREAM` says about one (pure, SPEC §2).

Entry ids are `<ms>-<seq>`; our offset is the last id committed. The consumer reads the stream's
shape (first entry, last generated id, counts) with every batch to tell a gap (entries removed
before they were read) or a reset (the stream recreated) from normal progress.
"""

from __future__ import annotations

from dataclasses import dataclass

START = "0-0"
MAX_SEQ = 2**64 - 1

StreamEntries = list[tuple[str, dict[bytes, bytes]]]  # (entry id, raw fields) in stream order


def parse_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def successor(entry: tuple[int, int]) -> tuple[int, int]:
    ms, seq = entry
    return (ms, seq + 1) if seq < MAX_SEQ else (ms + 1, 0)


def predecessor(entry_id: str) -> str:
    """The greatest id below `entry_id`: reading after it starts exactly at `entry_id`."""
    ms, seq = parse_id(entry_id)
    if seq:
        return f"{ms}-{seq - 1}"
    return f"{ms - 1}-{MAX_SEQ}" if ms else START


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """The stream's shape as `XINFO STREAM` reported it. `entries_added` is None before Redis 7."""

    last_generated_id: str
    first_entry_id: str | None  # None: the stream is empty
    max_deleted_id: str
    entries_added: int | None
    length: int | None


@dataclass(frozen=True, slots=True)
class StreamRead:
    """One round trip: the stream's shape (None: no such key) and the entries after our offset."""

    info: StreamInfo | None
    entries: StreamEntries
