"""The metric and label names the dashboard and the alert rules query, read with a PromQL parser.

Grafana expressions carry Grafana's own variables: durations (`$__rate_interval`) are replaced by a
plain duration before parsing; `$job`-style variables only ever stand inside label values, which
are strings to PromQL. A variable query `label_values(metric{...}, label)` selects `metric` too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser
import yaml

GRAFANA_DURATIONS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}
_LABEL_VALUES = re.compile(r"^\s*label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\s*\)\s*$")


@dataclass(frozen=True)
class Selector:
    """One vector selector of a query: the metric name and the label names it matches on."""

    metric: str
    labels: frozenset[str]


@dataclass(frozen=True)
class Query:
    where: str  # "dashboard panel 'Due backlog'", "rule MailsvcConsumerStalled"
    expr: str

    def parsed(self) -> promql_parser.Expr:
        text = self.expr
        for variable, duration in GRAFANA_DURATIONS.items():
            text = text.replace(variable, duration)
        try:
            return promql_parser.parse(text)
        except ValueError as exc:
            raise AssertionError(f"{self.where}: not PromQL: {exc}\n{self.expr}") from None

    def selectors(self) -> list[Selector]:
        found: list[Selector] = []

        def visit(node: promql_parser.Expr) -> None:
            if isinstance(node, promql_parser.VectorSelector):
                assert node.name, f"{self.where}: a selector without a metric name: {self.expr}"
                found.append(Selector(node.name, frozenset(m.name for m in node.matchers.matchers)))

        promql_parser.walk(self.parsed(), visit)
        return found

    def grouping_labels(self) -> set[str]:
        """Labels named by `by (...)`, `without (...)`, `on (...)`, `ignoring (...)`."""
        labels: set[str] = set()

        def visit(node: promql_parser.Expr) -> None:
            if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
                labels.update(node.modifier.labels)
            matching = node.modifier.matching if isinstance(node, promql_parser.BinaryExpr) and node.modifier else None
            if matching is not None:
                labels.update(matching.labels)

        promql_parser.walk(self.parsed(), visit)
        return labels


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])  # a collapsed row holds its panels


def dashboard_queries(path: Path) -> list[Query]:
    dashboard = json.loads(path.read_text())
    queries = [
        Query(f"dashboard panel {panel.get('title')!r}", target["expr"])
        for panel in _panels(dashboard["panels"])
        for target in panel.get("targets") or []
        if target.get("expr")
    ]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        text = query.get("query") if isinstance(query, dict) else query
        match = _LABEL_VALUES.match(text or "")
        if match and match["selector"]:
            queries.append(Query(f"dashboard variable ${variable['name']}", match["selector"]))
    return queries


def rule_queries(path: Path) -> list[Query]:
    document = yaml.safe_load(path.read_text())
    return [
        Query(f"rule {rule.get('alert') or rule.get('record')}", rule["expr"])
        for group in document["groups"]
        for rule in group["rules"]
    ]
