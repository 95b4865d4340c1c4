"""End-to-end latency and the event metrics (SPEC §8): from the producer's XADD (the entry id's
milliseconds) or the HTTP acceptance to the 250, by source; events published; the oldest
unpublished event's age — recorded by `mailsvc serve` against real PostgreSQL, Redis and SMTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import httpx
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from redis.asyncio import Redis

from mailsvc.bootstrap import build_runtime
from mailsvc.instruments import Instruments
from mailsvc.producer import command_fields
from mailsvc.settings import load_settings
from tests.smtp_servers import SmtpServer
from tests.support.deliveries import Ledger, smtp_env
from tests.support.infra import wait_until
from tests.support.payloads import raw_payload
from tests.support.stream import new_key


def points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    found = []
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    found.extend(metric.data.data_points)
    return found


def by_source(reader: InMemoryMetricReader) -> Mapping[str, Any]:
    return {p.attributes["source"]: p for p in points(reader, "mail.delivery.latency")}


async def test_latency_runs_from_the_xadd_or_the_acceptance_to_the_250(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    reader = InMemoryMetricReader()
    instruments = Instruments(meter_provider=MeterProvider(metric_readers=[reader]))
    with SmtpServer() as server:
        settings = load_settings(smtp_env(service_env, server.host_port), dotenv=None)
        runtime = await build_runtime(settings, instruments=instruments)
        task = asyncio.create_task(runtime.run())
        try:
            # the producer XADDed it 3 s ago (the entry id says so): those 3 s count
            xadd_ms = int(time.time() * 1000) - 3000
            key = new_key()
            fields = command_fields(raw_payload("ann@example.org"), key, None)
            await redis_client.xadd(stream_key, fields, id=f"{xadd_ms}-0")  # type: ignore[arg-type]
            port = runtime.sockets[0].getsockname()[1]
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                response = await client.post(
                    "/api/v1/internal/deliveries",
                    json=raw_payload("bob@example.org"),
                    headers={"Idempotency-Key": new_key("http")},
                )
            assert response.status_code == 202, response.text
            assert (await db.wait_status(key))["status"] == "sent"
            row = await db.conn.fetchrow("SELECT submitted_at FROM deliveries WHERE idempotency_key = $1", key)
            assert int(row["submitted_at"].timestamp() * 1000) == xadd_ms

            async def both_measured() -> bool:
                return {"notification", "auth"} <= set(by_source(reader))

            await wait_until(both_measured, what="a latency of each source")

            async def published() -> bool:  # queued + sent of each
                return sum(p.value for p in points(reader, "mail.events.published")) >= 4

            await wait_until(published, what="four events published")
        finally:
            runtime.request_stop("test")
            await asyncio.wait_for(task, 30)
    latency = by_source(reader)
    assert latency["notification"].count == 1
    assert 3.0 <= latency["notification"].sum < 60
    assert latency["auth"].count == 1
    assert latency["auth"].sum < 3.0
    [age] = points(reader, "mail.events.oldest_unpublished_age") or [None]
    assert age is None or age.value >= 0
