"""`mailsvc bench` at tiny sizes, so it cannot rot: every scenario runs against the real servers and
reports its figures. No assertion on the values themselves: this machine is shared and noisy."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from bench.postfix import PostfixUnavailable, prepare_smtp_sink
from bench.report import SHOWN
from bench.service import ServiceOptions, service_env
from tests.support.infra import PostgresServer

REPO = Path(__file__).resolve().parents[2]
TINY = ["-n", "200", "--rate", "50", "--duration", "2", "--clients", "4", "--minutes", "0.05",
        "--backlog", "40", "--backlog-kib", "64", "--backlog-rate", "20"]  # fmt: skip
EXPECTED = {
    "acceptance": ("commands_per_s", "seconds"),
    "e2e": (
        "deliveries_per_s",
        "raw_messages_per_s",
        "ratio_to_raw",
        "service_cpu_ms_per_delivery",
        "postgres_cpu_ms_per_delivery",
        "cpu_ms_per_delivery",
        "wal_bytes_per_delivery",
    ),
    "scaleout": (
        "one_replica_per_s",
        "two_replicas_per_s",
        "ratio",
        "one_replica_cpu_ms_per_delivery",
        "two_replicas_cpu_ms_per_delivery",
        "two_replicas_wal_bytes_per_delivery",
    ),
    "events": (
        "events_on_per_s",
        "events_off_per_s",
        "ratio",
        "events_on_cpu_ms_per_delivery",
        "events_off_cpu_ms_per_delivery",
        "publish_lag_p50_ms",
        "publish_lag_p99_ms",
    ),
    "latency": ("rate", "p50_ms", "p90_ms", "p99_ms", "max_ms"),
    "http": ("requests_per_s", "p50_ms", "p99_ms", "max_ms"),
    "http-backlog": ("rate", "requests", "p50_ms", "p99_ms", "max_ms", "backlog_commands_per_s"),
    "soak": ("rss_first_mb", "rss_last_mb", "rss_max_mb", "delivered"),
}


def run_bench(pg: PostgresServer, redis_addr: str, *args: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "mailsvc", "bench", *args]
    command += ["--postgres-dsn", pg.admin_dsn, "--redis-addr", redis_addr]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "scenario" in done.stderr  # the human table
    document: dict[str, Any] = json.loads(done.stdout)
    return document


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench-report")


@pytest.fixture(scope="module")
def python_sink_run(pg: PostgresServer, redis_addr: str, report_dir: Path) -> dict[str, Any]:
    return run_bench(pg, redis_addr, "all", "--sink", "python", "--report", str(report_dir), *TINY)


def test_document_describes_the_run(python_sink_run: dict[str, Any]) -> None:
    doc = python_sink_run
    assert doc["machine"]["cpu_count"] >= 1
    for name in ("python", "mailsvc", "aiosmtplib", "asyncpg", "redis", "postgresql_server", "redis_server"):
        assert doc["versions"][name]
    assert doc["sink"] == {"requested": "python", "used": ["python"]}
    assert doc["settings"]["count"] == 200
    assert set(doc["scenarios"]) == set(EXPECTED)


@pytest.mark.parametrize("scenario", list(EXPECTED))
def test_each_scenario_reports_positive_figures(python_sink_run: dict[str, Any], scenario: str) -> None:
    result = python_sink_run["scenarios"][scenario]
    assert result["failed_runs"] == 0, result["runs"]
    (run,) = result["runs"]
    for figure in EXPECTED[scenario]:
        assert run["figures"][figure] > 0, (figure, run)
        assert result["median"][figure] == run["figures"][figure]
    for service in run["details"].get("services", []):
        assert service["exit_code"] == 0, service


def test_postfix_sink_e2e(pg: PostgresServer, redis_addr: str) -> None:
    try:
        prepare_smtp_sink(REPO / ".bench-cache")
    except PostfixUnavailable as exc:
        pytest.skip(f"postfix smtp-sink unavailable: {exc}")
    doc = run_bench(pg, redis_addr, "e2e", "--sink", "postfix", "-n", "300")
    assert doc["sink"]["used"] == ["postfix"]
    (run,) = doc["scenarios"]["e2e"]["runs"]
    assert run["details"]["rows"]["sent"] == 300
    for figure in EXPECTED["e2e"]:
        assert run["figures"][figure] > 0


def test_e2e_reports_cpu_by_process_and_wal(python_sink_run: dict[str, Any]) -> None:
    summary = python_sink_run["scenarios"]["e2e"]
    (run,) = summary["runs"]
    figures, cpu = run["figures"], run["details"]["cpu"]
    assert cpu["postmaster_pid"] > 0
    assert "problems" not in cpu, cpu
    assert figures["postgres_run_db_cpu_ms_per_delivery"] >= 0
    parts = cpu["cpu_ms_per_delivery_by_process"]
    assert set(parts) == {"service #1", "postgres: run database backends", "postgres: rest of the cluster"}
    assert sum(parts.values()) == pytest.approx(figures["cpu_ms_per_delivery"], abs=0.01)
    assert {t["figure"] for t in summary["targets"]} == {"ratio_to_raw", "cpu_ms_per_delivery"}
    timeline = run["details"]["sink_timeline"]
    assert timeline[-1][1] == figures["count"]
    assert [n for _, n in timeline] == sorted(n for _, n in timeline)


def test_events_runs_off_on_on_off(python_sink_run: dict[str, Any]) -> None:
    """ABBA: drift through the invocation weighs on both sides alike; each run delivered the backlog."""
    (run,) = python_sink_run["scenarios"]["events"]["runs"]
    assert run["details"]["order"] == ["off", "on", "on", "off"]
    assert [each["rows"]["sent"] for each in run["details"]["runs"]] == [200] * 4
    figures = run["figures"]
    # the report rounds each figure (4 significant digits)
    assert figures["ratio"] == pytest.approx(figures["events_on_per_s"] / figures["events_off_per_s"], rel=1e-3)


def test_events_off_empties_the_event_stream_for_the_service() -> None:
    where = {"dsn": "postgresql://x/y", "redis_addr": "r:1", "redis_password": "", "stream": "s", "sink_port": 1,
             "http_port": 2}  # fmt: skip
    assert service_env(ServiceOptions(events=False), **where)["MAIL_REDIS_EVENT_STREAM"] == ""
    # on: each run publishes to its own event stream beside its command stream (deleted with it)
    where["stream"] = "mailsvc-bench:t:commands"
    assert service_env(ServiceOptions(), **where)["MAIL_REDIS_EVENT_STREAM"] == "mailsvc-bench:t:events"


def test_report_writes_a_self_contained_page_beside_the_json(python_sink_run: dict[str, Any], report_dir: Path) -> None:
    (json_path,) = report_dir.glob("bench-*.json")
    (html_path,) = report_dir.glob("bench-*.html")
    assert json_path.stem == html_path.stem
    assert json.loads(json_path.read_text()) == python_sink_run
    page = html_path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert "<script" not in page.lower()
    assert "<link" not in page.lower()
    svgs = re.findall(r"<svg.*?</svg>", page, re.DOTALL)
    assert len(svgs) == 3  # throughput over time, latency distribution, CPU per delivery by process
    for svg in svgs:
        ElementTree.fromstring(svg)  # well-formed
    for title in ("throughput at the sink over time", "latency distribution", "CPU per delivery by process"):
        assert f"<title>{title}</title>" in page
    e2e = python_sink_run["scenarios"]["e2e"]["runs"][0]
    assert "<polyline" in svgs[0]
    assert "<rect" in svgs[1]
    for process, value in e2e["details"]["cpu"]["cpu_ms_per_delivery_by_process"].items():
        assert f"{process}</text>" in svgs[2]
        assert f"{value:.3f} ms" in svgs[2]
    for name, summary in python_sink_run["scenarios"].items():
        for figure in SHOWN[name]:
            if figure in summary["median"]:
                assert f"<td>{name}</td><td>{figure}</td>" in page, figure
    assert "summary: e2e " in page
