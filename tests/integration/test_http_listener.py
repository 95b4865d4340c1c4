"""The HTTP listener at the protocol level (SPEC §3): the idle timer, the 16 KiB head limit, slow
bodies and client disconnects, spoken over raw sockets to a real `mailsvc serve`."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import orjson
import pytest

from tests.support.infra import wait_until
from tests.support.intake import connect
from tests.support.process import ServiceProcess, running_service, service_environment

PATH = "/api/v1/internal/deliveries"
KIB = 1024
HEAD_LIMIT = 16 * KIB
# MAIL_POSTGRES_MAX_OPEN_CONNS=2 gives the listener a concurrency limit of 2 * 8 = 16 requests.
CONCURRENCY_LIMIT = 16


@dataclass
class Listener:
    service: ServiceProcess
    port: int
    dsn: str

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port, limit=4 * 1024 * 1024)


@pytest.fixture(scope="module")
async def listener(module_database: str, redis_addr: str) -> AsyncIterator[Listener]:
    env = service_environment(
        module_database,
        redis_addr,
        MAIL_INTERNAL_HTTP_IDLE_TIMEOUT="1s",
        MAIL_INTERNAL_HTTP_READ_HEADER_TIMEOUT="2s",
        MAIL_INTERNAL_HTTP_READ_TIMEOUT="3s",
        MAIL_POSTGRES_MAX_OPEN_CONNS="2",
        MAIL_POSTGRES_MAX_IDLE_CONNS="2",
    )
    async with running_service(env) as service:
        assert service.port is not None
        yield Listener(service, service.port, module_database)
        assert not service.events("http_unhandled_error"), service.output()


def body_of(text_size: int = 10) -> bytes:
    return orjson.dumps({"to": ["a@example.com"], "subject": "s", "text": "x" * text_size})


def post_head(body_length: int, *, key: str | None = None, pad_to: int | None = None) -> bytes:
    """A `POST /deliveries` head; `pad_to` makes the head (up to and including its blank line) exactly that long."""
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Idempotency-Key: {key or uuid.uuid4().hex}\r\nContent-Length: {body_length}\r\n"
    ).encode()
    if pad_to is not None:
        filler = pad_to - len(head) - len(b"X-Pad: \r\n\r\n")
        assert filler >= 0
        head += b"X-Pad: " + b"p" * filler + b"\r\n"
    head += b"\r\n"
    assert pad_to is None or len(head) == pad_to
    return head


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    """Whether the server ends the connection (sending nothing more) within `within` seconds."""
    try:
        async with asyncio.timeout(within):
            return await reader.read() == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False


# -- the idle timer ------------------------------------------------------------------------------


async def test_a_bare_crlf_after_a_response_does_not_keep_the_connection_open(listener: Listener) -> None:
    reader, writer = await listener.open()
    try:
        writer.write(b"GET /api/v1/internal/nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader))[0] == 404
        # a second request on the same connection, its body dripped for longer than the idle
        # timeout: the timer stopped when its head was complete, so it is served
        body = body_of()
        writer.write(post_head(len(body)))
        for start in range(0, len(body), 12):
            writer.write(body[start : start + 12])
            await asyncio.sleep(0.3)  # the drip itself (5 pieces over 1.5 s), not synchronisation
        assert (await read_response(reader))[0] == 202
        writer.write(b"\r\n")  # llhttp skips it without starting a message
        assert await closed_by_server(reader, within=5), "a bare CRLF kept the idle connection open"
    finally:
        writer.close()


async def test_stray_bytes_dripped_after_a_response_never_reset_the_idle_timer(listener: Listener) -> None:
    reader, writer = await listener.open()
    try:
        writer.write(b"GET /api/v1/internal/nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader))[0] == 404
        for _ in range(30):  # 6 s of a CRLF every 200 ms, against a 1 s idle timeout
            try:
                writer.write(b"\r\n")
                await writer.drain()
            except ConnectionError:
                return
            if await closed_by_server(reader, within=0.2):
                return
        pytest.fail("CRLFs dripped after a response kept the connection open")
    finally:
        writer.close()


# -- the request head limit ----------------------------------------------------------------------


async def test_a_17_kib_head_is_431_in_our_error_shape_and_the_connection_closes(listener: Listener) -> None:
    reader, writer = await listener.open()
    try:
        body = body_of()
        writer.write(post_head(len(body), pad_to=17 * KIB) + body)
        status, headers, content = await read_response(reader)
        assert status == 431
        assert headers["content-type"].startswith("application/json")
        assert headers["connection"] == "close"
        error = orjson.loads(content)["error"]
        assert error["code"] == "headers_too_large"
        assert error["message"]
        assert await closed_by_server(reader, within=5)
    finally:
        writer.close()


async def test_a_30_mib_header_dripped_in_chunks_is_refused_once_it_passes_16_kib(listener: Listener) -> None:
    reader, writer = await listener.open()
    sent = 0

    async def drip() -> None:
        nonlocal sent
        writer.write(b"GET /api/v1/internal/nothing HTTP/1.1\r\nHost: x\r\nX-Big: ")
        with contextlib.suppress(ConnectionError):
            while sent < 30 * 1024 * KIB:
                writer.write(b"a" * (64 * KIB))
                await writer.drain()
                sent += 64 * KIB
                await asyncio.sleep(0)  # let the reader see an answer between chunks

    dripping = asyncio.create_task(drip())
    try:
        async with asyncio.timeout(10):
            status, _, content = await read_response(reader)
        assert status == 431
        assert orjson.loads(content)["error"]["code"] == "headers_too_large"
        assert await closed_by_server(reader, within=5)
        assert sent < 30 * 1024 * KIB  # answered long before the header could have ended
    finally:
        dripping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dripping
        writer.close()


@pytest.mark.parametrize(("head_size", "status"), [(15 * KIB, 202), (HEAD_LIMIT, 202), (HEAD_LIMIT + 1, 431)])
async def test_the_head_limit_counts_the_head_only_never_the_body(
    listener: Listener, head_size: int, status: int
) -> None:
    reader, writer = await listener.open()
    try:
        body = body_of(300 * KIB)  # written together with the head: most of the bytes are body
        writer.write(post_head(len(body), pad_to=head_size) + body)
        assert (await read_response(reader))[0] == status
    finally:
        writer.close()


# -- slow bodies and the concurrency limit ---------------------------------------------------------


async def test_slowly_dripped_bodies_hold_no_concurrency_slot(listener: Listener) -> None:
    slow = [await listener.open() for _ in range(CONCURRENCY_LIMIT + 4)]
    try:
        body = body_of()
        for _, writer in slow:  # whole heads, then only the start of each body
            writer.write(post_head(len(body)) + body[:10])
            await writer.drain()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{listener.port}", timeout=10) as client:
            response = await client.post(PATH, content=body_of(), headers={"Idempotency-Key": uuid.uuid4().hex})
        assert response.status_code == 202, response.text
        # the read deadline (3 s here) still bounds the drip: each slow client is hung up on
        for reader, _ in slow:
            assert await closed_by_server(reader, within=10)
    finally:
        for _, writer in slow:
            writer.close()


# -- clients that go away -------------------------------------------------------------------------


def _gone(service: ServiceProcess) -> list[str]:
    return [e["event"] for e in service.lines if e.get("event") in ("http_client_disconnected", "http_unhandled_error")]


async def test_a_client_leaving_mid_body_is_no_unhandled_error(listener: Listener) -> None:
    before = len(_gone(listener.service))
    _, writer = await listener.open()
    body = body_of()
    writer.write(post_head(len(body)) + body[:10])
    await writer.drain()
    writer.close()
    await writer.wait_closed()

    async def reported() -> list[str]:
        return _gone(listener.service)[before:]

    assert await wait_until(reported, timeout=10, what="the disconnect to be handled") == ["http_client_disconnected"]


async def test_a_client_leaving_while_its_request_is_handled_is_no_unhandled_error(listener: Listener) -> None:
    key = uuid.uuid4().hex
    body = body_of()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{listener.port}", timeout=10) as client:
        first = await client.post(PATH, content=body, headers={"Idempotency-Key": key})
        assert first.status_code == 202, first.text
        before = len(_gone(listener.service))
        async with connect(listener.dsn) as blocker:
            # hold the key's row: the replay below waits on it inside the handler
            transaction = blocker.transaction()
            await transaction.start()
            await blocker.execute("SELECT 1 FROM idempotency_keys WHERE key = $1 FOR UPDATE", key)
            _, writer = await listener.open()
            writer.write(post_head(len(body), key=key) + body)
            await writer.drain()

            async def handler_waiting() -> bool:
                async with connect(listener.dsn) as observer:  # its own transaction: a fresh view
                    return bool(
                        await observer.fetchval(
                            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                            " AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO idempotency_keys%'"
                        )
                    )

            await wait_until(handler_waiting, timeout=10, what="the replay to wait on the held row")
            writer.close()
            await writer.wait_closed()

            async def reported() -> list[str]:
                return _gone(listener.service)[before:]

            assert await wait_until(reported, timeout=10, what="the disconnect") == ["http_client_disconnected"]
            await transaction.rollback()
        again = await client.post(PATH, content=body, headers={"Idempotency-Key": key})
        assert again.status_code == 200, again.text
    assert _gone(listener.service)[before:] == ["http_client_disconnected"]


# -- what holding the application back until the body is complete must not break -------------------


async def test_expect_100_continue_is_answered_before_the_body_is_sent(listener: Listener) -> None:
    reader, writer = await listener.open()
    try:
        body = body_of()
        writer.write(post_head(len(body)).replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"))
        async with asyncio.timeout(5):  # a client waits for the 100 before it sends the body
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        assert (await read_response(reader))[0] == 202
    finally:
        writer.close()


async def test_pipelined_requests_are_answered_in_order(listener: Listener) -> None:
    reader, writer = await listener.open()
    try:
        body = body_of()
        not_found = b"GET /api/v1/internal/nothing HTTP/1.1\r\nHost: x\r\n\r\n"
        writer.write(post_head(len(body)) + body + not_found + post_head(len(body)) + body[:20])
        await writer.drain()
        assert (await read_response(reader))[0] == 202
        assert (await read_response(reader))[0] == 404
        writer.write(body[20:])
        assert (await read_response(reader))[0] == 202
    finally:
        writer.close()
