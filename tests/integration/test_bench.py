"""`mailsvc bench` at tiny sizes, so it cannot rot: every scenario runs against the real servers and
reports its figures. No assertion on the values themselves: this machine is shared and noisy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.postfix import PostfixUnavailable, prepare_smtp_sink
from tests.support.infra import PostgresServer

REPO = Path(__file__).resolve().parents[2]
TINY = ["-n", "200", "--rate", "50", "--duration", "2", "--clients", "4", "--minutes", "0.05",
        "--backlog", "40", "--backlog-kib", "64", "--backlog-rate", "20"]  # fmt: skip
EXPECTED = {
    "acceptance": ("commands_per_s", "seconds"),
    "e2e": ("deliveries_per_s", "raw_messages_per_s", "ratio_to_raw"),
    "events": ("off_per_s", "on_per_s", "ratio", "publish_lag_p50_ms", "publish_lag_p99_ms"),
    "scaleout": ("one_replica_per_s", "two_replicas_per_s", "ratio"),
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
def python_sink_run(pg: PostgresServer, redis_addr: str) -> dict[str, Any]:
    return run_bench(pg, redis_addr, "all", "--sink", "python", *TINY)


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
