"""Operator reads when PostgreSQL is slow (504 `timeout`) or gone (503 `unavailable`, the process lives)."""

from __future__ import annotations

import uuid

import asyncpg
import httpx

from tests.support.infra import wait_until
from tests.support.operator_api import API, in_process, operator_env
from tests.support.process import running_service
from tests.support.tcp_proxy import dsn_through, proxy_to

PAYLOAD = {"to": ["ann@example.com"], "subject": "Hello", "text": "Hi"}


async def test_reads_blocked_past_the_operator_timeout_get_504(database_dsn: str, redis_addr: str) -> None:
    env = operator_env(database_dsn, redis_addr, MAIL_OPERATOR_REQUEST_TIMEOUT="300ms")
    async with in_process(env) as api:
        submitted = await api.post(f"{API}/deliveries", json=PAYLOAD, headers={"Idempotency-Key": "k1"})
        delivery_id = submitted.json()["delivery_id"]
        blocker = await asyncpg.connect(database_dsn)
        try:
            lock = blocker.transaction()
            await lock.start()
            await blocker.execute("LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE")
            for path in (
                "/deliveries",
                f"/deliveries/{delivery_id}",
                f"/deliveries/{delivery_id}/attempts",
                "/dead-letters",
            ):
                response = await api.get(API + path)
                assert response.status_code == 504, (path, response.text)
                assert response.json()["error"]["code"] == "timeout"
            # reads that do not touch the locked table are not held up
            assert (await api.get(f"{API}/malformed-commands")).status_code == 200
            assert (await api.get(f"{API}/templates")).status_code == 200
            await lock.rollback()
        finally:
            await blocker.close()
        # the cancelled queries left the pool healthy
        for _ in range(10):
            response = await api.get(f"{API}/deliveries/{delivery_id}")
            assert response.status_code == 200
            assert response.json()["delivery_id"] == delivery_id


async def test_database_unreachable_is_503_with_retry_after_and_the_service_recovers(
    database_dsn: str, redis_addr: str
) -> None:
    proxy = proxy_to(database_dsn)
    env = operator_env(dsn_through(database_dsn, await proxy.start()), redis_addr)
    try:
        async with (
            running_service(env) as service,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}", timeout=30) as api,
        ):
            submitted = await api.post(f"{API}/deliveries", json=PAYLOAD, headers={"Idempotency-Key": "k1"})
            delivery_id = submitted.json()["delivery_id"]
            assert (await api.get(f"{API}/deliveries")).status_code == 200

            await proxy.stop()
            requests = [
                api.build_request("GET", f"{API}/deliveries"),
                api.build_request("GET", f"{API}/deliveries/{delivery_id}"),
                api.build_request("GET", f"{API}/deliveries/{delivery_id}/attempts"),
                api.build_request("GET", f"{API}/dead-letters"),
                api.build_request("GET", f"{API}/malformed-commands"),
                api.build_request("POST", f"{API}/deliveries/{delivery_id}/resend"),
                api.build_request("POST", f"{API}/deliveries", json=PAYLOAD, headers={"Idempotency-Key": "k2"}),
            ]
            for request in requests:
                response = await api.send(request)
                assert response.status_code == 503, (request.url, response.text)
                assert response.json()["error"]["code"] == "unavailable"
                assert response.headers["Retry-After"].isdigit()
            assert (await api.get(f"{API}/templates")).status_code == 200
            assert service.process.returncode is None

            await proxy.start()

            async def serving_again() -> bool:
                return (await api.get(f"{API}/deliveries/{delivery_id}")).status_code == 200

            await wait_until(serving_again, what="reads to succeed once PostgreSQL is back")
            again = await api.post(f"{API}/deliveries", json=PAYLOAD, headers={"Idempotency-Key": str(uuid.uuid4())})
            assert again.status_code == 202
            assert service.process.returncode is None
    finally:
        await proxy.stop()
