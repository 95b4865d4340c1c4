"""`GET /api/v1/internal/events` (SPEC §3): the delivery event feed, oldest first, as CloudEvents."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailsvc.domain.commands import ValidationFailed
from mailsvc.domain.operator_query import parse_event_query
from mailsvc.http.errors import ApiError, JsonResponse, validation_error
from mailsvc.http.routes.intake import PREFIX
from mailsvc.services.event_feed import EventFeedService


def event_routes(feed: EventFeedService, *, read_timeout: float) -> list[Route]:
    async def list_events(request: Request) -> Response:
        params: dict[str, list[str]] = {}
        for name, value in request.query_params.multi_items():
            params.setdefault(name, []).append(value)
        try:
            query = parse_event_query(params)
        except ValidationFailed as error:
            raise validation_error(error.problems) from None
        deadline = asyncio.timeout(read_timeout)
        try:
            async with deadline:
                page = await feed.page(query)
        except TimeoutError:
            if deadline.expired():
                raise ApiError(504, "timeout", f"the read did not finish within {read_timeout:g}s") from None
            raise
        items = [event.cloud_event() for event in page.items]
        return JsonResponse({"items": items, "next_cursor": page.next_cursor})

    return [Route(f"{PREFIX}/events", list_events, methods=["GET"], name="list_events")]
