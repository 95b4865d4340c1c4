"""The two Redis clients: one for short commands, one for blocking stream reads."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError

from mailsvc.settings import RedisSettings


class _Connection(Connection):
    """redis-py's connection, knowing uvloop's way of saying "the peer reset the connection".

    Writing to a transport that the peer has already closed raises `RuntimeError` ("the handler
    is closed") under uvloop, where asyncio ignores the write and lets the read fail
    (MagicStack/uvloop#506); redis-py passes it through unchanged. It is a broken connection like
    any other: raised as redis' `ConnectionError`, so redis-py reconnects and callers back off
    instead of crashing.
    """

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except RuntimeError as exc:
            await self.disconnect(nowait=True)
            raise RedisConnectionError(f"connection lost while writing: {exc}") from exc


def _client(settings: RedisSettings, socket_timeout: float, name: str) -> Redis:
    client = Redis(
        host=settings.master_addr.host or "127.0.0.1",
        port=settings.master_addr.port,
        username=settings.username or None,
        password=settings.password.reveal() or None,
        db=settings.db,
        socket_timeout=socket_timeout,
        socket_connect_timeout=settings.operation_timeout.total_seconds(),
        client_name=name,
        decode_responses=False,  # stream values are bytes: decoded deliberately by the consumer
    )
    client.connection_pool.connection_class = _Connection  # the pool builds every connection from it
    return client


def commands_client(settings: RedisSettings) -> Redis:
    return _client(settings, settings.operation_timeout.total_seconds(), "mailsvc-commands")


def stream_client(settings: RedisSettings, block_timeout_s: float) -> Redis:
    # a blocking XREAD holds the socket for the whole BLOCK time: the timeout must outlast it
    return _client(settings, block_timeout_s + settings.operation_timeout.total_seconds() + 1, "mailsvc-stream")
