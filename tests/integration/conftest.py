"""Fixtures shared by the integration test modules: SMTP providers, the delivery queue."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.queue import Queue, open_queue
from tests.support.smtp_client import ProviderFactory, Providers


@pytest.fixture
async def provider_for() -> AsyncIterator[ProviderFactory]:
    """Build providers for a server address; every one is closed at the end of the test."""
    providers = Providers()
    yield providers.make
    await providers.close()


@pytest.fixture
async def queue(database_dsn: str) -> AsyncIterator[Queue]:
    """The delivery queue on this test's own database."""
    async with open_queue(database_dsn) as opened:
        yield opened
