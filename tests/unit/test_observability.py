"""deploy/observability: the collector's Prometheus exporter, Prometheus, Grafana and the alert rules
fit together, and `promtool` accepts and unit-tests the rules.

`promtool` comes from Debian's `prometheus` package, fetched into `.tools-cache/` when it is not
installed (tests/support/debian_tools.py); where it cannot be had, its tests skip with one line.
That every metric named here is one mailsvc exports is checked against a live service in
tests/integration/test_observability_metrics.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.debian_tools import ToolUnavailable, promtool
from tests.support.promql_names import dashboard_queries, rule_queries

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OBSERVABILITY = DEPLOY / "observability"
ALERTS = OBSERVABILITY / "alerts.yaml"
ALERT_TESTS = OBSERVABILITY / "alerts.test.yaml"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"
PROMETHEUS_CONFIG = OBSERVABILITY / "prometheus.yml"
RUNBOOK = DEPLOY / "RUNBOOK.md"
TOOLS_CACHE = REPO / ".tools-cache"
SEVERITIES = {"page", "ticket"}


def load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict), path
    return document


def compose_service(name: str) -> dict[str, Any]:
    service = load(DEPLOY / "docker-compose.yml")["services"][name]
    assert isinstance(service, dict)
    return service


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """A compose service's bind mounts: container path → file in the repository."""
    found = {}
    for volume in service.get("volumes") or []:
        source, target, *_ = str(volume).split(":")
        if source.startswith("."):
            found[target] = (DEPLOY / source).resolve()
    return found


def alerts() -> list[dict[str, Any]]:
    return [rule for group in load(ALERTS)["groups"] for rule in group["rules"] if "alert" in rule]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def run(command: list[str | Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="session")
def promtool_bin() -> Path:
    try:
        return promtool(TOOLS_CACHE)
    except ToolUnavailable as exc:
        pytest.skip(f"promtool unavailable (Debian's prometheus package): {exc}")


# --------------------------------------------------------------------------------------------
# the collector, Prometheus and Grafana fit together


def test_collector_serves_the_metrics_for_prometheus() -> None:
    config = load(DEPLOY / "otel-collector.yaml")
    exporter = config["exporters"]["prometheus"]
    # tests/support/prometheus_names.py ports exactly this naming: suffixes on, no namespace
    assert exporter["add_metric_suffixes"] is True
    assert not exporter.get("namespace")
    assert exporter["endpoint"].endswith(":8889")
    assert exporter["resource_to_telemetry_conversion"]["enabled"] is False
    assert set(config["service"]["pipelines"]["metrics"]["exporters"]) == {"debug", "prometheus"}
    assert compose_service("otel-collector")["image"] == "otel/opentelemetry-collector-contrib:0.111.0", (
        "the naming port matches 0.111.0: re-check tests/support/prometheus_names.py before moving the tag"
    )


def test_prometheus_scrapes_the_collector_and_evaluates_the_rules() -> None:
    config = load(PROMETHEUS_CONFIG)
    (job,) = config["scrape_configs"]
    assert job["honor_labels"] is True, "job/instance must stay the replicas', not the collector's"
    (static,) = job["static_configs"]
    assert static["targets"] == ["otel-collector:8889"]
    prometheus = compose_service("prometheus")
    files = mounts(prometheus)
    assert files["/etc/prometheus/prometheus.yml"] == PROMETHEUS_CONFIG
    assert [files[path] for path in config["rule_files"]] == [ALERTS]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


@pytest.mark.parametrize("service", ["otel-collector", "prometheus", "grafana"])
def test_compose_mounts_only_files_that_exist(service: str) -> None:
    for target, source in mounts(compose_service(service)).items():
        assert source.is_file(), f"{service}: {target} is mounted from {source}, which does not exist"


def test_grafana_provisions_the_datasource_and_the_dashboard() -> None:
    grafana = compose_service("grafana")
    files = mounts(grafana)
    provisioned = {
        target: load(source) for target, source in files.items() if target.startswith("/etc/grafana/provisioning/")
    }
    datasources = [d for p in provisioned.values() for d in p.get("datasources", [])]
    providers = [d for p in provisioned.values() for d in p.get("providers", [])]
    (datasource,) = datasources
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    (provider,) = providers
    dashboard_files = [target for target, source in files.items() if source == DASHBOARD]
    assert [str(Path(f).parent) for f in dashboard_files] == [provider["options"]["path"]]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home in dashboard_files
    # every panel and target queries that datasource
    uids = {datasource["uid"]}
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] in uids, panel["title"]
        assert all(t["datasource"]["uid"] in uids for t in panel["targets"]), panel["title"]


