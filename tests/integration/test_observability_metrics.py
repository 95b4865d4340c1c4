"""Every metric the dashboard and the alert rules query is one a running mailsvc exports, under the
name the collector's Prometheus exporter gives it — and every metric it exports is on the dashboard.

`mailsvc serve` runs as a child process exporting OTLP/HTTP to the loopback receiver, and is driven
until each instrument has exported: a delivery sent through a real SMTP server after an ambiguous
first attempt (a retry), a dead letter, a malformed command, an HTTP intake and the startup
retention pass. The exported names are mapped with tests/support/prometheus_names.py and compared
with the names tests/support/promql_names.py reads from the dashboard and the rules.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from tests.smtp_servers import ScriptedHandler, SmtpServer
from tests.support.deliveries import Ledger, condition, smtp_env
from tests.support.infra import wait_until
from tests.support.otlp_receiver import OtlpReceiver, otlp_env
from tests.support.payloads import raw_payload
from tests.support.process import running_service
from tests.support.prometheus_names import MetricKind, prometheus_label, prometheus_name, prometheus_series
from tests.support.promql_names import Query, dashboard_queries, rule_queries
from tests.support.stream import new_key, xadd

OBSERVABILITY = Path(__file__).resolve().parents[2] / "deploy" / "observability"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"
ALERTS = OBSERVABILITY / "alerts.yaml"

# Names queried before the service exports them, each with the change that brings it. Keep it
# short-lived: a name here is a panel or an alert that shows nothing.
EXPECTED_LATER = {
    # retention failures by step: proposed for the retention loop being reworked (MailsvcRetentionFailing)
    "mail_retention_failures_total",
}
# Metrics the service exports that no panel shows yet (keep it empty: add a panel instead).
NOT_ON_THE_DASHBOARD_YET: set[str] = set()
# Labels every series carries besides its attributes: from the resource (service.name,
# service.instance.id) and a histogram bucket's bound.
RESOURCE_LABELS = {"job", "instance"}
BUCKET_LABEL = "le"


class Export:
    """What the receiver got, in Prometheus terms: series names, and label names per series."""

    def __init__(self, receiver: OtlpReceiver) -> None:
        self.families: dict[str, set[str]] = {}  # family → its series names
        self.labels: dict[str, set[str]] = {}  # series name → label names
        for point in receiver.metric_points():
            kind: MetricKind = point.kind  # type: ignore[assignment]
            family = prometheus_name(point.metric, point.unit, kind, monotonic=point.monotonic)
            series = prometheus_series(point.metric, point.unit, kind, monotonic=point.monotonic)
            self.families.setdefault(family, set()).update(series)
            for name in series:
                labels = {prometheus_label(key) for key in point.attributes} | RESOURCE_LABELS
                if name.endswith("_bucket") and kind == "histogram":
                    labels.add(BUCKET_LABEL)
                self.labels.setdefault(name, set()).update(labels)

    @property
    def series(self) -> set[str]:
        return set(self.labels)


def queries() -> list[Query]:
    return dashboard_queries(DASHBOARD) + rule_queries(ALERTS)


def used_names() -> set[str]:
    return {selector.metric for query in queries() for selector in query.selectors()}


def missing(receiver: OtlpReceiver) -> set[str]:
    return used_names() - Export(receiver).series - EXPECTED_LATER


async def test_every_queried_metric_is_exported_and_every_exported_metric_is_shown(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger, receiver: OtlpReceiver
) -> None:
    # the first message to reach the final dot loses its connection (ambiguous, retried); the
    # recipient `gone@` is refused for good (a dead letter)
    handler = ScriptedHandler(drop_after_data_count=1, rcpt_replies={"gone@example.org": "550 5.1.1 no such user"})
    with SmtpServer(handler) as server:
        env = smtp_env(service_env, server.host_port, **otlp_env(receiver))
        async with (
            running_service(env) as service,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}", timeout=10) as client,
        ):
            retried = await xadd(redis_client, stream_key, raw_payload("ann@example.org"))
            dead = await xadd(redis_client, stream_key, raw_payload("gone@example.org"))
            await redis_client.xadd(stream_key, {"type": "send_email"})  # malformed: no payload
            response = await client.post(
                "/api/v1/internal/deliveries",
                json=raw_payload("bob@example.org"),
                headers={"Idempotency-Key": new_key("http")},
            )
            assert response.status_code == 202, response.text
            assert (await db.wait_status(retried))["status"] == "sent"
            assert (await db.wait_status(dead))["status"] == "dead_lettered"
            try:
                await wait_until(condition(lambda: not missing(receiver)), timeout=30, what="the queried metrics")
            except AssertionError:
                pytest.fail(f"queried but not exported within 30 s: {sorted(missing(receiver))}")
    export = Export(receiver)

    assert sorted(used_names() - export.series - EXPECTED_LATER) == [], "queried but never exported"
    assert sorted(EXPECTED_LATER & export.series) == [], "exported now: remove it from EXPECTED_LATER"
    assert sorted(EXPECTED_LATER - used_names()) == [], "no longer queried: remove it from EXPECTED_LATER"

    # the other direction: an exported metric no panel shows is one on-call cannot see
    on_dashboard = {selector.metric for query in dashboard_queries(DASHBOARD) for selector in query.selectors()}
    unshown = {family for family, series in export.families.items() if not series & on_dashboard}
    assert sorted(unshown - NOT_ON_THE_DASHBOARD_YET) == [], "exported but on no panel of the dashboard"

    # label names: a matcher names a label its metric carries; by/on name a label some queried metric has
    for query in queries():
        for selector in query.selectors():
            if selector.metric in EXPECTED_LATER:
                continue
            unknown = selector.labels - export.labels[selector.metric] - {"__name__"}
            assert not unknown, f"{query.where}: {selector.metric} has no label {sorted(unknown)}"
        known = set().union(*(export.labels.get(s.metric, set()) for s in query.selectors()))
        unknown_grouping = query.grouping_labels() - known
        if not all(s.metric in EXPECTED_LATER for s in query.selectors()):
            assert not unknown_grouping, f"{query.where}: groups by unknown labels {sorted(unknown_grouping)}"
