"""Acceptance: the one service both doors call (SPEC §1-§3).

Validates, renders once, builds the MIME bytes once, assigns `delivery_id` and `Message-ID`,
applies idempotency, and persists everything in one transaction — for the stream, together with
the new offset and the malformed records of the same batch. Then wakes the scheduler.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from datetime import timedelta
from typing import Any
from uuid import UUID

from opentelemetry import trace
from opentelemetry.trace import Span

from mailsvc.domain import transitions
from mailsvc.domain.clock import Clock, utc_now
from mailsvc.domain.commands import (
    Problem,
    SendRequest,
    ValidationFailed,
    keyed_digest,
    parse_send_request,
    request_hash,
    utf8_size,
)
from mailsvc.domain.ids import uuid7
from mailsvc.domain.intake import CancelOutcome, KeyOutcome, NewDelivery, OffsetAdvance
from mailsvc.domain.mime import build_message, make_message_id
from mailsvc.domain.model import TERMINAL_STATUSES, Address, RenderedContent, Source
from mailsvc.domain.stream_entries import CancelCommand, MalformedCommand, StreamCommand
from mailsvc.domain.templates import DEFAULT_MAX_RENDERED_BYTES, MissingVariables, TemplateError
from mailsvc.errors import IdempotencyConflict
from mailsvc.instruments import NO_INSTRUMENTS, Instruments, current_traceparent
from mailsvc.services.acceptance_types import AcceptanceStore, Accepted, BatchResult, PreparedBatch, Renderer
from mailsvc.services.command_spans import NO_COMMAND_SPANS, CommandSpans
from mailsvc.services.loop_share import LoopShare, Slices

log = logging.getLogger("mailsvc.acceptance")
# stream commands prepared together, step by step (`prepare_stream_batch`): a few dozen keep each
# step's code in the caches; 8 already gives most of the gain, 128 no more than 32
_CHUNK = 32


def _refused(entry: StreamCommand, error: ValidationFailed | ValueError) -> MalformedCommand:
    """The malformed record of a stream command that failed validation or the MIME builder."""
    if isinstance(error, ValidationFailed):
        return MalformedCommand(
            entry.entry_id, error.reason, str(error)[:2000], entry.raw_fields, entry.idempotency_key
        )
    return MalformedCommand(entry.entry_id, "validation_failed", str(error), entry.raw_fields, entry.idempotency_key)


def _template_problem(error: TemplateError) -> ValidationFailed:
    if isinstance(error, MissingVariables):
        message = f"missing template variables: {', '.join(error.names)}"
    else:
        message = str(error)
    return ValidationFailed([Problem(error.field, message)], reason=error.reason)


class AcceptanceService:
    def __init__(
        self,
        *,
        store: AcceptanceStore,
        renderer: Renderer,
        from_address: Address,
        suppress_auth: bool,
        idempotency_ttl: timedelta,
        stream_key: str,
        max_rendered_bytes: int = DEFAULT_MAX_RENDERED_BYTES,
        wake_scheduler: Callable[[], None] = lambda: None,
        clock: Clock = utc_now,
        instruments: Instruments = NO_INSTRUMENTS,
        loop_share: LoopShare | None = None,
        dev_outbox: Callable[[UUID, bytes], Awaitable[None]] | None = None,
        request_hash_key: bytes = b"",
    ) -> None:
        self.store = store
        self.renderer = renderer
        self.from_address = from_address
        self.message_id_domain = from_address.email.rpartition("@")[2] or "localhost"
        self.suppress_auth = suppress_auth
        self.idempotency_ttl = idempotency_ttl
        self.stream_key = stream_key
        self.max_rendered_bytes = max_rendered_bytes
        self.wake_scheduler = wake_scheduler
        self.clock = clock
        self.instruments = instruments
        # stream batches are prepared in slices that give way to the single acceptances in flight
        self.loop_share = loop_share or LoopShare()
        # stub mode with an outbox (SPEC §4): an auth delivery suppressed at the door is written
        # there too, so a developer sees the login code; it stays `suppressed`
        self.dev_outbox = dev_outbox
        self.request_hash_key = request_hash_key  # `keyed_digest`: what is stored of each request

    # -- preparing (pure CPU) -------------------------------------------------------------

    def render(self, request: SendRequest) -> RenderedContent:
        """Render a validated request once; raise `TemplateError` for template problems, and
        `ValidationFailed` (`render_too_large`) for raw bodies over `max_rendered_bytes`."""
        if request.template is not None:
            content = self.renderer.render(
                request.template, request.locale, request.variables, max_bytes=self.max_rendered_bytes
            )
            # the manifest decides; a command may only add redaction, never turn it off (SPEC §2)
            return replace(content, sensitive=True) if request.sensitive else content
        assert request.subject is not None
        assert request.text is not None
        limit = self.max_rendered_bytes
        oversized = [
            Problem(name, f"must be at most {limit} bytes (MAIL_MAX_RENDERED_BYTES)")
            for name, body in (("text", request.text), ("html", request.html))
            if body is not None and len(body) * 4 > limit and utf8_size(body) > limit
        ]
        if oversized:
            raise ValidationFailed(oversized, reason="render_too_large")
        return RenderedContent(
            subject=request.subject, text=request.text, html=request.html, sensitive=request.sensitive
        )

    def prepare(
        self,
        *,
        source: Source,
        idempotency_key: str,
        payload: Any,
        digest: bytes,
        resend_of: UUID | None = None,
    ) -> NewDelivery:
        """Validate, render and build; raise `ValidationFailed` (with a reason code)."""
        request, content = self.validate_and_render(payload)
        return self.build(source, idempotency_key, digest, request, content, resend_of=resend_of)

    def validate_and_render(self, payload: Any) -> tuple[SendRequest, RenderedContent]:
        """Raise `ValidationFailed` (with a reason code) for any payload or template problem."""
        request = parse_send_request(payload)
        return request, self._render_validated(request)

    def _render_validated(self, request: SendRequest) -> RenderedContent:
        """`render`, with a template problem raised as `ValidationFailed` like any other."""
        try:
            return self.render(request)
        except TemplateError as error:
            raise _template_problem(error) from None

    def build(
        self,
        source: Source,
        idempotency_key: str,
        digest: bytes,
        request: SendRequest,
        content: RenderedContent,
        *,
        resend_of: UUID | None = None,
        stream_entry_id: str | None = None,
        stream_fields: Mapping[bytes, bytes] | None = None,
    ) -> NewDelivery:
        now = self.clock()
        replay_only = None
        if request.send_at is None and request.expires_at is not None and request.expires_at <= now:
            # send_at defaults to now: the delivery would expire before it could start. Only time
            # makes it invalid, so the store still answers a replay of the original with it (SPEC §1)
            replay_only = ValidationFailed([Problem("expires_at", "has already passed")])
        message_id = make_message_id(self.message_id_domain)
        built = build_message(
            from_addr=self.from_address,
            to=[r.address for r in request.recipients if r.kind == "to"],
            cc=[r.address for r in request.recipients if r.kind == "cc"],
            reply_to=request.reply_to,
            subject=content.subject,
            text=content.text,
            html=content.html,
            headers=request.headers,
            message_id=message_id,
            date=now,
        )
        status = transitions.accepted_status(source, suppress_auth=self.suppress_auth)
        return NewDelivery(
            delivery_id=uuid7(),
            source=source,
            status=status,
            idempotency_key=idempotency_key,
            request_hash=keyed_digest(digest, self.request_hash_key),
            request=request,
            content=content,
            message_id=message_id,
            mime=built.mime,
            text_span=built.text_span,
            html_span=built.html_span,
            accepted_at=now,
            resend_of=resend_of,
            stream_entry_id=stream_entry_id,
            stream_fields=stream_fields,
            replay_only=replay_only,
        )

    # -- the doors ------------------------------------------------------------------------

    async def accept_request(self, source: Source, idempotency_key: str, payload: Any) -> Accepted:
        """HTTP intake: raise `ValidationFailed` or `IdempotencyConflict`; else the delivery (or,
        for a replay, the original — even when only time made the request invalid since)."""
        prepared = self.prepare(
            source=source, idempotency_key=idempotency_key, payload=payload, digest=request_hash(payload)
        )
        return await self.persist_one(prepared)

    async def persist_one(self, prepared: NewDelivery) -> Accepted:
        """Persist one prepared delivery (HTTP, resend); raise `IdempotencyConflict`, or the
        `ValidationFailed` of a replay-only delivery whose key holds no request. Someone waits for
        it: the preparation of stream batches gives way meanwhile."""
        with self.loop_share.waited_for():
            return await self._traced_persist_one(prepared)

    async def _traced_persist_one(self, prepared: NewDelivery) -> Accepted:
        if not self.instruments.tracing:
            return await self._persist_one(prepared)
        with self.instruments.tracer.start_as_current_span(
            "mail.delivery accept",
            attributes={"mail.source": prepared.source},
            record_exception=False,  # exception messages may quote the request
            set_status_on_exception=False,
        ) as span:
            try:
                accepted = await self._persist_one(replace(prepared, traceparent=current_traceparent(span)))
            except Exception as exc:
                span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
                raise
            span.set_attributes(
                {"mail.delivery_id": str(accepted.delivery_id), "mail.idempotent_replay": accepted.idempotent_replay}
            )
            return accepted

    async def _persist_one(self, prepared: NewDelivery) -> Accepted:
        (outcome,) = await self.store.accept(
            [prepared], [], stream_key=self.stream_key, offset=None, idempotency_ttl=self.idempotency_ttl
        )
        if outcome.kind == "conflict":
            raise IdempotencyConflict(prepared.idempotency_key)
        if outcome.kind == "refused":
            assert prepared.replay_only is not None
            raise prepared.replay_only
        if outcome.kind == "created":
            self.instruments.deliveries_accepted.add(1, {"source": prepared.source})
            self._count_finished([outcome])
            if outcome.status == "queued":
                self.wake_scheduler()
            if outcome.status == "suppressed" and prepared.source == "auth" and self.suppress_auth:
                await self._to_dev_outbox(prepared)
        return Accepted(outcome.delivery_id, outcome.status, idempotent_replay=outcome.kind == "duplicate")

    async def _to_dev_outbox(self, prepared: NewDelivery) -> None:
        if self.dev_outbox is None:
            return
        try:
            await self.dev_outbox(prepared.delivery_id, prepared.mime)
        except OSError as exc:  # the delivery is committed: a full disk in dev mode is only logged
            log.warning(
                "dev_outbox_write_failed",
                extra={"delivery_id": str(prepared.delivery_id), "error_class": type(exc).__name__},
            )

    def _count_finished(self, outcomes: Iterable[KeyOutcome]) -> None:
        """Deliveries that became terminal at acceptance: suppressed at the door, and the queued
        ones a collapse key superseded."""
        suppressed = superseded = 0
        for outcome in outcomes:
            if outcome.kind == "created":
                suppressed += outcome.status in TERMINAL_STATUSES
                superseded += outcome.superseded
        if suppressed:
            self.instruments.deliveries_finished.add(suppressed, {"status": "suppressed"})
        if superseded:
            self.instruments.deliveries_finished.add(superseded, {"status": "superseded"})

    async def prepare_stream_batch(
        self, entries: Iterable[StreamCommand | CancelCommand | MalformedCommand]
    ) -> PreparedBatch:
        """Validate, render and build a batch (CPU only, nothing persisted).

        The work is cut into slices of about a millisecond (`LoopShare`): between two steps of an
        entry (decode, validate, render, build) the event loop runs once a slice is over, and
        waits a little for HTTP acceptances in flight — so a backlog of large commands never holds
        HTTP requests, SMTP attempts or the transaction in flight for long. A batch of small
        commands pays a few clock reads per entry. `entries` may be lazy (a generator decoding
        stream entries): the decoding then happens in the slices too.

        The entries go through in chunks of `_CHUNK`, each step for the whole chunk before the next
        step: the code of one step (JSON and validation, Jinja, the MIME builder) then stays in the
        CPU's caches across the chunk, where taking one command at a time through all of them
        evicted it every time — a quarter of the CPU per command. Results keep the entries' order.
        """
        tracing = self.instruments.tracing
        spans = CommandSpans(self.instruments.tracer, self.stream_key) if tracing else NO_COMMAND_SPANS
        batch = PreparedBatch(spans=spans)
        slices = self.loop_share.slices()
        pending = iter(entries)
        while True:
            chunk: list[tuple[StreamCommand | CancelCommand | MalformedCommand, Span | None]] = []
            for entry in itertools.islice(pending, _CHUNK):
                await slices.checkpoint()
                chunk.append((entry, spans.start(entry)))
            if not chunk:
                return batch
            built = iter(await self._build_commands([e for e, _ in chunk if isinstance(e, StreamCommand)], slices))
            for entry, span in chunk:
                result = next(built) if isinstance(entry, StreamCommand) else entry
                if isinstance(result, MalformedCommand):
                    spans.malformed(span, result.reason)
                    batch.malformed.append(result)
                elif isinstance(result, CancelCommand):
                    spans.cancel(span)
                    batch.cancels.append(result)
                else:
                    traceparent = spans.prepared(span)  # None unless tracing: no copy of the delivery then
                    batch.deliveries.append(result if traceparent is None else replace(result, traceparent=traceparent))

    async def _build_commands(
        self, commands: list[StreamCommand], slices: Slices
    ) -> list[NewDelivery | MalformedCommand]:
        """Each command's delivery or malformed record, in order: validated, rendered and built one
        step at a time for all of them."""
        outcomes: dict[int, NewDelivery | MalformedCommand] = {}  # by position: each fails a step or is built
        requests: list[tuple[int, SendRequest]] = []
        for index, entry in enumerate(commands):
            await slices.checkpoint()
            try:
                requests.append((index, parse_send_request(entry.payload, may_hold_nul=entry.may_hold_nul)))
            except (ValidationFailed, ValueError) as error:
                outcomes[index] = _refused(entry, error)
        rendered: list[tuple[int, SendRequest, RenderedContent]] = []
        for index, request in requests:
            await slices.checkpoint()
            try:
                rendered.append((index, request, self._render_validated(request)))
            except (ValidationFailed, ValueError) as error:
                outcomes[index] = _refused(commands[index], error)
        for index, request, content in rendered:
            await slices.checkpoint()
            entry = commands[index]
            try:
                outcomes[index] = self.build(
                    "notification",
                    entry.idempotency_key,
                    entry.request_hash,
                    request,
                    content,
                    stream_entry_id=entry.entry_id,
                    stream_fields=entry.fields,
                )
            except (ValidationFailed, ValueError) as error:  # e.g. the MIME builder refused what validation let through
                outcomes[index] = _refused(entry, error)
        return [outcomes[index] for index in range(len(commands))]

    async def commit_stream_batch(self, batch: PreparedBatch, offset: OffsetAdvance) -> BatchResult:
        """Persist a prepared batch with its offset in one transaction (a key may repeat: the
        store judges each repeat); then count it and wake the scheduler."""
        result = BatchResult()
        spans, malformed = batch.spans, batch.malformed
        cancelled: list[CancelOutcome] = []
        try:
            outcomes = await self.store.accept(
                batch.deliveries,
                malformed,
                stream_key=self.stream_key,
                offset=offset,
                idempotency_ttl=self.idempotency_ttl,
                cancels=batch.cancels,
                cancel_outcomes=cancelled,
            )
        except BaseException as exc:
            spans.failed(exc)
            raise
        spans.settled(outcomes, [d.replay_only.reason if d.replay_only else None for d in batch.deliveries], cancelled)
        woke = False
        reasons = result.malformed_reasons
        for delivery, outcome in zip(batch.deliveries, outcomes, strict=True):
            if outcome.kind == "created":
                result.accepted += 1
                woke |= outcome.status == "queued"
            elif outcome.kind == "duplicate":
                result.duplicate += 1
            else:
                result.malformed += 1
                reason = "idempotency_conflict"
                if outcome.kind == "refused" and delivery.replay_only is not None:
                    reason = delivery.replay_only.reason
                reasons[reason] = reasons.get(reason, 0) + 1
        result.malformed += len(malformed)
        for record in malformed:
            reasons[record.reason] = reasons.get(record.reason, 0) + 1
        for cancel in cancelled:
            if cancel.kind == "cancelled":
                result.cancelled += 1
            else:
                result.malformed += 1
                reasons[cancel.kind] = reasons.get(cancel.kind, 0) + 1
        if result.accepted:
            self.instruments.deliveries_accepted.add(result.accepted, {"source": "notification"})
        self._count_finished(outcomes)
        if result.cancelled:
            self.instruments.deliveries_finished.add(result.cancelled, {"status": "cancelled"})
        if woke:
            self.wake_scheduler()
        return result
