"""Traces and metrics of a real run (SPEC §8), exported over OTLP/HTTP to a receiver on loopback.

`mailsvc serve` runs as a child process with the standard `OTEL_*` variables pointing at
`tests/support/otlp_receiver.py`; the deliveries go to an aiosmtpd server over a socket. One
delivery's spans must read as one trace from the producer's `XADD` to the receiving server's reply.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
from redis.asyncio import Redis

from mailsvc.producer import command_fields
from tests.smtp_servers import ScriptedHandler, SmtpServer
from tests.support.deliveries import Ledger, smtp_env
from tests.support.otlp_receiver import OtlpReceiver, ReceivedPoint, ReceivedSpan, otlp_env
from tests.support.payloads import raw_payload
from tests.support.process import running_service
from tests.support.stream import new_key

PATH = "/api/v1/internal/deliveries"
SERVER, CLIENT, CONSUMER = 2, 3, 5  # OTLP span kinds
# the only metric attributes there may be: low-cardinality, never an address or an id
METRIC_ATTRIBUTES = {
    "result",
    "source",
    "outcome",
    "provider",
    "status",
    "table",
    "http.request.method",
    "http.response.status_code",
    "http.route",
}


# (metric, attributes, at least): what one run must have exported (cumulative values)
EXPECTED_METRICS: list[tuple[str, dict[str, str], int]] = [
    ("mail.commands.consumed", {"result": "accepted"}, 1),
    ("mail.commands.consumed", {"result": "malformed"}, 1),
    ("mail.deliveries.accepted", {"source": "notification"}, 1),
    ("mail.deliveries.accepted", {"source": "auth"}, 1),
    ("mail.attempts", {"outcome": "sent", "provider": "smtp"}, 2),
    ("mail.attempt.duration", {"outcome": "sent", "provider": "smtp"}, 2),  # histogram count
    ("mail.deliveries.finished", {"status": "sent"}, 2),
    ("mail.retention.deleted", {"table": "malformed_commands"}, 1),
    ("mail.stream.lag", {}, 0),
    ("mail.queue.due", {}, 0),
    ("http.server.request.duration", {"http.route": PATH}, 1),
]


async def eventually(unmet: Callable[[], list[str]], timeout: float = 30.0) -> None:
    """Poll until `unmet()` names nothing left, or fail naming what never arrived."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while missing := unmet():
        if loop.time() > deadline:
            raise AssertionError(f"never arrived within {timeout}s: {missing}")
        await asyncio.sleep(0.05)


def one(spans: list[ReceivedSpan], what: str, attributes: dict[str, Any] | None = None) -> ReceivedSpan:
    matching = [s for s in spans if all(s.attributes.get(k) == v for k, v in (attributes or {}).items())]
    assert len(matching) == 1, f"{what}: {matching or spans}"
    return matching[0]


def total(receiver: OtlpReceiver, metric: str, **attributes: Any) -> float | None:
    """The latest cumulative value (or histogram count) of the series with these attributes."""
    values = [
        p.count if p.count is not None else p.value
        for p in receiver.metric(metric)
        if all(p.attributes.get(k) == v for k, v in attributes.items())
    ]
    return max(values) if values else None


def latest(receiver: OtlpReceiver, metric: str) -> float | None:
    points = receiver.metric(metric)
    return points[-1].value if points else None


def metrics_unmet(receiver: OtlpReceiver) -> list[str]:
    unmet = []
    for metric, attributes, at_least in EXPECTED_METRICS:
        value = total(receiver, metric, **attributes)
        if value is None or value < at_least:
            unmet.append(f"{metric} {attributes} >= {at_least} (got {value})")
    return unmet


async def seed_old_malformed_command(conn: asyncpg.Connection) -> None:
    """A row retention's first pass deletes (malformed commands are kept 7 days by default)."""
    await conn.execute(
        "INSERT INTO malformed_commands (stream_key, stream_entry_id, reason, message, raw_fields, received_at) "
        "VALUES ('old-stream', '1-0', 'missing_field', 'old', '\\x7b7d', now() - interval '30 days')"
    )


