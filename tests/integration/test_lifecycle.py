"""`mailsvc serve` as a real process: configuration, startup refusal, HTTP deadlines, shutdown."""

from __future__ import annotations

import asyncio
import signal

import httpx

from devtools.embedded import free_port
from tests.support.process import running_service, start_service


async def test_invalid_configuration_exits_2_naming_each_variable(service_env: dict[str, str]) -> None:
    env = {**service_env, "MAIL_SMTP_TIMEOUT": "soon", "MAIL_ATTEMPT_WORKER_CONCURRENCY": "-1"}
    del env["MAIL_POSTGRES_PRIMARY_DSN"]
    service = await start_service(env)
    assert await service.wait_exit() == 2
    errors = "\n".join(service.stderr)
    assert "MAIL_SMTP_TIMEOUT:" in errors
    assert "MAIL_ATTEMPT_WORKER_CONCURRENCY:" in errors
    assert "MAIL_POSTGRES_PRIMARY_DSN: required" in errors


async def test_configuration_that_cannot_work_exits_2(service_env: dict[str, str]) -> None:
    env = {
        **service_env,
        "MAIL_SMTP_MODE": "smtp",
        "MAIL_SMTP_ADDR": "127.mail.example.com:587",
        "MAIL_SMTP_FROM_EMAIL": "josé@example.com",  # every delivery's From header would fail
        "MAIL_IDEMPOTENCY_TTL": "48h",
        "MAIL_DELIVERY_RETENTION": "24h",
    }
    service = await start_service(env)
    assert await service.wait_exit() == 2
    problems = [line.strip() for line in service.stderr if line.startswith("  ")]
    assert [p.split(":")[0] for p in problems] == ["MAIL_SMTP_FROM_EMAIL", "MAIL_IDEMPOTENCY_TTL"], service.output()


async def test_refuses_to_start_when_redis_is_down(service_env: dict[str, str]) -> None:
    service = await start_service({**service_env, "MAIL_REDIS_MASTER_ADDR": f"127.0.0.1:{free_port()}"})
    assert await service.wait_exit() == 1
    assert any("redis" in line and "unreachable" in line for line in service.stderr), service.output()


async def test_refuses_to_start_when_postgres_is_down(service_env: dict[str, str]) -> None:
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    service = await start_service({**service_env, "MAIL_POSTGRES_PRIMARY_DSN": dsn})
    assert await service.wait_exit() == 1
    assert any("postgresql (primary) is unreachable" in line for line in service.stderr), service.output()


async def test_refuses_to_start_when_schema_is_behind(service_env: dict[str, str], empty_database_dsn: str) -> None:
    service = await start_service({**service_env, "MAIL_POSTGRES_PRIMARY_DSN": empty_database_dsn})
    assert await service.wait_exit() == 1
    assert any("run `mailsvc migrate`" in line for line in service.stderr), service.output()


async def test_serves_json_404_and_exits_0_on_sigterm(service_env: dict[str, str]) -> None:
    async with running_service(service_env) as service:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}") as client:
            response = await client.get("/api/v1/internal/nothing-here")
        assert response.status_code == 404
        assert response.json() == {"error": {"code": "not_found", "message": "no such route"}}
        service.send_signal(signal.SIGTERM)
        assert await service.wait_exit() == 0
        assert service.events("service_stopped")


async def test_sigint_also_drains_and_exits_0(service_env: dict[str, str]) -> None:
    async with running_service(service_env) as service:
        service.send_signal(signal.SIGINT)
        assert await service.wait_exit() == 0


async def _slow_header_client(port: int, drip_every: float, drips: int) -> tuple[int, bool]:
    """Send a request head one byte at a time; return (bytes sent, whether the server hung up)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = b"GET /api/v1/internal/deliveries HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    sent = 0
    try:
        for byte in head[:drips]:
            writer.write(bytes([byte]))
            await writer.drain()
            sent += 1
            try:
                async with asyncio.timeout(drip_every):
                    data = await reader.read(1)
                if data == b"":
                    return sent, True
            except TimeoutError:
                continue
        return sent, False
    except ConnectionError:
        return sent, True
    finally:
        writer.close()


async def test_slow_header_client_is_cut_off(service_env: dict[str, str]) -> None:
    env = {**service_env, "MAIL_INTERNAL_HTTP_READ_HEADER_TIMEOUT": "1s"}
    async with running_service(env) as service:
        assert service.port is not None
        # one byte every 100 ms: each write is "active", yet the head never completes.
        # 60 drips would take ~6 s; the 1 s header deadline must hang up long before that.
        sent, hung_up = await _slow_header_client(service.port, drip_every=0.1, drips=60)
        assert hung_up, "server kept a dripping client past the read-header deadline"
        assert 3 < sent < 60
        # a normal client still gets served
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}") as client:
            assert (await client.get("/nope")).status_code == 404


async def test_silent_client_is_cut_off(service_env: dict[str, str]) -> None:
    env = {**service_env, "MAIL_INTERNAL_HTTP_READ_HEADER_TIMEOUT": "500ms"}
    async with running_service(env) as service:
        reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
        try:
            async with asyncio.timeout(10):
                assert await reader.read(1) == b""  # closed by the server, not by our timeout
        finally:
            writer.close()
