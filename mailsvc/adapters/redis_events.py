"""Writing delivery events to the event stream (SPEC §11): one pipeline of XADDs per batch."""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from mailsvc.domain.events import StoredEvent
from mailsvc.errors import StreamUnavailable


class RedisEventWriter:
    """XADD each event as CloudEvents attributes, capped with `MAXLEN ~ maxlen`."""

    def __init__(self, redis: Redis, stream_key: str, *, maxlen: int) -> None:
        self.redis = redis
        self.stream_key = stream_key
        self.maxlen = maxlen

    async def publish(self, events: Sequence[StoredEvent]) -> None:
        """Append `events` in order, one round trip. Raises `StreamUnavailable` (`refused` when Redis
        answered with an error) — some of them may have been appended: the caller publishes them
        again, with the same `id`s."""
        if not events:
            return
        pipe = self.redis.pipeline(transaction=False)
        for event in events:
            pipe.xadd(self.stream_key, event.stream_fields(), maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
        try:
            replies = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            raise StreamUnavailable(exc, refused=False) from exc
        finally:
            await pipe.reset()  # type: ignore[no-untyped-call]
        for reply in replies:
            if isinstance(reply, Exception):
                raise StreamUnavailable(reply, refused=isinstance(reply, ResponseError))
