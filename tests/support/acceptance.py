"""The acceptance service as tests build it: the shipped templates, a fixed sender, a 24 h TTL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from mailsvc.adapters.templates import TemplateCatalog
from mailsvc.domain.model import Address
from mailsvc.services.acceptance import AcceptanceService
from tests.conftest import REPO


def acceptance_service(**overrides: Any) -> AcceptanceService:
    """Without a `store` only the preparing half works (`prepare`, `prepare_stream_batch`,
    `build`): the `NewDelivery` rows the doors would persist."""
    options: dict[str, Any] = {
        "store": None,
        "from_address": Address("mailer@example.com"),
        "suppress_auth": False,
        "idempotency_ttl": timedelta(hours=24),
        "stream_key": "unused",
    } | overrides
    if "renderer" not in options:  # loaded only when none is given: it reads every template
        options["renderer"] = TemplateCatalog.load(REPO / "templates")
    return AcceptanceService(**options)
