"""Fixtures shared by the SMTP provider's test modules."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.smtp_client import ProviderFactory, Providers


@pytest.fixture
async def provider_for() -> AsyncIterator[ProviderFactory]:
    """Build providers for a server address; every one is closed at the end of the test."""
    providers = Providers()
    yield providers.make
    await providers.close()
