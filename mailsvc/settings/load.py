"""`load_settings`: walk every group's declarations, then the rules that span fields, in one place.

Every problem is collected and reported together (`SettingsError.problems`, one line per
problem); the CLI prints them and exits with code 2.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, get_type_hints

from mailsvc.settings.declare import Problems, read_group
from mailsvc.settings.groups import Settings
from mailsvc.settings.values import format_duration


def group_types() -> dict[str, type[Any]]:
    """Each group's attribute name on `Settings` and its class, in declaration order."""
    hints = get_type_hints(Settings)
    return {item.name: hints[item.name] for item in fields(Settings)}


def load_settings(env: Mapping[str, str] | None = None, *, dotenv: Path | None = Path(".env")) -> Settings:
    """Build settings from `env` (default: `os.environ` over the `.env` file); raise `SettingsError`."""
    if env is None:
        env = _process_environment(dotenv)
    problems = Problems()
    settings = Settings(**{name: read_group(group, env, problems) for name, group in group_types().items()})
    _check_across_fields(settings, env, problems)
    problems.raise_if_any()
    return settings


def _process_environment(dotenv: Path | None) -> dict[str, str]:
    merged: dict[str, str] = {}
    if dotenv is not None and dotenv.is_file():
        from dotenv import dotenv_values

        merged.update({k: v for k, v in dotenv_values(dotenv).items() if v is not None})
    merged.update(os.environ)
    return merged


def _is_set(env: Mapping[str, str], name: str) -> bool:
    return bool(env.get(name, "").strip())


def _check_across_fields(settings: Settings, env: Mapping[str, str], problems: Problems) -> None:
    """Rules no single variable can check. Each is skipped when one of its variables already
    failed (it holds its default then, and the comparison would only mislead)."""
    postgres, retry, retention = settings.postgres, settings.retry, settings.retention
    idle, open_ = "MAIL_POSTGRES_MAX_IDLE_CONNS", "MAIL_POSTGRES_MAX_OPEN_CONNS"
    if not problems.any_of(idle, open_) and postgres.max_idle_conns > postgres.max_open_conns:
        problems.add(idle, f"must not exceed {open_}")

    # the stub has a sender of its own and needs no server; real delivery needs both
    if settings.smtp.mode == "smtp":
        for name in ("MAIL_SMTP_ADDR", "MAIL_SMTP_FROM_EMAIL"):
            if not _is_set(env, name):
                problems.add(name, "required but not set")

    base, cap = "MAIL_RETRY_BASE_DELAY", "MAIL_RETRY_MAX_DELAY"
    if not problems.any_of(base, cap) and retry.base_delay > retry.max_delay:
        problems.add(base, f"must not exceed {cap}")

    ttl, kept = "MAIL_IDEMPOTENCY_TTL", "MAIL_DELIVERY_RETENTION"
    if not problems.any_of(ttl, kept) and retention.idempotency_ttl > retention.delivery_retention:
        # retention deletes the delivery and its key with it: a replay after that would send again
        problems.add(
            ttl,
            f"{format_duration(retention.idempotency_ttl)} must not exceed {kept}"
            f" ({format_duration(retention.delivery_retention)}): a key must never outlive its delivery",
        )

    events = "MAIL_EVENT_RETENTION"
    # when unset, the default gives way to a shorter delivery retention (bootstrap takes the minimum)
    explicit = _is_set(env, events)
    if explicit and not problems.any_of(events, kept) and retention.event_retention > retention.delivery_retention:
        problems.add(
            events,
            f"{format_duration(retention.event_retention)} must not exceed {kept}"
            f" ({format_duration(retention.delivery_retention)}): an event never outlives its delivery",
        )


def describe(settings: Settings) -> dict[str, Any]:
    """A loggable view of the settings: secrets stay masked through `Secret.__repr__`."""
    out: dict[str, Any] = {}
    for group in fields(settings):
        value = getattr(settings, group.name)
        out[group.name] = {f.name: str(getattr(value, f.name)) for f in fields(value)}
    return out
