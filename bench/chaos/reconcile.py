"""The reconciliation: a pure function from what a chaos run recorded to what went wrong.

Acknowledged means: HTTP answered 2xx, or the stream offset moved past the entry. Redis restarted
without persistence recreates the stream, so the stream has epochs: entry E of epoch N is
acknowledged when it is at or before epoch N's final stored offset — the `from_offset` of the
reset the consumer recorded after that restart (for the last epoch, the offset stored at the end).
Entries of an epoch beyond its final offset were lost by Redis itself before we read them: never
acknowledged by us, counted apart (`lost_by_redis`).

- `lost`: an acknowledged command without its outcome (a delivery, or for a malformed entry one
  malformed record).
- `double_accepted`: a command, or an idempotency key, with more than one delivery.
- `unexplained_duplicates`: a `Message-ID` the sink took more often than once plus the number of
  ambiguous and abandoned attempts its delivery recorded (each such attempt may have reached the
  server without us knowing; nothing else may). Explained ones are counted.

Every other broken promise is a named violation (deliveries for nothing submitted, deliveries left
non-terminal, malformed entries recorded twice, replicas that died on their own, …).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from bench.chaos.facts import TAKEN, Command, DeliveryRow, Facts, Xadd
from bench.chaos.recovery import availability, recovery

TERMINAL = frozenset({"sent", "dead_lettered", "suppressed", "cancelled", "superseded"})
HEADLINE = ("lost", "double_accepted", "unexplained_duplicates")
_EXAMPLES = 20
_KILLS = ("sigkill", "sigterm")
_BAD_EXITS = frozenset({"unexpected", "start_timeout", "sigterm_hung", "stop_hung"})


def parse_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass
class Findings:
    """Named problems, each with how many and a few examples."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, name: str, example: str) -> None:
        self.counts[name] += 1
        if len(self.examples[name]) < _EXAMPLES:
            self.examples[name].append(example)

    def as_dict(self) -> dict[str, Any]:
        return {name: {"count": n, "examples": self.examples[name]} for name, n in sorted(self.counts.items())}


@dataclass
class Reconciliation:
    lost: int
    double_accepted: int
    unexplained_duplicates: int
    explained_duplicates: int
    violations: dict[str, Any]
    anomalies: dict[str, Any]
    counts: dict[str, Any]
    recovery: dict[str, Any]

    @property
    def passed(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed, "lost": self.lost, "double_accepted": self.double_accepted,
            "unexplained_duplicates": self.unexplained_duplicates, "explained_duplicates": self.explained_duplicates,
            "violations": self.violations, "anomalies": self.anomalies, "counts": self.counts,
            "recovery": self.recovery,
        }  # fmt: skip


class _Stream:
    """Which XADDs were acknowledged, epoch by epoch."""

    def __init__(self, facts: Facts, anomalies: Findings) -> None:
        self.epochs = len(facts.wipes)
        resets = sorted((e for e in facts.stream_events if e.kind == "reset"), key=lambda e: e.at)
        used: set[int] = set()
        self.final: list[tuple[int, int] | None] = []
        for wipe in facts.wipes:
            found = next((i for i, e in enumerate(resets) if e.at > wipe and i not in used), None)
            if found is None:
                self.final.append(None)
                anomalies.add("epoch_end_unknown", f"no reset recorded after the Redis wipe at {wipe}")
            else:
                used.add(found)
                self.final.append(parse_id(resets[found].from_offset))
        self.final.append(parse_id(facts.final_offset) if facts.final_offset else None)
        for index, event in enumerate(resets):
            if index not in used:
                anomalies.add(
                    "spurious_reset", f"reset from {event.from_offset} at {event.at} with no restart before it"
                )
        for event in facts.stream_events:
            if event.kind == "gap":  # nothing here trims the stream: every gap is news
                anomalies.add("stream_gap", f"gap {event.from_offset} → {event.to_offset} at {event.at}")

    def status(self, xadd: Xadd) -> str:
        if xadd.entry_id is None:
            return "failed"
        if xadd.epoch is None or xadd.epoch >= len(self.final):
            return "uncertain"
        final = self.final[xadd.epoch]
        if final is None:
            return "uncertain" if xadd.epoch < self.epochs else "unconsumed"
        if parse_id(xadd.entry_id) <= final:
            return "acknowledged"
        return "lost_by_redis" if xadd.epoch < self.epochs else "unconsumed"


