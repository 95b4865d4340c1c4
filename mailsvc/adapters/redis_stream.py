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
    """The stream consumer's view of Redis: what is in the stream after an offset."""

    def __init__(self, redis: Redis, stream_key: str, *, count: int) -> None:
        self.redis = redis
        self.stream_key = stream_key
        self.count = count

    async def read(self, after: str, block_ms: int | None) -> StreamRead:
        """The stream's shape and up to `count` entries after `after`, waiting up to `block_ms` for
        one (None: do not wait). Raises `StreamUnavailable` — `refused` when Redis answered with an
        error reply — and never leaves the connection mid-pipeline when cancelled."""
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
        return StreamRead(None if isinstance(info, Exception) else _info(info), _entries(reply))


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
