"""`GET /events` (SPEC §3, §11): the delivery event feed from PostgreSQL, for consumers without Redis."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

from mailsvc.domain.events import EventPosition, EventType, StoredEvent
from mailsvc.domain.operator_query import EventQuery


class EventFeedStore(Protocol):
    async def feed(
        self, after: EventPosition, *, delivery_id: UUID | None, types: Sequence[EventType], limit: int
    ) -> list[StoredEvent]: ...


@dataclass(frozen=True, slots=True)
class FeedPage:
    items: tuple[StoredEvent, ...]
    next_cursor: str  # always given: the position to poll from next, past these items


class EventFeedService:
    """Oldest first, with the publisher's visibility horizon: a cursor never passes an event that
    could still commit before it. May raise `StoreUnavailable`."""

    def __init__(self, store: EventFeedStore) -> None:
        self.store = store

    async def page(self, query: EventQuery) -> FeedPage:
        items = await self.store.feed(query.after, delivery_id=query.delivery_id, types=query.types, limit=query.limit)
        last = items[-1].position if items else query.after
        return FeedPage(tuple(items), last.token())
