"""The Redis stream consumer (SPEC §2): plain XREAD from the offset stored in PostgreSQL.

Each batch — accepted, duplicate and malformed alike — is committed together with the new offset,
so a crash at any instant neither loses nor double-accepts a command. Only the replica that can
prove it holds the advisory lock consumes (see `advisory_lock` for the timing); every offset
write, gap and reset records included, is a compare-and-set on the offset this consumer read, so
even a former holder that has not noticed yet can never move it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from mailsvc.domain.intake import OffsetAdvance
from mailsvc.domain.stream import START, StreamEntries, StreamInfo, StreamRead, parse_id, predecessor, successor
from mailsvc.domain.stream_entries import CancelCommand, MalformedCommand, StreamCommand, decode_entry
from mailsvc.errors import OffsetMoved, StoreUnavailable, StreamUnavailable
from mailsvc.instruments import NO_INSTRUMENTS, Instruments
from mailsvc.loops.leadership import LeaderLock, lead_or_stand_by
from mailsvc.services.acceptance import AcceptanceService
from mailsvc.services.acceptance_types import BatchResult, PreparedBatch
from mailsvc.waiting import first_done, wait_any

log = logging.getLogger("mailsvc.consumer")


class StreamReader(Protocol):
    count: int  # the most entries one read returns: a full read means a backlog

    async def read(self, after: str, block_ms: int | None) -> StreamRead:
        """The stream's shape and the entries after `after`; raise `StreamUnavailable`."""
        ...


class OffsetStore(Protocol):
    async def load_offset(self, stream_key: str) -> str | None: ...

    async def record_stream_event(
        self,
        stream_key: str,
        kind: str,
        from_offset: str,
        to_offset: str,
        detail: str,
        *,
        expected: str | None,
        reset_offset: bool,
    ) -> None: ...


