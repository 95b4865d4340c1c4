"""The stream door end to end: `mailsvc serve` consuming XADDed commands into PostgreSQL (SPEC §2)."""

from __future__ import annotations

import signal
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

from devtools.embedded import EmbeddedRedis, free_port
from tests.support.infra import wait_until
from tests.support.intake import connect, delivery_keys, malformed_by_entry, wait_for_offset
from tests.support.payloads import login_code_payload, numbered_payload
from tests.support.process import ServiceProcess, running_service
from tests.support.stream import Fields, command, xadd_all

# -- 1,000 commands: deliveries, duplicates and malformed rows, exactly -----------------------


def _malformed_kinds(n: int, conflict_key: str, conflict_payload: dict[str, Any]) -> list[tuple[str, Fields]]:
    """Fifteen ways for entry `n` to be malformed, each with its expected reason code."""
    key = f"bad-{n}"
    good = numbered_payload(n)
    return [
        ("invalid_encoding", command(orjson.dumps(good).replace(b"Hello", b"H\xffllo"), key)),
        ("invalid_encoding", command(orjson.dumps(good).replace(b"Hello", b"H\x00llo"), key)),
        ("missing_field", {b"payload": orjson.dumps(good), b"idempotency_key": key.encode()}),
        ("unknown_type", {**command(good, key), b"type": b"send_sms"}),
        ("missing_field", {b"type": b"send_email", b"idempotency_key": key.encode()}),
        ("invalid_json", command(b'{"to": ["x@example.com"], "subject": ', key)),
        ("payload_too_large", command(numbered_payload(n, text="x" * 300_000), key)),
        ("invalid_idempotency_key", command(good, f"spaces are not allowed {n}")),
        ("validation_failed", command(numbered_payload(n, to=["not-an-address"]), key)),
        ("validation_failed", command(numbered_payload(n, to=[f"r{i}@example.com" for i in range(51)]), key)),
        ("validation_failed", command({**login_code_payload(n), "subject": "both"}, key)),
        ("validation_failed", command(numbered_payload(n, text="nul \u0000 escaped in JSON"), key)),
        ("unknown_template", command({**login_code_payload(n), "template": "auth.no_such_template"}, key)),
        ("missing_variables", command({**login_code_payload(n), "variables": {"expires_in_minutes": 5}}, key)),
        ("idempotency_conflict", command({**conflict_payload, "subject": f"changed {n}"}, conflict_key)),
    ]


@dataclass
class Plan:
    entries: list[Fields] = field(default_factory=list)
    # per entry: ("delivery", key or None for the entry id) | ("duplicate", key) | ("malformed", reason)
    expect: list[tuple[str, str | None]] = field(default_factory=list)

    def add(self, fields: Fields, outcome: str, detail: str | None) -> None:
        self.entries.append(fields)
        self.expect.append((outcome, detail))


