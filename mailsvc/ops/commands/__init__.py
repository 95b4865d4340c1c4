"""The subcommand groups of `mailsvc ops`, in `--help` order: one module per group."""

from __future__ import annotations

from mailsvc.ops.commands import (
    actions,
    dead_letters,
    deliveries,
    events,
    malformed,
    provider,
    suppressions,
    templates,
)
from mailsvc.ops.registry import Group

GROUPS: tuple[Group, ...] = (
    deliveries.GROUP,
    dead_letters.GROUP,
    malformed.GROUP,
    suppressions.GROUP,
    provider.GROUP,
    events.GROUP,
    templates.GROUP,
    actions.GROUP,
)
