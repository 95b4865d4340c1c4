"""How fast the system came back: recovery after each fault, and how long replicas were down.

Pure functions of the recorded facts, beside the reconciliation.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from typing import Any

from bench.chaos.facts import TAKEN, Facts


def availability(facts: Facts) -> dict[str, Any]:
    """How long, during the fault phase, no replica (or only one) was up and answering."""
    if not facts.faults:
        return {}
    start, end = min(f.started for f in facts.faults), max(f.ended for f in facts.faults)
    changes = sorted(
        [(e.ready_at, 1) for e in facts.exits if e.ready_at is not None]
        + [(e.at, -1) for e in facts.exits if e.ready_at is not None]
    )
    up, last = 0, start
    seconds: dict[int, float] = defaultdict(float)
    for at, step in changes:
        if at >= end:
            break
        if at > start:
            seconds[min(up, 3)] += at - last
            last = at
        up += step
    seconds[min(up, 3)] += end - last
    return {f"{n}_up_s": round(seconds[n], 1) for n in range(4)}


def recovery(facts: Facts) -> dict[str, Any]:
    """Per fault, the time from its end (what it broke is back) until the sink took a message of a
    command first submitted after that end: the whole path — intake, acceptance, claim, SMTP — works
    again. The max over the faults, and per kind; faults after which nothing was submitted are
    not measured."""
    submitted: dict[str, float] = {}
    for xadd in facts.xadds:
        if xadd.entry_id is not None:
            submitted[xadd.chaos_id] = min(xadd.at, submitted.get(xadd.chaos_id, xadd.at))
    for result in facts.http:
        submitted[result.chaos_id] = min(result.first_at, submitted.get(result.chaos_id, result.first_at))
    taken = sorted((r.at, submitted.get(r.chaos_id or "", float("inf"))) for r in facts.sink if r.verdict in TAKEN)
    times = [at for at, _ in taken]
    by_kind: dict[str, float] = {}
    worst: dict[str, Any] | None = None
    unmeasured = 0
    for fault in facts.faults:
        seconds = None
        for index in range(bisect.bisect_right(times, fault.ended), len(taken)):
            at, sent = taken[index]
            if sent > fault.ended:
                seconds = at - fault.ended
                break
        if seconds is None:
            unmeasured += 1
            continue
        by_kind[fault.kind] = max(seconds, by_kind.get(fault.kind, 0.0))
        if worst is None or seconds > worst["seconds"]:
            worst = {"seconds": round(seconds, 3), "kind": fault.kind, "target": fault.target, "ended": fault.ended}
    return {
        "definition": "fault end (what it broke is back) → the sink takes a message of a command submitted after it",
        "max_s": None if worst is None else worst["seconds"],
        "worst": worst,
        "max_s_by_kind": {kind: round(s, 3) for kind, s in sorted(by_kind.items())},
        "unmeasured_faults": unmeasured,
    }