# --------------------------------------------------------------------------------------------
# the dashboard


def panels() -> list[dict[str, Any]]:
    return list(json.loads(DASHBOARD.read_text())["panels"])


def test_dashboard_is_rows_of_panels_that_do_not_overlap() -> None:
    all_panels = panels()
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    assert all_panels[0]["type"] == "row"
    taken: set[tuple[int, int]] = set()
    for panel in all_panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        columns, lines = range(grid["x"], grid["x"] + grid["w"]), range(grid["y"], grid["y"] + grid["h"])
        cells = {(x, y) for x in columns for y in lines}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel.get("description"), f"{panel['title']}: say what the panel answers"


def test_dashboard_answers_the_on_call_questions() -> None:
    rows = [p["title"].lower() for p in panels() if p["type"] == "row"]
    for topic in ["intake", "attempts", "backlog", "dead letters", "retention", "http"]:
        assert any(topic in row for row in rows), f"no row about {topic}: {rows}"


@pytest.mark.parametrize("query", dashboard_queries(DASHBOARD) + rule_queries(ALERTS), ids=lambda q: q.where)
def test_every_query_is_promql_over_named_metrics(query: Any) -> None:
    assert query.selectors(), f"{query.where} selects no metric"


# --------------------------------------------------------------------------------------------
# the alert rules


def runbook_sections() -> dict[str, str]:
    """Anchor → section text of every `## ` heading of the runbook."""
    sections: dict[str, str] = {}
    anchor = None
    for line in RUNBOOK.read_text().splitlines():
        if line.startswith("## "):
            anchor = github_anchor(line[3:])
            sections[anchor] = ""
        elif anchor is not None:
            sections[anchor] += line + "\n"
    return sections


def test_every_alert_pages_or_tickets_and_links_its_runbook_section() -> None:
    sections = runbook_sections()
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names))
    assert {
        "MailsvcConsumerStalled",
        "MailsvcDueBacklogHigh",
        "MailsvcDeadLetterRateHigh",
        "MailsvcAmbiguousAttemptsHigh",
        "MailsvcRetentionFailing",
    } <= set(names)
    for rule in alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule.get("for"), f"{name}: a `for` so one scrape never pages"
        annotations = rule["annotations"]
        assert annotations["summary"], name
        assert annotations["description"], name
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert path == "deploy/RUNBOOK.md", name
        assert anchor in sections, f"{name}: RUNBOOK.md has no section #{anchor}"
        section = sections[anchor]
        for part in ["**What it means.**", "**Confirm.**", "**What to do.**", "**It is over when**"]:
            assert part in section, f"RUNBOOK.md#{anchor} lacks {part}"


def rules_with_comments() -> Iterator[tuple[str, str]]:
    """(alert name, the comment lines above its expression) from the rule file's text."""
    text = ALERTS.read_text()
    for match in re.finditer(r"- alert: (\w+)\n((?:\s*#.*\n)+)", text):
        yield match.group(1), match.group(2)


def test_every_threshold_says_why() -> None:
    commented = dict(rules_with_comments())
    for rule in alerts():
        assert "Why" in commented.get(rule["alert"], ""), f"{rule['alert']}: write why its threshold is what it is"


def test_promtool_checks_the_rules(promtool_bin: Path) -> None:
    result = run([promtool_bin, "check", "rules", ALERTS], OBSERVABILITY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_promtool_unit_tests_pass_and_make_every_alert_fire(promtool_bin: Path) -> None:
    fired = {
        case["alertname"]
        for test in load(ALERT_TESTS)["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert {rule["alert"] for rule in alerts()} <= fired, "every alert has a synthetic case where it fires"
    result = run([promtool_bin, "test", "rules", ALERT_TESTS], OBSERVABILITY)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_checks_the_prometheus_config(promtool_bin: Path, tmp_path: Path) -> None:
    # the config names the rule file where the container mounts it: point a copy at the repository's
    config = load(PROMETHEUS_CONFIG)
    config["rule_files"] = [str(ALERTS)]
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(config))
    result = run([promtool_bin, "check", "config", copy], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