def plan_thousand() -> Plan:
    plan = Plan()
    keyed: list[tuple[str, dict[str, Any]]] = []  # created with an explicit key, for duplicates
    spare: list[tuple[str, dict[str, Any]]] = []  # created with an explicit key, for conflicts
    for n in range(1000):
        if n % 10 == 3:
            kinds = _malformed_kinds(n, "unused", {})
            kind = (n // 10) % len(kinds)
            if kinds[kind][0] == "idempotency_conflict":
                kinds = _malformed_kinds(n, *spare.pop(0))
            reason, fields = kinds[kind]
            plan.add(fields, "malformed", reason)
        elif n % 20 == 7:
            key, payload = keyed[(n * 7) % len(keyed)]
            # same request, written differently: key order and whitespace do not matter
            reordered = dict(reversed(list(payload.items())))
            plan.add(command(orjson.dumps(reordered, option=orjson.OPT_INDENT_2), key), "duplicate", key)
        elif n % 3 == 0:
            plan.add(command(numbered_payload(n)), "delivery", None)  # key = the entry id
        else:
            payload = login_code_payload(n) if n % 3 == 1 else numbered_payload(n)
            key = f"key-{n}"
            plan.add(command(payload, key), "delivery", key)
            (spare if n % 9 == 5 else keyed).append((key, payload))
    return plan


async def test_thousand_commands_give_exactly_the_expected_outcomes(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, database_dsn: str
) -> None:
    plan = plan_thousand()
    reasons = Counter(detail for outcome, detail in plan.expect if outcome == "malformed")
    assert sum(reasons.values()) == 100
    assert len(reasons) >= 10
    assert sum(1 for outcome, _ in plan.expect if outcome == "duplicate") >= 40

    # half of it is a backlog waiting for the consumer, half arrives while it runs
    ids = await xadd_all(redis_client, stream_key, plan.entries[:500])
    async with connect(database_dsn) as db, running_service(service_env) as service:
        ids += await xadd_all(redis_client, stream_key, plan.entries[500:])
        await wait_for_offset(db, stream_key, ids[-1])

        expected_keys = sorted(
            detail or entry_id
            for entry_id, (outcome, detail) in zip(ids, plan.expect, strict=True)
            if outcome == "delivery"
        )
        assert sorted(await delivery_keys(db)) == expected_keys  # none missing, none extra, none twice
        expected_malformed = {
            entry_id: detail
            for entry_id, (outcome, detail) in zip(ids, plan.expect, strict=True)
            if outcome == "malformed"
        }
        assert await malformed_by_entry(db) == expected_malformed
        # stream deliveries are never suppressed (only auth ones in stub mode are)
        assert await db.fetchval("SELECT count(*) FROM deliveries WHERE status = 'suppressed'") == 0
        assert await db.fetchval("SELECT count(*) FROM delivery_payloads") == len(expected_keys)
        # rendered once, at acceptance, in the requested locale, traceable to the template version
        # (a login code: its subject is redacted once sent, SPEC §13 — its size stays)
        row = await db.fetchrow(
            "SELECT d.locale, d.template_digest, coalesce(octet_length(p.subject), p.subject_bytes) AS size "
            "FROM deliveries d JOIN delivery_payloads p USING (delivery_id) WHERE d.idempotency_key = 'key-1'"
        )
        assert row is not None
        assert (row["locale"], row["size"]) == ("pt-BR", len("000001 é o seu código de acesso".encode()))
        assert row["template_digest"]
        conflict = await db.fetchrow(
            "SELECT idempotency_key, raw_fields FROM malformed_commands WHERE reason = 'idempotency_conflict' LIMIT 1"
        )
        assert conflict is not None
        assert conflict["idempotency_key"].startswith("key-")
        assert orjson.loads(conflict["raw_fields"])["type"] == "send_email"
        assert service.process.returncode is None
        assert not service.events("loop_crashed")


async def test_repeated_key_in_one_batch_is_judged_against_the_stored_request(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, database_dsn: str
) -> None:
    original = numbered_payload(1)
    changed = numbered_payload(1, subject="changed")
    async with connect(database_dsn) as db, running_service(service_env):
        (first,) = await xadd_all(redis_client, stream_key, [command(original, "shared")])
        await wait_for_offset(db, stream_key, first)
        # one transaction: the consumer reads all three in one XREAD batch
        pipe = redis_client.pipeline(transaction=True)
        pipe.xadd(stream_key, command(changed, "shared"))  # type: ignore[arg-type]
        pipe.xadd(stream_key, command(orjson.dumps(original, option=orjson.OPT_INDENT_2), "shared"))  # type: ignore[arg-type]
        pipe.xadd(stream_key, command(changed, "shared"))  # type: ignore[arg-type]
        conflict_1, duplicate, conflict_2 = [i.decode() for i in await pipe.execute()]
        await wait_for_offset(db, stream_key, conflict_2)
        assert await delivery_keys(db) == ["shared"]
        malformed = await malformed_by_entry(db)
        assert malformed == {conflict_1: "idempotency_conflict", conflict_2: "idempotency_conflict"}
        assert duplicate not in malformed


async def test_a_replay_after_expires_at_passed_is_a_duplicate_not_a_malformed_row(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, database_dsn: str
) -> None:
    async with connect(database_dsn) as db, running_service(service_env):
        expires_at = datetime.now(UTC) + timedelta(seconds=2)
        original = numbered_payload(0, expires_at=expires_at.isoformat())
        (first,) = await xadd_all(redis_client, stream_key, [command(original, "replayed")])
        await wait_for_offset(db, stream_key, first)

        async def passed() -> bool:
            return datetime.now(UTC) > expires_at

        await wait_until(passed, timeout=10, what="expires_at to pass")
        replay, other, unknown = await xadd_all(
            redis_client,
            stream_key,
            [
                command(orjson.dumps(original, option=orjson.OPT_INDENT_2), "replayed"),  # the same request
                command(numbered_payload(1, expires_at=expires_at.isoformat()), "replayed"),  # another one
                command(original, "never-seen"),  # nothing to replay: the usual validation error
            ],
        )
        await wait_for_offset(db, stream_key, unknown)
        assert await delivery_keys(db) == ["replayed"]
        assert await malformed_by_entry(db) == {other: "idempotency_conflict", unknown: "validation_failed"}
        assert replay not in await malformed_by_entry(db)


# -- bad bytes and poison payloads: a malformed record each, never a stuck offset ----------------


def _generic(**variables: str) -> dict[str, Any]:
    return {
        "to": ["ann@example.com"],
        "template": "notification.generic",
        "variables": {"title": "Title", "body": "Body", **variables},
    }


def _bad_commands() -> list[tuple[str, Fields]]:
    good = orjson.dumps(numbered_payload(0))
    return [
        ("invalid_encoding", command(good.replace(b"Hello", b"\xc3\x28\xa0\xa1"), "utf8")),
        ("invalid_encoding", command(good.replace(b"Hello", b"\x00\x00"), "nul-value")),
        ("invalid_encoding", {**command(good, "nul-name"), b"extra\x00field": b"x"}),
        ("payload_too_large", command(b'{"text": "' + b"x" * 10_000_000 + b'"}', "ten-mb")),
        ("validation_failed", command(numbered_payload(0, to=[f"r{i}@example.com" for i in range(1000)]), "1000-rcpt")),
        ("validation_failed", command(numbered_payload(0, text="\u0000", tags={"k": "\u0000"}), "nul-escaped")),
        ("validation_failed", command(numbered_payload(0, expires_at="2020-01-01T00:00:00Z"), "already-expired")),
        ("validation_failed", command(numbered_payload(0, send_at="0001-01-01T00:00:00+01:00"), "year-zero")),
        ("invalid_json", command(b'{"text": "\\ud800"}', "lone-surrogate")),
        ("invalid_json", command(b'{"text": 1e999}', "infinity")),
        ("validation_failed", command(_generic(action_url="javascript:alert(1)"), "javascript-link")),
        ("validation_failed", command(_generic(action_url=" DATA:text/html,<script>x</script>"), "data-link")),
        # the fields besides the payload are bounded (16 KiB): refused before anything is decoded
        ("entry_too_large", {**command(good, "fifty-mb-traceparent"), b"traceparent": b"00-" + b"a" * 50_000_000}),
        ("entry_too_large", {**command(good, "many-fields"), **{f"f{i}".encode(): b"v" * 64 for i in range(300)}}),
    ]


async def test_bad_bytes_are_recorded_and_the_consumer_keeps_going(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, database_dsn: str
) -> None:
    bad = _bad_commands()
    async with connect(database_dsn) as db, running_service(service_env) as service:
        expected: dict[str, str] = {}
        good_keys = []
        for index, (reason, fields) in enumerate(bad):
            good_key = f"after-{index}"
            bad_id, last_id = await xadd_all(
                redis_client, stream_key, [fields, command(numbered_payload(index), good_key)]
            )
            expected[bad_id] = reason
            good_keys.append(good_key)
            await wait_for_offset(db, stream_key, last_id, timeout=30)  # moved past the bad one
            assert sorted(await delivery_keys(db)) == sorted(good_keys)
        assert await malformed_by_entry(db) == expected
        sizes = await db.fetch("SELECT length(raw_fields) AS size, message FROM malformed_commands")
        assert all(row["size"] <= 64 * 1024 and row["message"] for row in sizes)
        assert service.process.returncode is None
        assert not service.events("loop_crashed")


# -- rendering is bounded: subject 998 characters, each body MAIL_MAX_RENDERED_BYTES ---------------


async def test_renders_past_their_bounds_are_malformed_and_the_rest_is_accepted(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, database_dsn: str
) -> None:
    env = {**service_env, "MAIL_MAX_RENDERED_BYTES": "16KiB"}
    limit = 16 * 1024
    too_large = [
        command(_generic(body="a\n\n" * 2000), "amplified"),  # a 6 KB variable, ~80 KB of HTML paragraphs
        command(_generic(title="x" * 999), "long-subject"),
        command(numbered_payload(0, text="é" * (limit // 2 + 1)), "raw-text"),  # bytes count, not characters
        command(numbered_payload(0, html="x" * (limit + 1)), "raw-html"),
    ]
    fitting = [
        command(numbered_payload(1, text="é" * (limit // 2)), "raw-at-limit"),
        command(_generic(title="x" * 998, body="a\n\n" * 100), "generic-within"),
    ]
    async with connect(database_dsn) as db, running_service(env):
        ids = await xadd_all(redis_client, stream_key, [*too_large, *fitting])
        await wait_for_offset(db, stream_key, ids[-1])
        assert await malformed_by_entry(db) == dict.fromkeys(ids[: len(too_large)], "render_too_large")
        assert sorted(await delivery_keys(db)) == ["generic-within", "raw-at-limit"]
        messages = await db.fetch("SELECT idempotency_key, message FROM malformed_commands ORDER BY stream_entry_id")
        by_key = {row["idempotency_key"]: row["message"] for row in messages}
        assert "HTML body is longer than 16384 bytes" in by_key["amplified"]
        assert "subject is longer than 998 characters" in by_key["long-subject"]
        assert by_key["raw-text"].startswith("text: must be at most 16384 bytes")
        assert by_key["raw-html"].startswith("html: must be at most 16384 bytes")
        stored = await db.fetchval(
            "SELECT length(text_body) FROM delivery_payloads JOIN deliveries USING (delivery_id) "
            "WHERE idempotency_key = 'raw-at-limit'"
        )
        assert stored == limit // 2


# -- resets and gaps -------------------------------------------------------------------------


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


async def _events(db: Any, stream_key: str) -> list[tuple[str, str, str]]:
    rows = await db.fetch(
        "SELECT kind, from_offset, to_offset FROM stream_events WHERE stream_key = $1 ORDER BY event_id", stream_key
    )
    return [(row["kind"], row["from_offset"], row["to_offset"]) for row in rows]


async def test_recreated_stream_is_a_reset_and_its_new_entries_are_read(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, database_dsn: str
) -> None:
    async with connect(database_dsn) as db, running_service(service_env) as service:
        (before,) = await xadd_all(redis_client, stream_key, [command(numbered_payload(0), "before")])
        await wait_for_offset(db, stream_key, before)
        # Redis lost the stream (FLUSHALL / restart without persistence); producers recreate it,
        # here with ids far below our stored offset
        await redis_client.delete(stream_key)
        await redis_client.xadd(stream_key, command(numbered_payload(1), "new-1"), id="1-1")  # type: ignore[arg-type]
        await redis_client.xadd(stream_key, command(numbered_payload(2), "new-2"), id="1-2")  # type: ignore[arg-type]
        await wait_for_offset(db, stream_key, "1-2")
        assert sorted(await delivery_keys(db)) == ["before", "new-1", "new-2"]
        events = await _events(db, stream_key)
        assert [(kind, to) for kind, _, to in events] == [("reset", "0-0")]
        assert events[0][1] == before
        assert service.events("stream_reset_detected")


async def _consume_one_then_stop(env: dict[str, str], redis: Redis, db: Any, stream_key: str, key: str) -> str:
    async with running_service(env) as service:
        (entry_id,) = await xadd_all(redis, stream_key, [command(numbered_payload(0), key)])
        await wait_for_offset(db, stream_key, entry_id)
        service.send_signal(signal.SIGTERM)
        assert await service.wait_exit() == 0
    return entry_id


async def test_stream_trimmed_past_the_offset_is_a_recorded_gap(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, database_dsn: str
) -> None:
    async with connect(database_dsn) as db:
        read = await _consume_one_then_stop(service_env, redis_client, db, stream_key, "read")
        lost = await xadd_all(redis_client, stream_key, [command(numbered_payload(i), f"lost-{i}") for i in range(5)])
        await redis_client.xtrim(stream_key, maxlen=0, approximate=False)
        (after,) = await xadd_all(redis_client, stream_key, [command(numbered_payload(9), "after-gap")])
        async with running_service(service_env):
            await wait_for_offset(db, stream_key, after)
            assert sorted(await delivery_keys(db)) == ["after-gap", "read"]
            ((kind, from_offset, to_offset),) = await _events(db, stream_key)
            assert (kind, from_offset) == ("gap", read)
            assert _id(lost[-1]) <= _id(to_offset) < _id(after)


async def test_unread_entries_trimmed_while_running_are_a_gap_counted_exactly(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, database_dsn: str
) -> None:
    async with connect(database_dsn) as db, running_service(service_env):
        (read,) = await xadd_all(redis_client, stream_key, [command(numbered_payload(0), "read")])
        await wait_for_offset(db, stream_key, read)
        pipe = redis_client.pipeline(transaction=True)  # atomic: the consumer cannot read them first
        for i in range(3):
            pipe.xadd(stream_key, command(numbered_payload(i), f"lost-{i}"))  # type: ignore[arg-type]
        pipe.xtrim(stream_key, maxlen=0, approximate=False)
        pipe.xadd(stream_key, command(numbered_payload(9), "after-gap"))  # type: ignore[arg-type]
        after = (await pipe.execute())[-1].decode()
        await wait_for_offset(db, stream_key, after)
        assert sorted(await delivery_keys(db)) == ["after-gap", "read"]

        async def recorded() -> list[Any]:
            return list(await db.fetch("SELECT kind, from_offset, detail FROM stream_events"))

        # XREAD already went past the hole; the next look at the stream head finds what is missing
        rows = await wait_until(recorded, timeout=10, what="a gap record")
        assert [(row["kind"], row["from_offset"]) for row in rows] == [("gap", read)]
        assert rows[0]["detail"].startswith("3 entries after")


async def test_trimming_only_entries_already_read_is_not_a_gap(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, database_dsn: str
) -> None:
    async with connect(database_dsn) as db, running_service(service_env):
        for i in range(5):
            fields: Any = command(numbered_payload(i), f"k-{i}")
            entry_id = await redis_client.xadd(stream_key, fields, maxlen=1, approximate=False)
            await wait_for_offset(db, stream_key, bytes(entry_id).decode())
        assert len(await delivery_keys(db)) == 5
        assert await _events(db, stream_key) == []


async def test_stream_recreated_with_higher_ids_while_stopped_is_a_reset(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, database_dsn: str
) -> None:
    async with connect(database_dsn) as db:
        read = await _consume_one_then_stop(service_env, redis_client, db, stream_key, "read")
        await redis_client.delete(stream_key)
        new = await xadd_all(redis_client, stream_key, [command(numbered_payload(i), f"new-{i}") for i in range(3)])
        assert _id(new[0]) > _id(read)
        async with running_service(service_env):
            await wait_for_offset(db, stream_key, new[-1])
            assert sorted(await delivery_keys(db)) == ["new-0", "new-1", "new-2", "read"]
            assert await _events(db, stream_key) == [("reset", read, "0-0")]


async def test_unread_entries_deleted_behind_a_kept_one_are_a_recorded_gap(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, database_dsn: str
) -> None:
    async with connect(database_dsn) as db:
        read = await _consume_one_then_stop(service_env, redis_client, db, stream_key, "read")
        lost = await xadd_all(redis_client, stream_key, [command(numbered_payload(i), f"lost-{i}") for i in range(3)])
        await redis_client.xdel(stream_key, *lost)  # the entry we read stays: first-entry <= offset
        (after,) = await xadd_all(redis_client, stream_key, [command(numbered_payload(9), "after-gap")])
        async with running_service(service_env):
            await wait_for_offset(db, stream_key, after)
            assert sorted(await delivery_keys(db)) == ["after-gap", "read"]
            events = await _events(db, stream_key)
            assert [kind for kind, _, _ in events] == ["gap"]
            assert events[0][1] == read


# -- Redis outage ----------------------------------------------------------------------------


async def _wait_events(service: ServiceProcess, event: str, count: int, timeout: float = 30) -> None:
    async def enough() -> bool:
        assert service.process.returncode is None, service.output()
        return len(service.events(event)) >= count

    await wait_until(enough, timeout=timeout, what=f"{count} x {event}")


async def test_redis_outage_is_survived_and_consumption_resumes(
    service_env: dict[str, str], stream_key: str, database_dsn: str, tmp_path: Path
) -> None:
    port = free_port()
    redis_server = EmbeddedRedis.start(tmp_path / "redis-1", port)
    client = Redis(host="127.0.0.1", port=port)
    env = {**service_env, "MAIL_REDIS_MASTER_ADDR": f"127.0.0.1:{port}", "MAIL_REDIS_OPERATION_TIMEOUT": "1s"}
    try:
        async with connect(database_dsn) as db, running_service(env) as service:
            (before,) = await xadd_all(client, stream_key, [command(numbered_payload(0), "before-outage")])
            await wait_for_offset(db, stream_key, before)

            redis_server.process.kill()
            redis_server.process.wait()
            await _wait_events(service, "consumer_dependency_unavailable", 2)  # retried, still alive

            # back on the same port, empty (no persistence): the stream is gone, a reset
            redis_server = EmbeddedRedis.start(tmp_path / "redis-2", port)
            await _wait_events(service, "stream_reset_detected", 1)
            await client.aclose()
            client = Redis(host="127.0.0.1", port=port)
            (after,) = await xadd_all(client, stream_key, [command(numbered_payload(1), "after-outage")])
            await wait_for_offset(db, stream_key, after)
            assert sorted(await delivery_keys(db)) == ["after-outage", "before-outage"]
            events = await db.fetch("SELECT kind, from_offset, to_offset, detail FROM stream_events")
            assert [row["kind"] for row in events] == ["reset"], events
            assert service.process.returncode is None
            service.send_signal(signal.SIGTERM)
            assert await service.wait_exit() == 0
    finally:
        await client.aclose()
        redis_server.stop()
