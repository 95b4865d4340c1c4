"""What a chaos run recorded, as plain values: the input of the reconciliation.

The harness's side (commands, XADD replies, HTTP answers, faults, replica exits) is written down
as it happens; the service's side (deliveries, attempts, malformed records, stream events, the
stored offset) is read from PostgreSQL at the end; the sink's side is its own record file. Every
type here round-trips through JSON (`to_json` / `facts_from_json`), so a run's facts can be kept
and reconciled again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Door = Literal["stream", "http"]
TAKEN = frozenset({"accepted", "dropped"})  # sink verdicts for a message the server took
Expect = Literal["deliver", "malformed"]


@dataclass(frozen=True, slots=True)
class Command:
    """One logical command. An exact duplicate re-sends the same command (same id, same fields)."""

    chaos_id: str
    door: Door
    key: str | None  # the explicit idempotency key; None: a stream command keyed by its entry id
    expect: Expect
    kind: str  # "template" | "raw" | the malformed variety
    conflict_of: str | None = None  # the command whose key this one reuses with another payload
    scripted: str | None = None  # the sink script its recipients ask for: bounce | defer | drop | partial
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class Xadd:
    """One XADD of a command: its entry id when Redis answered, and the Redis epoch it landed in
    (None when a restart without persistence happened while it was in flight: no one knows)."""

    chaos_id: str
    entry_id: str | None
    epoch: int | None
    at: float
    error: str | None = None


@dataclass(frozen=True, slots=True)
class HttpResult:
    """A client's whole effort for one HTTP command: every try, the final answer."""

    chaos_id: str
    tries: int
    status: int | None  # the final answer; None when the client gave up without one
    delivery_ids: tuple[str, ...]  # from every 2xx answer
    first_at: float
    acked_at: float | None
    answers: dict[str, int] = field(default_factory=dict)  # status (or transport error) → count


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    delivery_id: str
    source: str
    status: str
    idempotency_key: str
    message_id: str
    chaos_id: str | None  # the `chaos` tag
    ambiguous: int  # attempts recorded as ambiguous
    abandoned: int  # attempts recorded as abandoned (stale claim recovered)
    attempts: int


@dataclass(frozen=True, slots=True)
class MalformedRow:
    entry_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class StreamEvent:
    kind: str  # gap | reset
    from_offset: str
    to_offset: str
    at: float


@dataclass(frozen=True, slots=True)
class SinkRecord:
    at: float
    message_id: str
    chaos_id: str | None
    verdict: str  # accepted | dropped (both: the server took it) | deferred


@dataclass(frozen=True, slots=True)
class FaultRecord:
    kind: str  # sigkill | sigterm | pg_restart | redis_restart | redis_wipe | latency | reset | blackhole | halfopen
    target: str  # replica slot, "postgres", "redis", or a network route group
    started: float
    ended: float
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ReplicaExit:
    slot: int
    incarnation: int
    cause: str  # sigkill | sigterm | stop (the end of the run) | refused_start | unexpected | …
    code: int | None
    was_ready: bool
    at: float
    detail: str = ""
    ready_at: float | None = None  # when it first answered HTTP


@dataclass(frozen=True, slots=True)
class LogCrash:
    """A line in a replica's log that only a bug writes (a loop or a handler died of an exception)."""

    log: str
    event: str
    error: str  # the exception's last line
    at: str


@dataclass
class Facts:
    commands: list[Command] = field(default_factory=list)
    xadds: list[Xadd] = field(default_factory=list)
    http: list[HttpResult] = field(default_factory=list)
    deliveries: list[DeliveryRow] = field(default_factory=list)
    malformed: list[MalformedRow] = field(default_factory=list)
    stream_events: list[StreamEvent] = field(default_factory=list)
    final_offset: str | None = None
    sink: list[SinkRecord] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)
    exits: list[ReplicaExit] = field(default_factory=list)
    wipes: list[float] = field(default_factory=list)  # when each restart without persistence killed Redis
    log_events: dict[str, int] = field(default_factory=dict)  # "level event" → lines, over every replica log
    crashes: list[LogCrash] = field(default_factory=list)
    drained: bool = True


_LISTS: dict[str, type[Any]] = {
    "commands": Command, "xadds": Xadd, "http": HttpResult, "deliveries": DeliveryRow, "malformed": MalformedRow,
    "stream_events": StreamEvent, "sink": SinkRecord, "faults": FaultRecord, "exits": ReplicaExit,
    "crashes": LogCrash,
}  # fmt: skip


def to_json(facts: Facts) -> dict[str, Any]:
    return dataclasses.asdict(facts)


def facts_from_json(document: dict[str, Any]) -> Facts:
    facts = Facts(
        final_offset=document.get("final_offset"),
        wipes=list(document.get("wipes", [])),
        drained=bool(document.get("drained", True)),
        log_events=dict(document.get("log_events", {})),
    )
    for name, kind in _LISTS.items():
        items = []
        for raw in document.get(name, []):
            fields = {**raw, "delivery_ids": tuple(raw.get("delivery_ids", ()))} if kind is HttpResult else raw
            items.append(kind(**fields))
        setattr(facts, name, items)
    return facts