def reconcile(facts: Facts) -> Reconciliation:
    violations, anomalies = Findings(), Findings()
    stream = _Stream(facts, anomalies)
    commands = {c.chaos_id: c for c in facts.commands}
    by_chaos: dict[str, list[DeliveryRow]] = defaultdict(list)
    by_key: dict[tuple[str, str], list[DeliveryRow]] = defaultdict(list)
    for row in facts.deliveries:
        by_chaos[row.chaos_id or ""].append(row)
        by_key[(row.source, row.idempotency_key)].append(row)
    malformed = Counter(m.entry_id for m in facts.malformed)
    xadds: dict[str, list[tuple[Xadd, str]]] = defaultdict(list)
    statuses: Counter[str] = Counter()
    for xadd in facts.xadds:
        status = stream.status(xadd)
        statuses[status] += 1
        xadds[xadd.chaos_id].append((xadd, status))
    acked_commands: Counter[str] = Counter()

    # -- stream: keyed commands, judged per key (original, duplicates, conflicting reuses) ----
    groups: dict[str, list[Command]] = defaultdict(list)
    for command in facts.commands:
        if command.door == "stream" and command.key is not None:
            groups[command.key].append(command)
    for key, members in groups.items():
        _keyed_group(
            key, members, xadds=xadds, rows=by_key[("notification", key)], malformed=malformed,
            violations=violations, acked_commands=acked_commands,
        )  # fmt: skip
    # -- stream: keyless commands, one entry each ------------------------------------------
    for command in facts.commands:
        if command.door != "stream" or command.key is not None:
            continue
        for xadd, status in xadds[command.chaos_id]:
            if status != "acknowledged" or xadd.entry_id is None:
                continue
            acked_commands["stream"] += 1
            _keyless(command, xadd.entry_id, by_chaos[command.chaos_id], malformed, violations)
    # -- HTTP ------------------------------------------------------------------------------
    for result in facts.http:
        rows = by_chaos[result.chaos_id]
        if result.status is not None and 200 <= result.status < 300:
            acked_commands["http"] += 1
            if not rows:
                violations.add("lost", f"http {result.chaos_id}: answered {result.status}, no delivery")
            elif {row.delivery_id for row in rows} != set(result.delivery_ids) or len(rows) > 1:
                violations.add("http_answer_mismatch", f"http {result.chaos_id}: answered {result.delivery_ids}")
        elif result.status is not None:
            violations.add("http_rejected", f"http {result.chaos_id}: {result.status} for a well-formed request")
        else:
            anomalies.add("http_unanswered", f"http {result.chaos_id}: no answer after {result.tries} tries")
    # -- every delivery: submitted, one per command and key, terminal ----------------------
    for chaos_id, rows in by_chaos.items():
        submitted = commands.get(chaos_id)
        if submitted is None:
            for row in rows:
                violations.add("unsubmitted", f"delivery {row.delivery_id} (chaos tag {chaos_id!r})")
            continue
        if len(rows) > 1:
            violations.add("double_accepted", f"{chaos_id}: {len(rows)} deliveries")
        door_source = "auth" if submitted.door == "http" else "notification"
        for row in rows:
            if row.source != door_source:
                violations.add("unsubmitted", f"delivery {row.delivery_id}: source {row.source} for {chaos_id}")
    for (source, key), rows in by_key.items():
        if len(rows) > 1 and len({row.chaos_id for row in rows}) > 1:
            violations.add("double_accepted", f"{source} key {key!r}: {len(rows)} deliveries")
    for row in facts.deliveries:
        if row.status not in TERMINAL:
            violations.add("not_terminal", f"delivery {row.delivery_id} ({row.chaos_id}) is {row.status}")
    duplicates = _sink(facts, violations, anomalies)
    _exits(facts, violations)
    for crash in facts.crashes:
        violations.add("crash_in_log", f"{crash.log} {crash.at} {crash.event}: {crash.error}")
    if not facts.drained:
        violations.add("not_drained", "the system did not drain before the deadline")
    if statuses["unconsumed"]:
        violations.add("not_drained", f"{statuses['unconsumed']} entries of the last epoch never consumed")
    counts = _counts(facts, statuses, acked_commands, malformed, duplicates)
    return Reconciliation(
        lost=violations.counts["lost"],
        double_accepted=violations.counts["double_accepted"],
        unexplained_duplicates=violations.counts["unexplained_duplicate"],
        explained_duplicates=duplicates["explained"],
        violations=violations.as_dict(),
        anomalies=anomalies.as_dict(),
        counts=counts,
        recovery={**recovery(facts), "replicas": availability(facts)},
    )


