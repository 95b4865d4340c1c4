"""The chaos report: one JSON document (stdout, and `report.json` in the work folder) and one
summary line (stderr) with the figures a platform team asks for."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.chaos.reconcile import HEADLINE, Reconciliation
from bench.chaos.schedule import Fault, counts, schedule_digest
from bench.report import git_state

if TYPE_CHECKING:
    from bench.chaos.run import ChaosOptions


def document(
    options: ChaosOptions, schedule: list[Fault], result: Reconciliation, *, started_at: float, folder: Path,
    extra: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    plan = options.plan
    return {
        "tool": "mailsvc bench chaos",
        "format": 1,
        "seed": plan.seed,
        "replay": f"mailsvc bench chaos --seed {plan.seed} --chaos-minutes {plan.seconds / 60:g} --kills {plan.kills} "
        f"--sigterms {plan.sigterms} --pg-restarts {plan.pg_restarts} --redis-restarts {plan.redis_restarts} "
        f"--net-faults {plan.net_each}",
        "plan": asdict(plan),
        "schedule": {"digest": schedule_digest(schedule), "faults": counts(schedule)},
        "load": {
            "stream_rate": options.stream_rate,
            "http_clients": options.http_clients,
            "http_rate_per_client": options.http_rate,
        },
        "started_at": started_at,
        "duration_s": round(time.time() - started_at, 1),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "load_average": os.getloadavg()},
        "git": git_state(),
        "work_folder": str(folder),
        **extra,
        "result": result.as_dict(),
    }


def reconcile_again(folder: Path) -> tuple[int, dict[str, Any]]:
    """A kept run's facts through today's reconciliation: the same run, judged again (e.g. after
    a false alarm of the reconciliation itself was fixed). The first verdict stays in the document."""
    from bench.chaos.facts import facts_from_json
    from bench.chaos.reconcile import reconcile

    first = json.loads((folder / "report.json").read_text())
    result = reconcile(facts_from_json(json.loads((folder / "facts.json").read_text())))
    doc = {**first, "result": result.as_dict(), "reconciled_again_at": time.time(), "git_reconciled": git_state()}
    doc["first_result"] = {name: first["result"][name] for name in ("passed", *HEADLINE, "violations")}
    (folder / "report-reconciled.json").write_text(json.dumps(doc, indent=2, default=str))
    print(f"chaos: first verdict: {summary_line(first)}", file=sys.stderr)
    print(f"chaos: reconciled again: {summary_line(doc)}", file=sys.stderr)
    return (0 if result.passed else 1), doc


def _pairs(mapping: dict[str, int]) -> str:
    return ",".join(f"{name}:{count}" for name, count in sorted(mapping.items())) or "none"


def summary_line(doc: dict[str, Any]) -> str:
    result = doc["result"]
    c = result["counts"]
    recovery = result["recovery"]["max_s"]
    verdict = "PASS" if result["passed"] else "FAIL(" + ",".join(sorted(result["violations"])) + ")"
    by_door = c["acknowledged_by_door"]
    return (
        f"seed={doc['seed']} minutes={doc['plan']['seconds'] / 60:g} commands={c['commands']} "
        f"acknowledged={c['acknowledged']} (stream {by_door.get('stream', 0)}, http {by_door.get('http', 0)}) "
        f"kills={_pairs(c['kills'])} faults={_pairs(c['faults'])} "
        + " ".join(f"{name}={result[name]}" for name in HEADLINE)
        + f" explained_duplicates={result['explained_duplicates']} lost_by_redis={c['lost_by_redis']} "
        f"max_recovery_s={recovery if recovery is not None else 'n/a'} {verdict}"
    )