class StreamConsumer:
    name = "consumer"

    def __init__(
        self,
        *,
        reader: StreamReader,
        stream_key: str,
        offsets: OffsetStore,
        acceptance: AcceptanceService,
        lock: LeaderLock,
        block_ms: int,
        standby_interval: float = 1.0,
        max_backoff: float = 5.0,
        instruments: Instruments = NO_INSTRUMENTS,
    ) -> None:
        self.reader = reader
        self.stream_key = stream_key
        self.offsets = offsets
        self.acceptance = acceptance
        self.lock = lock
        self.block_ms = block_ms
        self.standby_interval = standby_interval
        self.max_backoff = max_backoff
        self._stopping = asyncio.Event()
        self.offset: str = START  # last entry id committed (observable: stream lag)
        self.head: str | None = None  # last-generated-id seen at the last read
        # entries ever added to the stream up to our offset: known once we caught up with the head,
        # it tells a trim of entries we read from a trim of entries we never read
        self._added_through_offset: int | None = None
        self._counted_since = START  # the offset at which that count was last known exactly
        self._holes_recorded: str | None = None  # max-deleted-entry-id already recorded as a gap
        # the stream's size at the last read (XINFO rides along with every XREAD): stream lag for free
        self._stream_added: int | None = None
        self._stream_length: int | None = None
        self.instruments = instruments
        if instruments.metering:
            instruments.watch("stream_lag", lambda: self.lag)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        await lead_or_stand_by(
            self.lock,
            self._stopping,
            self._consume,
            standby_interval=self.standby_interval,
            unavailable_event="consumer_lock_unavailable",
        )

    async def _consume(self) -> None:
        """Consume while the lock is proven held; return when stopping, on lock loss or offset race."""
        try:
            stored = await self.offsets.load_offset(self.stream_key)
        except StoreUnavailable:
            await wait_any(self._stopping, timeout=self.standby_interval)
            return
        self.offset = stored or START
        self._added_through_offset = 0 if self.offset == START else None
        self._counted_since = self.offset
        log.info("consumer_started", extra={"stream": self.stream_key, "offset": self.offset})
        backoff = 0.1
        ahead: _ReadAhead | None = None  # the next batch, read and prepared while the last one committed
        try:
            while not self._stopping.is_set() and self.lock.held:
                try:
                    if ahead is None:
                        read = await self._read(self.offset, self.block_ms)
                        if read is None:
                            return  # stopping
                        (info, entries), prepared = read, None
                    else:
                        info, entries, prepared, ahead = ahead.info, ahead.entries, ahead.prepared, None
                    self._note_size(info)
                    if await self._detect_gap_or_reset(info, stored):
                        if prepared is not None:
                            prepared.abandon(RuntimeError("stream gap or reset"))
                        stored = self.offset
                        continue
                    if not entries:
                        backoff = 0.1
                        continue
                    last_id = entries[-1][0]
                    if prepared is None:
                        prepared = await self.acceptance.prepare_stream_batch(_decode(entries))
                    if not self.lock.held:  # no commit begins without a current proof of leadership
                        prepared.abandon(RuntimeError("stream leadership lost"))
                        return
                    commit = asyncio.ensure_future(
                        self.acceptance.commit_stream_batch(prepared, OffsetAdvance(self.stream_key, stored, last_id))
                    )
                    if len(entries) >= self.reader.count:  # a backlog: read and prepare the next during this commit
                        ahead = await self._read_ahead(last_id, commit)
                    try:
                        result = await commit
                    except BaseException as exc:
                        if ahead is not None:
                            ahead.prepared.abandon(exc)
                            ahead = None
                        raise
                    stored = self.offset = last_id
                    self._note_read(len(entries))
                    self._count(result)
                    backoff = 0.1
                except OffsetMoved:
                    log.warning("consumer_offset_moved", extra={"stream": self.stream_key})
                    return
                except (StreamUnavailable, StoreUnavailable) as exc:
                    if isinstance(exc, StreamUnavailable) and exc.refused:  # Redis answered: NOPERM, BUSY, …
                        log.warning(
                            "consumer_redis_error_reply",
                            extra={
                                "error_class": getattr(exc, "error_class", type(exc).__name__),
                                "reply": str(exc),
                                "retry_in_s": backoff,
                            },
                        )
                    else:
                        log.warning(
                            "consumer_dependency_unavailable",
                            extra={
                                "error_class": getattr(exc, "error_class", type(exc).__name__),
                                "retry_in_s": backoff,
                            },
                        )
                    if await wait_any(self._stopping, timeout=backoff):
                        return
                    backoff = min(backoff * 2, self.max_backoff)
        finally:
            if ahead is not None:  # read ahead, never to be committed by this turn: end its spans
                ahead.prepared.abandon(RuntimeError("consumer stopped before committing the read-ahead"))
            if not self._stopping.is_set() and not self.lock.held:
                log.warning("consumer_leadership_lost", extra={"stream": self.stream_key, "offset": self.offset})

    async def _read_ahead(self, after: str, commit: asyncio.Future[BatchResult]) -> _ReadAhead | None:
        """The batch after `after`, read without blocking and prepared while `commit` runs; None
        when there is none yet or Redis failed (the next turn reads it again, after the commit)."""
        try:
            read = await self._read(after, None)
        except StreamUnavailable:
            return None
        except BaseException:
            commit.cancel()
            await asyncio.gather(commit, return_exceptions=True)
            raise
        if read is None or not read[1]:
            return None
        info, entries = read
        # yields now and then, so the commit in flight gets its replies handled while this runs
        prepared = await self.acceptance.prepare_stream_batch(_decode(entries))
        return _ReadAhead(info, entries, prepared)

    async def _read(self, after: str, block_ms: int | None) -> tuple[StreamInfo | None, StreamEntries] | None:
        """The stream's shape and the entries after `after` (waiting up to `block_ms`); None when
        stopping or the loss of the lock interrupted the read."""
        read = await first_done(self.reader.read(after, block_ms), self._stopping.wait(), self.lock.wait_lost())
        return None if read is None else (read.info, read.entries)

    def _note_read(self, read: int) -> None:
        if self._added_through_offset is not None:
            self._added_through_offset += read

    def _note_size(self, info: StreamInfo | None) -> None:
        if info is not None:
            self._stream_added, self._stream_length = info.entries_added, info.length
        else:  # no such stream: nothing to be behind on
            self._stream_added = self._stream_length = None

    @property
    def lag(self) -> int | None:
        """Entries behind the head as of the last read; None when not consuming (a standby).

        Exact once the consumer has caught up with the head (it then knows how many entries were
        ever added up to its offset); until then the stream's length, an upper bound. Read from
        the metrics exporter's thread: attribute arithmetic only, no I/O.
        """
        if not self.lock.held or self.head is None:
            return None
        if parse_id(self.offset) >= parse_id(self.head):  # the head is read before the entries it may trail
            return 0
        if self._stream_added is not None and self._added_through_offset is not None:
            return max(0, self._stream_added - self._added_through_offset)
        return self._stream_length

    def _count(self, result: BatchResult) -> None:
        consumed = self.instruments.commands_consumed
        for outcome, count in (
            ("accepted", result.accepted + result.cancelled),
            ("duplicate", result.duplicate),
            ("malformed", result.malformed),
        ):
            if count:
                consumed.add(count, {"result": outcome})

    async def _detect_gap_or_reset(self, info: StreamInfo | None, stored: str | None) -> bool:
        """Record a reset (stream recreated) or gap (unread entries removed); True if the offset moved.

        Trimming (MAXLEN/MINID) removes a prefix of the stream and, on Redis 7.0, leaves no trace
        in `max-deleted-entry-id`: it shows as a first entry beyond our offset, and
        `entries-added - length` counts what was removed. XDEL shows in `max-deleted-entry-id`.
        """
        if info is None:
            self.head = None  # no such key: the stream does not exist (yet, or any more)
            if self.offset != START:
                await self._record("reset", START, "stream key missing (Redis restarted without persistence?)", stored)
                return True
            return False
        last_generated = info.last_generated_id
        self.head = last_generated
        offset = parse_id(self.offset)
        if parse_id(last_generated) < offset:
            await self._record(
                "reset", START, f"stream last-generated-id {last_generated} is below our offset {self.offset}", stored
            )
            return True
        added, length = info.entries_added, info.length
        if self.offset == last_generated:  # caught up: we know exactly how many entries we should have read
            if self._added_through_offset is not None and added is not None and added > self._added_through_offset:
                # removed between a read's XINFO and its XREAD: noticed only now, after the offset moved on
                missed = added - self._added_through_offset
                detail = f"{missed} entries after {self._counted_since} up to {self.offset} were removed unread"
                await self._record("gap", self.offset, detail, stored, move=False, from_offset=self._counted_since)
            self._added_through_offset, self._counted_since = added, self.offset
        first_id, max_deleted = info.first_entry_id, info.max_deleted_id
        if first_id is None:  # empty: everything up to last-generated-id is gone
            if parse_id(last_generated) > offset:
                await self._record(
                    "gap",
                    last_generated,
                    f"entries after {self.offset} up to {last_generated} were removed unread",
                    stored,
                )
                return True
            return False
        if parse_id(first_id) > successor(offset):
            # nothing before the first entry is left: were any of the removed entries unread?
            removed = None if added is None or length is None else added - length
            if removed == 0 and self.offset != START:  # the stream never lost an entry, yet ours is not in it
                await self._record("reset", START, f"stream recreated: it never held our offset {self.offset}", stored)
                return True
            read, unread = self._added_through_offset, None
            if removed is not None and read is not None and parse_id(max_deleted) < parse_id(first_id):
                unread = removed - read  # exact: no deletions blur the count
            elif removed is None and self.offset == START:
                unread = 0  # Redis < 7 does not count removals: nothing tells of a gap
            if unread is None or unread > 0:
                how_many = "some may never have been read" if unread is None else f"{unread} never read"
                detail = f"entries after {self.offset} before {first_id} were trimmed: {how_many}"
                await self._record("gap", predecessor(first_id), detail, stored)
                return True
        if parse_id(max_deleted) > offset and max_deleted != self._holes_recorded:
            # some entries after our offset were deleted (XDEL) before we read them; XREAD skips them
            self._holes_recorded = max_deleted
            self._added_through_offset = None
            await self._record(
                "gap",
                max_deleted,
                f"entries after {self.offset} up to {max_deleted} were deleted unread",
                stored,
                move=False,
            )
        return False

    async def _record(
        self,
        kind: str,
        to_offset: str,
        detail: str,
        expected: str | None,
        *,
        move: bool = True,
        from_offset: str | None = None,
    ) -> None:
        """Log and record a gap or reset, fenced by `expected` (the offset stored when we read it):
        `OffsetMoved` when another consumer has moved it since, and nothing is written."""
        from_offset = from_offset or self.offset
        log.warning(
            f"stream_{kind}_detected",
            extra={"stream": self.stream_key, "from_offset": from_offset, "to_offset": to_offset, "detail": detail},
        )
        await self.offsets.record_stream_event(
            self.stream_key, kind, from_offset, to_offset, detail, expected=expected, reset_offset=move
        )
        if move:
            self.offset = self._counted_since = to_offset
            self._added_through_offset = 0 if to_offset == START else None


@dataclass(frozen=True, slots=True)
class _ReadAhead:
    info: StreamInfo | None
    entries: StreamEntries
    prepared: PreparedBatch


def _decode(entries: StreamEntries) -> Iterator[StreamCommand | CancelCommand | MalformedCommand]:
    # lazy: each entry is decoded (JSON, hash) inside the preparation's time slices, not all up front
    return (decode_entry(entry_id, fields) for entry_id, fields in entries)
