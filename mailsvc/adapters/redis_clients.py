"""The two Redis clients: one for short commands, one for blocking stream reads."""

from __future__ import annotations

from redis.asyncio import Redis

from mailsvc.settings import RedisSettings


def _client(settings: RedisSettings, socket_timeout: float, name: str) -> Redis:
    return Redis(
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


def commands_client(settings: RedisSettings) -> Redis:
    return _client(settings, settings.operation_timeout.total_seconds(), "mailsvc-commands")


def stream_client(settings: RedisSettings, block_timeout_s: float) -> Redis:
    # a blocking XREAD holds the socket for the whole BLOCK time: the timeout must outlast it
    return _client(settings, block_timeout_s + settings.operation_timeout.total_seconds() + 1, "mailsvc-stream")