def _position(xadd: Xadd) -> tuple[int, int, int] | None:
    if xadd.entry_id is None or xadd.epoch is None:
        return None
    return (xadd.epoch, *parse_id(xadd.entry_id))


def _keyed_group(
    key: str, members: list[Command], *, xadds: dict[str, list[tuple[Xadd, str]]], rows: list[DeliveryRow],
    malformed: Counter[str], violations: Findings, acked_commands: Counter[str],
) -> None:  # fmt: skip
    """One key: the first command to reach the consumer owns it (one delivery); an exact duplicate
    adds nothing; another command reusing the key is one malformed record (a conflict)."""
    ids = {c.chaos_id for c in members}
    acked = [(x, c) for c in members for x, status in xadds[c.chaos_id] if status == "acknowledged"]
    acked_commands["stream"] += len({c.chaos_id for _, c in acked})
    if not rows:
        if acked:
            violations.add("lost", f"stream key {key!r}: acknowledged ({acked[0][0].entry_id}), no delivery")
        return
    winner = rows[0].chaos_id
    if winner not in ids:
        violations.add("unsubmitted", f"delivery {rows[0].delivery_id} for key {key!r} carries {winner!r}")
        return
    for xadd, command in acked:
        assert xadd.entry_id is not None
        records = malformed[xadd.entry_id]
        if command.chaos_id == winner:
            if records:
                violations.add("unexpected_malformed", f"{command.chaos_id} ({xadd.entry_id}): {records} records")
        elif records == 0:
            violations.add("lost", f"{command.chaos_id} ({xadd.entry_id}): reuses key {key!r}, no malformed record")
        elif records > 1:
            violations.add("malformed_duplicated", f"{command.chaos_id} ({xadd.entry_id}): {records} records")
    # the owner must be the first to reach the consumer: no acknowledged reuse of its key may come
    # before its first entry — unless one of its XADDs went unanswered (a reply lost in a timeout:
    # that entry may well exist, anywhere before the failure), then nobody knows its first place
    mine = [_position(x) for x, _ in xadds[winner]]
    others = [p for x, c in acked if c.chaos_id != winner and (p := _position(x)) is not None]
    known = [p for p in mine if p is not None]
    if known and len(known) == len(mine) and others and min(others) < min(known):
        violations.add("lost", f"key {key!r}: an earlier acknowledged command was replaced by {winner}")


def _keyless(
    command: Command, entry_id: str, rows: list[DeliveryRow], malformed: Counter[str], violations: Findings
) -> None:
    records = malformed[entry_id]
    if command.expect == "deliver":
        if not rows:
            why = f"recorded malformed ({records})" if records else "no delivery"
            violations.add("lost", f"{command.chaos_id} ({entry_id}): {why}")
        elif any(row.idempotency_key != entry_id for row in rows):
            violations.add("unsubmitted", f"{command.chaos_id}: delivery keyed {rows[0].idempotency_key!r}")
        if rows and records:
            violations.add("unexpected_malformed", f"{command.chaos_id} ({entry_id}): also {records} records")
        return
    if rows:
        violations.add("malformed_delivered", f"{command.chaos_id} ({command.kind}, {entry_id}) became a delivery")
    if records == 0 and not rows:
        violations.add("lost", f"{command.chaos_id} ({command.kind}, {entry_id}): no malformed record")
    elif records > 1:
        violations.add("malformed_duplicated", f"{command.chaos_id} ({command.kind}, {entry_id}): {records} records")


