"""Reading the command stream (SPEC §2): `XINFO STREAM` and `XREAD` in one round trip.

redis-py raises `ResponseError` for *every* error reply (PITFALLS): only "no such key" says the
stream is gone; NOPERM (ACL), an unknown or renamed command, BUSY and the rest say nothing about
the stream and surface as `StreamUnavailable(refused=True)`, never as a missing stream.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from mailsvc.domain.stream import START, StreamEntries, StreamInfo, StreamRead
from mailsvc.errors import StreamUnavailable


def stream_missing(error: Exception) -> bool:
    """Only Redis's "no such key" reply to XINFO STREAM says the stream is gone."""
    return isinstance(error, ResponseError) and str(error).removeprefix("ERR ").strip().lower() == "no such key"


class RedisStreamReader:
    """The stream consumer's view of Redis: what is in the stream after an offset.

    A read asks for up to `max_count` entries, or fewer when the last read's entries were large:
    as many as `batch_bytes` holds at their average size. 500 commands of 256 KiB were one reply of
    128 MB from Redis and one transaction of three times that, and HTTP requests queued behind them
    (SPEC §2: a backlog of large commands delays them by a few tens of milliseconds at most).
    """

    def __init__(self, redis: Redis, stream_key: str, *, count: int, batch_bytes: int = 4 * 1024 * 1024) -> None:
        self.redis = redis
        self.stream_key = stream_key
        self.max_count = count
        self.batch_bytes = batch_bytes
        self.count = count  # asked for by the latest read: a read that returns as many means a backlog
        self._next_count = count

    async def read(self, after: str, block_ms: int | None) -> StreamRead:
        """The stream's shape and up to `count` entries after `after`, waiting up to `block_ms` for
        one (None: do not wait). Raises `StreamUnavailable` — `refused` when Redis answered with an
        error reply — and never leaves the connection mid-pipeline when cancelled."""
        self.count = self._next_count
        pipe = self.redis.pipeline(transaction=False)
        pipe.xinfo_stream(self.stream_key)
        pipe.xread({self.stream_key: after}, count=self.count, block=block_ms)
        try:
            info, reply = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            raise StreamUnavailable(exc, refused=False) from exc
        finally:
            await pipe.reset()  # type: ignore[no-untyped-call]
        for answer in (info, reply):
            if isinstance(answer, Exception) and not (answer is info and stream_missing(answer)):
                raise StreamUnavailable(answer, refused=isinstance(answer, ResponseError))
        entries = _entries(reply)
        if entries:
            self._next_count = self._count_for(entries)
        return StreamRead(None if isinstance(info, Exception) else _info(info), entries)

    def _count_for(self, entries: StreamEntries) -> int:
        size = sum(sum(map(len, fields.values())) for _, fields in entries)
        return max(1, min(self.max_count, self.batch_bytes * len(entries) // max(1, size)))


def _info(raw: dict[Any, Any]) -> StreamInfo:
    first = raw.get("first-entry")
    return StreamInfo(
        last_generated_id=_text(raw.get("last-generated-id")) or START,
        first_entry_id=_text(first[0]) if first else None,
        max_deleted_id=_text(raw.get("max-deleted-entry-id")) or START,
        entries_added=_int(raw.get("entries-added")),
        length=_int(raw.get("length")),
    )


def _entries(reply: Any) -> StreamEntries:
    entries: StreamEntries = []
    for _stream, stream_entries in reply or []:
        for entry_id, fields in stream_entries:
            entries.append((entry_id.decode() if isinstance(entry_id, bytes) else entry_id, fields))
    return entries


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)
