"""The output: one JSON document on stdout (to keep and compare) and a table on stderr (to read)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

import mailsvc
from bench.stats import median_figures

_PACKAGES = ("mailsvc", "aiosmtplib", "asyncpg", "redis", "sqlalchemy", "starlette", "uvicorn", "uvloop", "orjson",
             "aiosmtpd", "httpx")  # fmt: skip


@dataclass(frozen=True)
class Target:
    figure: str
    op: str  # ">=" or "<=" (on the absolute value when `absolute`)
    value: float
    absolute: bool = False

    def met(self, measured: float) -> bool:
        measured = abs(measured) if self.absolute else measured
        return measured >= self.value if self.op == ">=" else measured <= self.value

    def __str__(self) -> str:
        return f"{'|x| ' if self.absolute else ''}{self.op} {self.value:g}"


# SPEC §10, on a 2-core machine
TARGETS: dict[str, list[Target]] = {
    "acceptance": [Target("commands_per_s", ">=", 5000)],
    "e2e": [Target("ratio_to_raw", ">=", 0.25), Target("cpu_ms_per_delivery", "<=", 0.5)],
    "events": [Target("ratio", ">=", 0.9), Target("publish_lag_p99_ms", "<=", 1000)],
    "latency": [Target("p50_ms", "<=", 25), Target("p99_ms", "<=", 100), Target("publish_lag_p99_ms", "<=", 1000)],
    "http": [Target("requests_per_s", ">=", 1000), Target("p99_ms", "<=", 50)],
    # SPEC §2: a backlog of large commands delays HTTP requests by no more than a few tens of ms
    "http-backlog": [Target("p99_ms", "<=", 50)],
    "soak": [Target("rss_drift_after_warmup_pct", "<=", 10, absolute=True)],
    "scaleout": [Target("ratio", ">=", 1.5)],
}
SHOWN: dict[str, tuple[str, ...]] = {
    "acceptance": ("commands_per_s", "seconds"),
    "e2e": ("deliveries_per_s", "raw_messages_per_s", "ratio_to_raw", "service_cpu_ms_per_delivery",
            "postgres_cpu_ms_per_delivery", "postgres_run_db_cpu_ms_per_delivery", "cpu_ms_per_delivery",
            "wal_bytes_per_delivery"),
    "scaleout": ("one_replica_per_s", "two_replicas_per_s", "ratio", "one_replica_cpu_ms_per_delivery",
                 "two_replicas_cpu_ms_per_delivery"),
    "events": ("events_on_per_s", "events_off_per_s", "ratio", "events_on_cpu_ms_per_delivery",
               "events_off_cpu_ms_per_delivery", "publish_lag_p50_ms", "publish_lag_p99_ms"),
    "latency": ("rate", "p50_ms", "p90_ms", "p99_ms", "max_ms", "publish_lag_p50_ms", "publish_lag_p99_ms"),
    "http": ("requests_per_s", "p50_ms", "p99_ms", "max_ms", "errors"),
    "http-backlog": ("rate", "requests", "p50_ms", "p99_ms", "max_ms", "errors", "backlog_commands_per_s",
                     "backlog_seconds"),
    "soak": ("rate", "rss_first_mb", "rss_last_mb", "rss_max_mb", "rss_drift_pct", "rss_drift_after_warmup_pct",
             "lag_at_end"),
}  # fmt: skip


def versions(servers: dict[str, str]) -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in _PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return {**found, **servers}


def git_state() -> dict[str, Any] | None:
    """The checkout the service ran from, when it is one (read-only git commands)."""
    root = Path(mailsvc.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(dirty)}


def machine(load_at_start: tuple[float, ...]) -> dict[str, Any]:
    """The machine, and how busy it was: these figures are only comparable on a quiet one."""
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "load_average_at_start": [round(x, 2) for x in load_at_start],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def _rounded(figures: dict[str, float]) -> dict[str, float]:
    return {name: round(value, 4) if isinstance(value, float) else value for name, value in figures.items()}


def summarize_scenario(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    for run in runs:
        if "figures" in run:
            run["figures"] = _rounded(run["figures"])
    good = [run["figures"] for run in runs if "figures" in run]
    median = _rounded(median_figures(good))
    targets = [
        {"figure": t.figure, "target": str(t), "median": median[t.figure], "met": t.met(median[t.figure])}
        for t in TARGETS.get(name, [])
        if t.figure in median
    ]
    return {"median": median, "targets": targets, "runs": runs, "failed_runs": len(runs) - len(good)}


def _number(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def print_table(scenarios: dict[str, dict[str, Any]], out: TextIO = sys.stderr) -> None:
    rows = [("scenario", "figure", "median", "runs", "target")]
    for name, summary in scenarios.items():
        targets = {t.figure: t for t in TARGETS.get(name, [])}
        for figure in SHOWN.get(name, tuple(summary["median"])):
            if figure not in summary["median"]:
                continue
            value = summary["median"][figure]
            each = " ".join(_number(run["figures"][figure]) for run in summary["runs"] if "figures" in run)
            target = targets.get(figure)
            verdict = f"{target} {'ok' if target.met(value) else 'MISSED'}" if target else ""
            rows.append((name, figure, _number(value), each if len(summary["runs"]) > 1 else "", verdict))
        for run in summary["runs"]:
            if "error" in run:
                rows.append((name, "error", "", "", run["error"].splitlines()[0][:100]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), file=out)
        if index == 0:
            print("  ".join("-" * width for width in widths), file=out)


def summary_line(scenarios: dict[str, dict[str, Any]]) -> str | None:
    """One line with what decides capacity: e2e rate, ratio to raw, CPU and WAL per delivery."""
    median = scenarios.get("e2e", {}).get("median", {})
    if "deliveries_per_s" not in median:
        return None
    rate = f"e2e {_number(median['deliveries_per_s'])}/s"
    if "ratio_to_raw" in median:
        rate += f" = {median['ratio_to_raw']:.2f} x raw ({_number(median['raw_messages_per_s'])}/s)"
    parts = [rate]
    if "service_cpu_ms_per_delivery" in median:
        cpu = f"CPU/delivery service {median['service_cpu_ms_per_delivery']:.3f} ms"
        if "postgres_cpu_ms_per_delivery" in median:
            cpu += (f" + PostgreSQL {median['postgres_cpu_ms_per_delivery']:.3f} ms"
                    f" (run database {median['postgres_run_db_cpu_ms_per_delivery']:.3f})"
                    f" = {median['cpu_ms_per_delivery']:.3f} ms")  # fmt: skip
        parts.append(cpu)
    if "wal_bytes_per_delivery" in median:
        parts.append(f"WAL {_number(median['wal_bytes_per_delivery'])} B/delivery")
    return "summary: " + "; ".join(parts)


def emit(document: dict[str, Any]) -> None:
    print_table(document["scenarios"])
    line = summary_line(document["scenarios"])
    if line:
        print(line, file=sys.stderr)
    for note in document.get("notes", []):
        print(f"note: {note}", file=sys.stderr)
    json.dump(document, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()