async def test_one_delivery_is_one_trace_and_the_metrics_arrive(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger, receiver: OtlpReceiver
) -> None:
    producer_trace, producer_span = secrets.token_hex(16), secrets.token_hex(8)
    traceparent = f"00-{producer_trace}-{producer_span}-01"
    await seed_old_malformed_command(db.conn)
    stream_key_name, http_key = new_key("traced"), new_key("http")

    handler = ScriptedHandler()
    with SmtpServer(handler) as server:
        env = smtp_env(service_env, server.host_port, **otlp_env(receiver))
        async with (
            running_service(env) as service,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}", timeout=10) as client,
        ):
            fields = command_fields(raw_payload("ann@example.org"), stream_key_name, traceparent)
            await redis_client.xadd(stream_key, fields)  # type: ignore[arg-type]
            await redis_client.xadd(stream_key, {"type": "send_email"})  # malformed: no payload
            response = await client.post(
                PATH, json=raw_payload("bob@example.org"), headers={"Idempotency-Key": http_key}
            )
            assert response.status_code == 202, response.text
            http_delivery = response.json()["delivery_id"]
            detail = await client.get(f"{PATH}/{http_delivery}")
            assert detail.status_code == 200, detail.text

            row = await db.wait_status(stream_key_name)
            http_row = await db.wait_status(http_key, source="auth")
            assert (row["status"], http_row["status"]) == ("sent", "sent")
            assert len(handler.received) == 2
            delivery_id = str(row["delivery_id"])

            def spans_unmet() -> list[str]:
                wanted: dict[str, Callable[[ReceivedSpan], bool]] = {
                    "consume": lambda s: s.name == "mail.command consume" and s.trace_id == producer_trace,
                    "attempt": lambda s: s.name == "mail.attempt" and s.trace_id == producer_trace,
                    "http attempt": lambda s: (
                        s.name == "mail.attempt" and s.attributes.get("mail.delivery_id") == http_delivery
                    ),
                    "malformed consume": lambda s: s.attributes.get("mail.command.result") == "malformed",
                    "claim": lambda s: s.name == "mail.scheduler claim",
                    "retention": lambda s: s.name == "mail.retention pass",
                    "http detail": lambda s: s.name.startswith("GET "),
                }
                spans = receiver.spans_named("")
                return [what for what, test in wanted.items() if not any(test(s) for s in spans)]

            await eventually(lambda: spans_unmet() + metrics_unmet(receiver))
            # everything consumed and attempted: both gauges settle at zero
            await eventually(lambda: [g for g in ("mail.stream.lag", "mail.queue.due") if latest(receiver, g) != 0])

    spans = receiver.spans_named("")
    trace = [s for s in spans if s.trace_id == producer_trace]
    consume = one([s for s in trace if s.name == "mail.command consume"], "consume span")
    assert consume.parent_span_id == producer_span  # continues the producer's traceparent
    assert consume.kind == CONSUMER
    assert consume.attributes["mail.command.result"] == "accepted"
    assert consume.attributes["mail.delivery_id"] == delivery_id
    assert consume.attributes["messaging.destination.name"] == stream_key
    assert row["traceparent"] == f"00-{producer_trace}-{consume.span_id}-01"

    attempt = one([s for s in trace if s.name == "mail.attempt"], "attempt span")
    assert attempt.parent_span_id == consume.span_id
    assert attempt.kind == CLIENT
    assert attempt.attributes["mail.delivery_id"] == delivery_id
    assert attempt.attributes["mail.attempt_number"] == 1
    assert attempt.attributes["mail.provider"] == "smtp"
    assert attempt.attributes["smtp.reply_code"] == 250
    assert attempt.attributes["mail.attempt.outcome"] == "sent"
    assert attempt.status_code != 2  # not ERROR

    # the claim pass is a trace of its own, linked to the span that accepted each delivery it claimed
    claims = [s for s in spans if s.name == "mail.scheduler claim"]
    assert (producer_trace, consume.span_id) in [link for s in claims for link in s.links]
    assert all(s.trace_id != producer_trace for s in claims)

    malformed = one(
        [s for s in spans if s.name == "mail.command consume"], "malformed", {"mail.command.result": "malformed"}
    )
    assert malformed.attributes["mail.command.malformed_reason"] == "missing_field"

    # the HTTP door: server span named by the route template → acceptance → attempt, one trace
    post = one([s for s in spans if s.name == f"POST {PATH}"], "POST span")
    assert post.kind == SERVER
    assert post.attributes["http.route"] == PATH
    assert post.attributes["http.response.status_code"] == 202
    accept = one([s for s in spans if s.name == "mail.delivery accept"], "accept span")
    assert (accept.trace_id, accept.parent_span_id) == (post.trace_id, post.span_id)
    assert accept.attributes["mail.delivery_id"] == http_delivery
    http_attempt = one(
        [s for s in spans if s.name == "mail.attempt"], "http attempt", {"mail.delivery_id": http_delivery}
    )
    assert (http_attempt.trace_id, http_attempt.parent_span_id) == (accept.trace_id, accept.span_id)
    assert http_row["traceparent"].startswith(f"00-{accept.trace_id}-{accept.span_id}-")  # any trace flags
    [detail_span] = [s for s in spans if s.name.startswith("GET ")]
    assert detail_span.name == f"GET {PATH}/{{delivery_id}}"  # the template, never the id

    retention = [s for s in spans if s.name == "mail.retention pass"]
    assert any(s.attributes.get("mail.retention.deleted.malformed_commands") == 1 for s in retention)

    # sane values, units, and nothing identifying in any metric attribute
    assert total(receiver, "mail.commands.consumed", result="accepted") == 1
    assert total(receiver, "mail.commands.consumed", result="malformed") == 1
    assert total(receiver, "mail.retention.deleted", table="malformed_commands") == 1
    units = {p.metric: p.unit for p in receiver.metric_points()}
    assert units["mail.attempt.duration"] == units["http.server.request.duration"] == "s"
    assert units["mail.stream.lag"] == "{entry}"
    identifying = {delivery_id, http_delivery, stream_key_name, http_key, stream_key}
    for point in receiver.metric_points():
        check_metric_attributes(point, identifying)


def check_metric_attributes(point: ReceivedPoint, identifying: set[str]) -> None:
    assert set(point.attributes) <= METRIC_ATTRIBUTES, point
    for value in point.attributes.values():
        assert "@" not in str(value), point
        assert not any(secret in str(value) for secret in identifying), point
