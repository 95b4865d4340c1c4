"""The chaos reconciliation is able to fail: fed the records of a run that broke the promise, it
names every break; fed a clean run's, it passes. Pure: no servers, hand-made facts."""

from __future__ import annotations

import json
from pathlib import Path

from bench.chaos.facts import (
    Command,
    DeliveryRow,
    Facts,
    FaultRecord,
    HttpResult,
    LogCrash,
    MalformedRow,
    ReplicaExit,
    SinkRecord,
    StreamEvent,
    Xadd,
    facts_from_json,
    to_json,
)
from bench.chaos.reconcile import reconcile
from bench.chaos.report import reconcile_again


class Run:
    """Builds the facts of a small run, one command at a time."""

    def __init__(self) -> None:
        self.facts = Facts(final_offset="100-0")
        self.t = 1000.0

    def _tick(self) -> float:
        self.t += 1
        return self.t

    def stream(self, chaos_id: str, entry: str, *, key: str | None = None, epoch: int = 0) -> None:
        self.facts.commands.append(Command(chaos_id, "stream", key, "deliver", "raw", at=self._tick()))
        self.facts.xadds.append(Xadd(chaos_id, entry, epoch, self._tick()))

    def malformed(self, chaos_id: str, entry: str, records: int = 1) -> None:
        self.facts.commands.append(Command(chaos_id, "stream", None, "malformed", "invalid_json", at=self._tick()))
        self.facts.xadds.append(Xadd(chaos_id, entry, 0, self._tick()))
        self.facts.malformed += [MalformedRow(entry, "invalid_json")] * records

    def http(self, chaos_id: str, delivery_id: str | None, status: int | None = 202) -> None:
        self.facts.commands.append(Command(chaos_id, "http", f"key-{chaos_id}", "deliver", "login", at=self._tick()))
        ids = (delivery_id,) if delivery_id and status == 202 else ()
        acked = self._tick() if status == 202 else None
        self.facts.http.append(HttpResult(chaos_id, 1, status, ids, self.t, acked, {str(status): 1}))

    def delivery(
        self, chaos_id: str, key: str, *, source: str = "notification", taken: int = 1, ambiguous: int = 0,
        abandoned: int = 0, status: str = "sent", delivery_id: str | None = None,
    ) -> str:  # fmt: skip
        delivery_id = delivery_id or f"d-{len(self.facts.deliveries)}"
        message_id = f"<{delivery_id}@example.com>"
        self.facts.deliveries.append(
            DeliveryRow(delivery_id, source, status, key, message_id, chaos_id, ambiguous, abandoned, 1 + ambiguous)
        )
        for _ in range(taken):
            self.facts.sink.append(SinkRecord(self._tick(), message_id, chaos_id, "accepted"))
        return delivery_id


def clean_run() -> Run:
    run = Run()
    run.stream("s1", "10-0")
    run.delivery("s1", "10-0")
    run.stream("s2", "11-0", key="ck-2")
    run.delivery("s2", "ck-2")
    run.malformed("s3", "12-0")
    run.http("h1", "d-h1")
    run.delivery("h1", "key-h1", source="auth", delivery_id="d-h1")
    return run


def test_a_clean_run_passes_and_round_trips_through_json() -> None:
    facts = clean_run().facts
    result = reconcile(facts)
    assert result.passed, result.violations
    assert (result.lost, result.double_accepted, result.unexplained_duplicates) == (0, 0, 0)
    assert result.counts["acknowledged"] == 4
    again = reconcile(facts_from_json(json.loads(json.dumps(to_json(facts)))))
    assert again.as_dict() == result.as_dict()


def test_one_lost_one_accepted_twice_and_one_unexplained_duplicate_are_each_reported() -> None:
    run = clean_run()
    run.stream("lost", "20-0")  # acknowledged (the offset is past it) and nothing became of it
    run.stream("twice", "21-0")
    run.delivery("twice", "21-0")
    run.delivery("twice", "21-0")  # the same command accepted a second time
    run.stream("dup", "22-0")
    run.delivery("dup", "22-0", taken=2)  # the sink took it twice; no ambiguous or abandoned attempt
    result = reconcile(run.facts)
    assert not result.passed
    assert (result.lost, result.double_accepted, result.unexplained_duplicates) == (1, 1, 1)
    assert "lost" in result.violations["lost"]["examples"][0]
    assert "twice" in result.violations["double_accepted"]["examples"][0]
    assert "dup" in result.violations["unexplained_duplicate"]["examples"][0]


def test_a_duplicate_after_an_ambiguous_or_abandoned_attempt_is_explained() -> None:
    run = clean_run()
    run.stream("amb", "20-0")
    run.delivery("amb", "20-0", taken=2, ambiguous=1)
    run.stream("crash", "21-0")
    run.delivery("crash", "21-0", taken=2, abandoned=1)
    run.stream("thrice", "22-0")
    run.delivery("thrice", "22-0", taken=3, ambiguous=1)  # one more acceptance than the attempts explain
    result = reconcile(run.facts)
    assert result.explained_duplicates == 2
    assert result.unexplained_duplicates == 1


def test_entries_redis_lost_before_we_read_them_are_not_ours_to_lose() -> None:
    run = clean_run()
    run.facts.final_offset = "500-0"
    run.stream("read", "30-0")
    run.delivery("read", "30-0")
    run.stream("gone", "31-0")  # after the offset the consumer had when Redis was wiped
    run.facts.wipes.append(run._tick())
    run.facts.stream_events.append(StreamEvent("reset", "30-0", "0-0", run._tick()))
    run.stream("new", "400-0", epoch=1)
    run.delivery("new", "400-0")
    result = reconcile(run.facts)
    assert result.passed, result.violations
    assert result.counts["lost_by_redis"] == 1


