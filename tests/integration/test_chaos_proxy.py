"""The chaos run's fault proxy over real sockets: each mode does to a connection what it claims."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest

from bench.chaos.children import LineChild
from bench.chaos.proxy import FaultProxy, Route


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    writer.close()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.fixture
async def proxy(echo_port: int) -> AsyncIterator[tuple[FaultProxy, int]]:
    running = FaultProxy([Route("echo", "127.0.0.1", echo_port)])
    ports = await running.start()
    yield running, ports["echo"]
    running.close()


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _silent(reader: asyncio.StreamReader, seconds: float = 0.5) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await reader.read(1)
    except TimeoutError:
        return True
    return False


async def test_latency_holds_each_chunk_in_each_direction(proxy: tuple[FaultProxy, int]) -> None:
    running, port = proxy
    reader, writer = await _connect(port)
    running.set_mode(["echo"], "latency", 0.15)
    started = time.monotonic()
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"
    assert time.monotonic() - started >= 0.3
    writer.close()


async def test_a_blackhole_holds_everything_and_lets_it_through_when_lifted(proxy: tuple[FaultProxy, int]) -> None:
    running, port = proxy
    reader, writer = await _connect(port)
    running.set_mode(["echo"], "blackhole")
    writer.write(b"held")
    new_reader, new_writer = await _connect(port)  # accepted, but nothing moves
    new_writer.write(b"also")
    assert await _silent(reader)
    assert await _silent(new_reader)
    running.set_mode(["echo"], "pass")
    assert await reader.readexactly(4) == b"held"
    assert await new_reader.readexactly(4) == b"also"
    writer.close()
    new_writer.close()


async def test_a_half_open_connection_swallows_bytes_for_good(proxy: tuple[FaultProxy, int]) -> None:
    running, port = proxy
    reader, writer = await _connect(port)
    running.set_mode(["echo"], "halfopen")
    writer.write(b"lost")
    assert await _silent(reader)
    running.set_mode(["echo"], "pass")
    writer.write(b"still")
    assert await _silent(reader)  # it stays half-open until the client gives up
    fresh_reader, fresh_writer = await _connect(port)
    fresh_writer.write(b"fresh")
    assert await fresh_reader.readexactly(5) == b"fresh"
    writer.close()
    fresh_writer.close()


async def test_reset_breaks_every_open_connection(proxy: tuple[FaultProxy, int]) -> None:
    running, port = proxy
    reader, writer = await _connect(port)
    writer.write(b"x")
    await reader.readexactly(1)
    assert running.reset(["echo"]) == 1
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await reader.readexactly(1)
    writer.close()


async def test_the_proxy_process_answers_its_control_protocol(echo_port: int) -> None:
    routes = json.dumps([{"name": "echo", "host": "127.0.0.1", "port": echo_port}])
    child = await LineChild.start("bench.chaos.proxy", "--routes", routes)
    try:
        reader, writer = await _connect(child.ready["ports"]["echo"])
        writer.write(b"hi")
        assert await reader.readexactly(2) == b"hi"
        assert (await child.ask({"op": "mode", "routes": ["echo"], "mode": "latency", "delay": 0.01}))["ok"]
        assert (await child.ask({"op": "stats"}))["routes"]["echo"]["links"] == 1
        writer.close()
    finally:
        await child.close()
