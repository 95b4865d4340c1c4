"""Commands onto the command stream: every test XADDs through here.

`xadd`/`xadd_many` encode a payload as the producer does (`mailsvc.producer.command_fields`);
`command` builds the fields byte for byte, for entries no producer would write (bytes that are not
JSON, extra fields), and `xadd_all` appends such entries in order.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from redis.asyncio import Redis

from mailsvc.producer import command_fields
from tests.support.infra import redis_host_port

Fields = dict[bytes, bytes]


def new_key(prefix: str = "k") -> str:
    """A fresh idempotency key."""
    return f"{prefix}-{uuid.uuid4().hex}"


def command(payload: Any, key: str | None = None, **extra: bytes) -> Fields:
    """The fields of a `send_email` stream entry (`payload` as given when it is already bytes)."""
    fields: Fields = {
        b"type": b"send_email",
        b"payload": payload if isinstance(payload, bytes) else orjson.dumps(payload),
    }
    if key is not None:
        fields[b"idempotency_key"] = key.encode()
    fields.update({name.encode(): value for name, value in extra.items()})
    return fields


async def xadd(redis: Redis, stream_key: str, payload: Mapping[str, Any], key: str | None = None) -> str:
    """XADD one `send_email` command; return its idempotency key (generated when not given)."""
    key = key or new_key()
    await redis.xadd(stream_key, command_fields(dict(payload), key, None))  # type: ignore[arg-type]
    return key


async def xadd_all(redis: Redis, stream_key: str, entries: Sequence[Mapping[Any, Any]], chunk: int = 1000) -> list[str]:
    """XADD every entry (fields as given) in order, pipelined; the new entry ids."""
    ids: list[str] = []
    for start in range(0, len(entries), chunk):
        pipe = redis.pipeline(transaction=False)
        for fields in entries[start : start + chunk]:
            pipe.xadd(stream_key, fields)  # type: ignore[arg-type]
        ids.extend(i.decode() if isinstance(i, bytes) else str(i) for i in await pipe.execute())
    return ids


async def xadd_many(
    redis: Redis, stream_key: str, payloads: Sequence[Mapping[str, Any]], keys: Sequence[str] | None = None
) -> list[str]:
    """One `send_email` command per payload (keyed by `keys`, or fresh keys), pipelined; the keys."""
    keys = list(keys) if keys is not None else [new_key() for _ in payloads]
    assert len(keys) == len(payloads)
    await xadd_all(redis, stream_key, [command_fields(dict(p), k, None) for p, k in zip(payloads, keys, strict=True)])
    return keys


async def xadd_command(redis_addr: str, stream_key: str, payload: Any, key: str | None = None) -> None:
    """`command(payload, key)` onto the stream of the Redis at `redis_addr`, on a connection of its own."""
    host, port = redis_host_port(redis_addr)
    client = Redis(host=host, port=port)
    try:
        await client.xadd(stream_key, command(payload, key))  # type: ignore[arg-type]
    finally:
        await client.aclose()