def test_a_key_reused_with_another_payload_is_one_malformed_record_or_lost() -> None:
    run = clean_run()
    run.facts.commands.append(Command("conflict", "stream", "ck-2", "malformed", "conflict", conflict_of="s2"))
    run.facts.xadds.append(Xadd("conflict", "30-0", 0, run._tick()))
    assert reconcile(run.facts).lost == 1  # neither its delivery nor a conflict record
    run.facts.malformed.append(MalformedRow("30-0", "idempotency_conflict"))
    assert reconcile(run.facts).passed


def test_a_key_owned_by_a_later_command_than_an_acknowledged_reuse_is_a_loss_unless_its_first_xadd_was_lost() -> None:
    run = clean_run()
    run.facts.commands.append(Command("first", "stream", "ck-9", "deliver", "raw"))
    run.facts.commands.append(Command("reuse", "stream", "ck-9", "malformed", "conflict", conflict_of="first"))
    run.facts.xadds.append(Xadd("reuse", "30-0", 0, run._tick()))
    run.facts.xadds.append(Xadd("first", "31-0", 0, run._tick()))  # after the reuse, yet it owns the key
    run.facts.malformed.append(MalformedRow("30-0", "idempotency_conflict"))
    run.delivery("first", "ck-9")
    assert reconcile(run.facts).lost == 1
    # found by the standard run: the owner's first XADD timed out unanswered but had landed, before
    # the reuse; its retry is the only entry the harness knows
    run.facts.xadds.insert(0, Xadd("first", None, None, run._tick(), "TimeoutError: Timeout reading"))
    assert reconcile(run.facts).passed


def test_every_other_broken_promise_is_a_named_violation() -> None:
    run = clean_run()
    run.malformed("twice-recorded", "40-0", records=2)
    run.delivery("nobody-sent-this", "41-0")
    run.stream("stuck", "42-0")
    run.delivery("stuck", "42-0", status="queued", taken=0)
    run.http("h-lost", "d-none")
    run.http("h-409", None, status=409)
    run.facts.exits.append(ReplicaExit(0, 2, "unexpected", 1, True, run._tick(), "loop died"))
    run.facts.exits.append(ReplicaExit(1, 1, "sigterm", 1, True, run._tick()))
    run.facts.sink.append(SinkRecord(run._tick(), "<stranger@example.com>", None, "accepted"))
    run.facts.crashes.append(LogCrash("replica0-002.log", "loop_crashed", "RuntimeError: boom", "2026-01-01"))
    run.facts.drained = False
    violations = reconcile(run.facts).violations
    assert violations["malformed_duplicated"]["count"] == 1
    assert violations["unsubmitted"]["count"] == 1
    assert violations["not_terminal"]["count"] == 1
    assert violations["lost"]["count"] == 1  # the HTTP command answered 202 without a delivery
    assert violations["http_rejected"]["count"] == 1
    assert violations["replica_died"]["count"] == 1
    assert violations["unclean_shutdown"]["count"] == 1
    assert violations["unknown_message"]["count"] == 1
    assert violations["not_drained"]["count"] == 1
    assert violations["crash_in_log"]["count"] == 1


def test_recovery_is_measured_from_a_fault_end_to_the_next_message_of_a_later_command() -> None:
    run = clean_run()
    run.facts.faults.append(FaultRecord("pg_restart", "postgres", 1000.5, 1002.5))
    recovery = reconcile(run.facts).recovery
    # s1 was taken at 1003 but submitted before the end; s2 (submitted at 1005) was taken at 1006
    assert recovery["max_s"] == 3.5
    assert recovery["max_s_by_kind"] == {"pg_restart": 3.5}


def test_the_time_with_no_replica_up_is_measured_over_the_fault_phase() -> None:
    run = clean_run()
    run.facts.faults.append(FaultRecord("sigkill", "replica:0", 100.0, 200.0))
    # replica 0 up 50-120 and 150-300, replica 1 up 0-300: two up but from 120 to 150
    run.facts.exits += [
        ReplicaExit(0, 1, "sigkill", -9, True, 120.0, ready_at=50.0),
        ReplicaExit(0, 2, "stop", 0, True, 300.0, ready_at=150.0),
        ReplicaExit(1, 1, "stop", 0, True, 300.0, ready_at=0.0),
    ]
    assert reconcile(run.facts).recovery["replicas"] == {"0_up_s": 0.0, "1_up_s": 30.0, "2_up_s": 70.0, "3_up_s": 0.0}


def test_a_kept_run_can_be_reconciled_again(tmp_path: Path) -> None:
    facts = clean_run().facts
    first = reconcile(facts).as_dict()
    first["lost"], first["passed"] = 1, False  # what an older, mistaken reconciliation said
    document = {"seed": 1, "plan": {"seconds": 60}, "result": first}
    (tmp_path / "report.json").write_text(json.dumps(document))
    (tmp_path / "facts.json").write_text(json.dumps(to_json(facts)))
    code, again = reconcile_again(tmp_path)
    assert code == 0
    assert again["result"]["passed"]
    assert again["first_result"]["lost"] == 1
    assert json.loads((tmp_path / "report-reconciled.json").read_text())["result"]["lost"] == 0
