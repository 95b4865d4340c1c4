"""The service's Redis clients over a connection the server dropped, on the event loop the service
runs on (uvloop)."""

from __future__ import annotations

import asyncio

import uvloop

from mailsvc.adapters.redis_clients import commands_client, stream_client
from mailsvc.settings import load_settings
from tests.support.infra import redis_host_port
from tests.support.tcp_proxy import TcpProxy


def test_a_dropped_connection_is_reconnected_not_a_runtime_error(redis_addr: str) -> None:
    """uvloop raises `RuntimeError` for a write to a transport the peer has closed
    (MagicStack/uvloop#506) and redis-py passes it through: after every Redis restart or connection
    reset, the stream consumer crashed ("loop_crashed", found by the chaos run) instead of backing
    off. Through our clients the next command reconnects, as it does on plain asyncio."""

    async def scenario() -> None:
        proxy = TcpProxy(*redis_host_port(redis_addr))
        await proxy.start()
        env = {"MAIL_REDIS_MASTER_ADDR": f"127.0.0.1:{proxy.port}", "MAIL_REDIS_PASSWORD": "",
               "MAIL_POSTGRES_PRIMARY_DSN": "postgresql://nobody@127.0.0.1:1/none"}  # fmt: skip
        settings = load_settings(env, dotenv=None).redis
        clients = [commands_client(settings), stream_client(settings, 1.0)]
        try:
            for client in clients:
                assert await client.ping()
            proxy.reset()  # every connection reset, as by a Redis restart or a middlebox
            await asyncio.sleep(0.2)  # the clients' transports have seen it
            for client in clients:
                assert await client.ping()
        finally:
            for client in clients:
                await client.aclose()
            await proxy.stop()

    uvloop.run(scenario())
