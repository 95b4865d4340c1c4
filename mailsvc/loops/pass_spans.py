"""Spans of the scheduler's passes, recorded after the fact so an empty pass costs nothing.

A claim pass serves many deliveries, each with its own trace: the pass is a trace of its own and
links to the span that accepted each delivery it claimed (the attempt spans are those traces' own).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from opentelemetry.trace import Link, Tracer

from mailsvc.domain.model import ClaimedDelivery, StaleRecovery
from mailsvc.instruments import link_to_traceparent

CLAIM_SPAN = "mail.scheduler claim"
RECOVERY_SPAN = "mail.scheduler recover"
MAX_LINKS = 128  # the SDK's default span link limit: more would be dropped anyway


def claim_span(tracer: Tracer, started_ns: int, claims: Sequence[ClaimedDelivery], free_slots: int) -> None:
    links: list[Link] = []
    for claim in claims[:MAX_LINKS]:
        link = link_to_traceparent(claim.traceparent)
        if link is not None:
            links.append(link)
    span = tracer.start_span(
        CLAIM_SPAN,
        start_time=started_ns,
        links=links,
        attributes={"mail.claimed": len(claims), "mail.free_slots": free_slots},
    )
    span.end(time.time_ns())


def recovery_span(tracer: Tracer, started_ns: int, recovered: StaleRecovery) -> None:
    span = tracer.start_span(
        RECOVERY_SPAN,
        start_time=started_ns,
        attributes={"mail.recovered": recovered.total, "mail.dead_lettered": recovered.dead_lettered},
    )
    span.end(time.time_ns())