def _sink(facts: Facts, violations: Findings, anomalies: Findings) -> Counter[str]:
    taken: Counter[str] = Counter()
    carried: dict[str, str | None] = {}
    for record in facts.sink:
        if record.verdict in TAKEN:
            taken[record.message_id] += 1
            carried[record.message_id] = record.chaos_id
    known = {row.message_id: row for row in facts.deliveries}
    duplicates: Counter[str] = Counter()
    for message_id, count in taken.items():
        row = known.get(message_id)
        if row is None:
            violations.add("unknown_message", f"the sink took {message_id} ({carried[message_id]}), no such delivery")
            continue
        if carried[message_id] != row.chaos_id:
            violations.add("content_mismatch", f"{message_id}: carries {carried[message_id]}, delivery {row.chaos_id}")
        if count > 1:
            duplicates["taken_twice_or_more"] += 1
            if count - 1 <= row.ambiguous + row.abandoned:
                duplicates["explained"] += 1
            else:
                violations.add(
                    "unexplained_duplicate",
                    f"{message_id} ({row.chaos_id}) taken {count}x, {row.ambiguous} ambiguous + "
                    f"{row.abandoned} abandoned attempts",
                )
        if row.status != "sent":
            anomalies.add("taken_but_not_sent", f"{message_id} ({row.chaos_id}) is {row.status}")
    for row in facts.deliveries:
        if row.status == "sent" and taken[row.message_id] == 0:
            violations.add("sent_never_taken", f"{row.delivery_id} ({row.chaos_id}) is sent; the sink never took it")
    return duplicates


def _exits(facts: Facts, violations: Findings) -> None:
    for record in facts.exits:
        label = f"replica {record.slot} #{record.incarnation}: {record.cause}, exit {record.code}"
        if record.cause in _BAD_EXITS:
            violations.add("replica_died", f"{label} {record.detail[-300:]}")
        elif record.cause in ("sigterm", "stop") and record.code != 0:
            violations.add("unclean_shutdown", f"{label} {record.detail[-300:]}")


def _counts(
    facts: Facts, statuses: Counter[str], acked: Counter[str], malformed: Counter[str], duplicates: Counter[str]
) -> dict[str, Any]:
    doors = Counter(c.door for c in facts.commands)
    exits = Counter(e.cause for e in facts.exits)
    sink = Counter(r.verdict for r in facts.sink)
    kinds = Counter(f.kind for f in facts.faults)
    return {
        "commands": sum(doors.values()),
        "commands_by_door": dict(doors),
        "malformed_sent": sum(1 for c in facts.commands if c.expect == "malformed"),
        "acknowledged": sum(acked.values()),
        "acknowledged_by_door": dict(acked),
        "xadds": dict(statuses),
        "lost_by_redis": statuses["lost_by_redis"],
        "http_tries": sum(r.tries for r in facts.http),
        "deliveries": len(facts.deliveries),
        "deliveries_by_status": dict(Counter(row.status for row in facts.deliveries)),
        "malformed_records": sum(malformed.values()),
        "ambiguous_attempts": sum(row.ambiguous for row in facts.deliveries),
        "abandoned_attempts": sum(row.abandoned for row in facts.deliveries),
        "sink": dict(sink),
        "taken_twice_or_more": duplicates["taken_twice_or_more"],
        "kills": {kind: n for kind, n in kinds.items() if kind in _KILLS},
        "faults": {kind: n for kind, n in kinds.items() if kind not in _KILLS},
        "replica_exits": dict(exits),
        "redis_epochs": len(facts.wipes) + 1,
        "log_warnings_and_errors": {k: n for k, n in sorted(facts.log_events.items()) if k.startswith(("warn", "err"))},
    }  # fmt: skip
