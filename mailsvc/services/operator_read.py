"""Operator reads (SPEC §3): find deliveries, explain what happened to one, list what went wrong."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol, TypeVar
from uuid import UUID

from mailsvc.domain.operator_actions import OperatorAction
from mailsvc.domain.operator_query import DeliveryFilter, Keyset, ListKind, MalformedQuery, PageRequest, encode_cursor
from mailsvc.domain.templates import TemplateInfo
from mailsvc.domain.views import (
    AttemptView,
    DeadLetterItem,
    DeliveryDetail,
    DeliverySummary,
    MalformedItem,
    Page,
)
from mailsvc.errors import NotFound

T = TypeVar("T")


class OperatorReadStore(Protocol):
    async def list_deliveries(self, query: DeliveryFilter, page: PageRequest) -> list[DeliverySummary]: ...

    async def get_delivery(self, delivery_id: UUID, *, include_body: bool) -> DeliveryDetail | None: ...

    async def list_attempts(self, delivery_id: UUID) -> list[AttemptView] | None: ...

    async def list_dead_letters(self, page: PageRequest) -> list[DeadLetterItem]: ...

    async def list_malformed(self, query: MalformedQuery, page: PageRequest) -> list[MalformedItem]: ...

    async def list_operator_actions(self, kind: str | None, page: PageRequest) -> list[OperatorAction]: ...


class TemplateListing(Protocol):
    def templates(self) -> list[TemplateInfo]: ...


def _page(kind: ListKind, rows: Sequence[T], limit: int, position: Callable[[T], tuple[datetime, str]]) -> Page[T]:
    """`rows` holds up to `limit + 1` items: the extra one only says another page exists."""
    items = tuple(rows[:limit])
    if len(rows) <= limit or not items:
        return Page(items, None)
    at, key = position(items[-1])
    return Page(items, encode_cursor(kind, Keyset(at, key)))


def _written(action: OperatorAction) -> datetime:
    assert action.created_at is not None  # read back from the store
    return action.created_at


def _one_more(page: PageRequest) -> PageRequest:
    return PageRequest(page.limit + 1, page.after)


class OperatorReadService:
    """Read-only; every method may raise `StoreUnavailable`, the detail reads also `NotFound`."""

    def __init__(self, *, store: OperatorReadStore, catalog: TemplateListing) -> None:
        self.store = store
        self.catalog = catalog

    async def deliveries(self, query: DeliveryFilter, page: PageRequest) -> Page[DeliverySummary]:
        rows = await self.store.list_deliveries(query, _one_more(page))
        return _page("deliveries", rows, page.limit, lambda d: (d.created_at, str(d.delivery_id)))

    async def delivery(self, delivery_id: UUID, *, include_body: bool = False) -> DeliveryDetail:
        found = await self.store.get_delivery(delivery_id, include_body=include_body)
        if found is None:
            raise NotFound(f"no delivery {delivery_id}")
        return found

    async def attempts(self, delivery_id: UUID) -> list[AttemptView]:
        """Oldest first."""
        found = await self.store.list_attempts(delivery_id)
        if found is None:
            raise NotFound(f"no delivery {delivery_id}")
        return found

    async def dead_letters(self, page: PageRequest) -> Page[DeadLetterItem]:
        rows = await self.store.list_dead_letters(_one_more(page))
        return _page("dead_letters", rows, page.limit, lambda d: (d.created_at, str(d.delivery_id)))

    async def malformed_commands(self, query: MalformedQuery, page: PageRequest) -> Page[MalformedItem]:
        rows = await self.store.list_malformed(query, _one_more(page))
        return _page("malformed", rows, page.limit, lambda m: (m.received_at, str(m.malformed_id)))

    async def operator_actions(self, kind: str | None, page: PageRequest) -> Page[OperatorAction]:
        rows = await self.store.list_operator_actions(kind, _one_more(page))
        return _page("operator_actions", rows, page.limit, lambda a: (_written(a), str(a.action_id)))

    def templates(self) -> list[TemplateInfo]:
        return self.catalog.templates()
