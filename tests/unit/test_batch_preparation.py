"""Preparing a stream batch lets the event loop run (SPEC §2): a backlog of large commands never
holds HTTP requests or SMTP attempts behind it. Pure CPU (no store): ticks are counted, not timed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson
import pytest

from mailsvc.domain.stream_entries import MalformedCommand, StreamCommand, decode_entry
from mailsvc.services.acceptance import AcceptanceService
from mailsvc.services.loop_share import LoopShare
from tests.support.acceptance import acceptance_service

ENTRIES = 30


@pytest.fixture(scope="module")
def acceptance() -> AcceptanceService:
    """Only `prepare_stream_batch` is used: it never touches the store."""
    return acceptance_service()


def large_command(n: int) -> dict[bytes, bytes]:
    """A ~200 KiB notification: JSON, hash, render and MIME of it take milliseconds."""
    payload = {
        "to": [f"reader{n}@example.com"],
        "template": "notification.generic",
        "variables": {"title": f"Digest {n}", "body": f"line {n}\n" * 25_000},
    }
    return {b"type": b"send_email", b"payload": orjson.dumps(payload), b"idempotency_key": f"big-{n}".encode()}


@dataclass
class Ticker:
    """A task that counts how often the event loop let it run."""

    ticks: int = 0
    ticks_at_decode: list[int] = field(default_factory=list)
    largest_gap_s: float = 0.0  # for the failure message only: this machine is shared, time is no assertion
    under_way: asyncio.Event = field(default_factory=asyncio.Event)  # three entries decoded

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            self.ticks += 1
            await asyncio.sleep(0)
            now = loop.time()
            self.largest_gap_s, last = max(self.largest_gap_s, now - last), now

    def decoded(self, raw: list[dict[bytes, bytes]]) -> Iterator[StreamCommand | MalformedCommand]:
        for index, fields in enumerate(raw):
            self.ticks_at_decode.append(self.ticks)
            if index == 2:
                self.under_way.set()
            yield decode_entry(f"1-{index}", fields)


async def test_preparing_a_batch_of_large_commands_lets_other_tasks_run(acceptance: AcceptanceService) -> None:
    raw = [large_command(n) for n in range(ENTRIES)]
    ticker = Ticker()
    task = asyncio.create_task(ticker.run())
    try:
        await asyncio.sleep(0)  # the ticker is running
        before = ticker.ticks
        batch = await acceptance.prepare_stream_batch(ticker.decoded(raw))
        during = ticker.ticks - before
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(batch.deliveries) == ENTRIES, batch.malformed
    # tens of milliseconds of work in slices of a few: the ticker ran several times meanwhile
    assert during >= 2, f"{during} ticks; the longest wait between two was {ticker.largest_gap_s * 1000:.0f} ms"
    # and the entries were decoded as the preparation went, inside its slices, not all up front
    assert ticker.ticks_at_decode[-1] > ticker.ticks_at_decode[0]


def sharing(acceptance: AcceptanceService, share: LoopShare) -> AcceptanceService:
    return acceptance_service(renderer=acceptance.renderer, loop_share=share)


async def test_with_no_time_slice_the_loop_runs_between_every_two_entries(acceptance: AcceptanceService) -> None:
    eager = sharing(acceptance, LoopShare(slice_s=0.0))
    small = [
        {b"type": b"send_email", b"payload": orjson.dumps({"to": ["a@example.com"], "subject": "s", "text": "t"})}
        for _ in range(10)
    ]
    ticker = Ticker()
    task = asyncio.create_task(ticker.run())
    try:
        await asyncio.sleep(0)
        batch = await eager.prepare_stream_batch(ticker.decoded(small))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(batch.deliveries) == 10
    assert ticker.ticks_at_decode == sorted(set(ticker.ticks_at_decode))  # a tick between every two decodes


async def test_preparation_gives_way_while_a_request_is_in_flight(acceptance: AcceptanceService) -> None:
    """A request with twenty steps (an HTTP acceptance: pool, statements, response) runs them all
    while the batch waits, instead of each step waiting for a slice of it."""
    share = LoopShare(slice_s=0.0, give_way_s=30.0)  # a turn after every step; waits as long as it takes
    service = sharing(acceptance, share)
    raw = [large_command(n) for n in range(ENTRIES)]
    ticker = Ticker()
    decoded_during: list[int] = []

    async def request() -> None:
        await ticker.under_way.wait()
        with share.waited_for():
            started = len(ticker.ticks_at_decode)
            for _ in range(20):
                await asyncio.sleep(0)
            decoded_during.append(len(ticker.ticks_at_decode) - started)

    batch, _ = await asyncio.gather(service.prepare_stream_batch(ticker.decoded(raw)), request())
    assert len(batch.deliveries) == ENTRIES
    assert decoded_during == [0]  # not one more entry while the request was in flight


async def test_a_request_in_flight_only_delays_the_batch_for_a_bounded_time(acceptance: AcceptanceService) -> None:
    share = LoopShare(slice_s=0.0, give_way_s=0.001)
    service = sharing(acceptance, share)
    small = [
        {b"type": b"send_email", b"payload": orjson.dumps({"to": ["a@example.com"], "subject": "s", "text": "t"})}
        for _ in range(5)
    ]
    with share.waited_for():  # a request that never finishes: the batch still gets prepared
        batch = await service.prepare_stream_batch(Ticker().decoded(small))
    assert len(batch.deliveries) == 5


async def test_a_mixed_batch_keeps_the_order_of_its_entries(acceptance: AcceptanceService) -> None:
    """Entries are prepared a chunk at a time, one step for the whole chunk after another: what each
    list of the batch holds still comes in the order of the entries, across chunks."""

    def entry(n: int) -> dict[bytes, bytes]:
        key = f"k{n}".encode()
        if n % 5 == 1:  # refused while decoding
            return {b"type": b"send_email", b"payload": b"{not json", b"idempotency_key": key}
        if n % 5 == 2:  # refused by validation
            return {b"type": b"send_email", b"payload": orjson.dumps({"to": ["nobody"], "subject": "s", "text": "t"})}
        if n % 5 == 3:  # refused by the renderer
            payload = {"to": ["a@example.com"], "template": "notification.generic", "variables": {"title": "T"}}
            return {b"type": b"send_email", b"payload": orjson.dumps(payload), b"idempotency_key": key}
        if n % 5 == 4:
            return {b"type": b"cancel_email", b"payload": orjson.dumps({"idempotency_key": f"k{n - 4}"})}
        return {
            b"type": b"send_email",
            b"payload": orjson.dumps({"to": [f"r{n}@example.com"], "subject": f"s{n}", "text": "t"}),
        }

    count = 100  # a few chunks, the last one partial
    batch = await acceptance.prepare_stream_batch(decode_entry(f"1-{n}", entry(n)) for n in range(count))
    assert [d.stream_entry_id for d in batch.deliveries] == [f"1-{n}" for n in range(count) if n % 5 == 0]
    assert [d.request.recipients[0].address.email for d in batch.deliveries] == [
        f"r{n}@example.com" for n in range(count) if n % 5 == 0
    ]
    assert [c.entry_id for c in batch.cancels] == [f"1-{n}" for n in range(count) if n % 5 == 4]
    assert [(m.entry_id, m.reason) for m in batch.malformed] == [
        (f"1-{n}", {1: "invalid_json", 2: "validation_failed", 3: "missing_variables"}[n % 5])
        for n in range(count)
        if n % 5 in (1, 2, 3)
    ]
