"""Operator API tests' tools: a service environment, the service in-process, paging."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx

from mailsvc.bootstrap import build_runtime
from mailsvc.settings import load_settings
from tests.support.infra import unique_name, wait_until

API = "/api/v1/internal"
REPO_TEMPLATES = os.path.join(os.path.dirname(__file__), "..", "..", "templates")


def operator_env(dsn: str, redis_addr: str, **overrides: str) -> dict[str, str]:
    """Environment for a stub-mode service on `dsn` with its own (empty) stream."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("MAIL_", "OTEL_"))}
    return {
        **keep,
        "MAIL_REDIS_MASTER_ADDR": redis_addr,
        "MAIL_REDIS_PASSWORD": "",
        "MAIL_POSTGRES_PRIMARY_DSN": dsn,
        "MAIL_REDIS_COMMAND_STREAM": f"mailsvc-test:{unique_name('op')}:commands",
        # its own event stream too: the default (`mail:events`) is what a real service publishes to
        "MAIL_REDIS_EVENT_STREAM": f"mailsvc-test:{unique_name('op')}:events",
        "MAIL_INTERNAL_HTTP_ADDR": "127.0.0.1:0",
        "MAIL_TEMPLATE_DIR": os.path.abspath(REPO_TEMPLATES),
        "MAIL_SHUTDOWN_TIMEOUT": "10s",
        "MAIL_STREAM_BLOCK_TIMEOUT": "200ms",
        "MAIL_SMTP_MODE": "stub",
        "MAIL_SMTP_FROM_EMAIL": "noreply@mail.example.com",
        **overrides,
    }


@contextlib.asynccontextmanager
async def in_process(env: Mapping[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    """`mailsvc serve` (built by `build_runtime`) as a task of this loop, and a client for it."""
    runtime = await build_runtime(load_settings(dict(env), dotenv=None))
    task = asyncio.create_task(runtime.run(), name="mailsvc-under-test")
    port = runtime.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        runtime.request_stop("test")
        await asyncio.wait_for(task, 30)


async def collect(
    client: httpx.AsyncClient, path: str, params: Sequence[tuple[str, str]] = (), *, limit: int = 500
) -> list[dict[str, Any]]:
    """Every item of a cursor-paginated list, following `next_cursor` to the end."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = [*params, ("limit", str(limit))] + ([("cursor", cursor)] if cursor else [])
        response = await client.get(f"{API}{path}", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["items"]) <= limit
        items.extend(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return items


async def wait_for_delivery(
    client: httpx.AsyncClient, params: Sequence[tuple[str, str]], status: str | None = None
) -> dict[str, Any]:
    """The single delivery the list filter `params` finds, once it exists (in `status`, if given)."""

    async def found() -> dict[str, Any] | None:
        response = await client.get(f"{API}/deliveries", params=list(params))
        assert response.status_code == 200, response.text
        items = response.json()["items"]
        if len(items) == 1 and (status is None or items[0]["status"] == status):
            return dict(items[0])
        return None

    result: dict[str, Any] = await wait_until(found, what=f"a delivery matching {params} in {status}")
    return result


async def wait_for_status(client: httpx.AsyncClient, delivery_id: str, status: str) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        response = await client.get(f"{API}/deliveries/{delivery_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body if body["status"] == status else None

    result: dict[str, Any] = await wait_until(reached, what=f"delivery {delivery_id} {status}")
    return result
