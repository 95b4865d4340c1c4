"""One exception base for the service; adapters translate driver errors into these."""

from __future__ import annotations


class MailsvcError(Exception):
    """Base class of every error mailsvc raises on purpose."""


class StartupError(MailsvcError):
    """The process cannot start: a dependency is unreachable or misconfigured (one clear line)."""


class StoreUnavailable(MailsvcError):
    """PostgreSQL could not be reached or timed out."""


class NotFound(MailsvcError):
    """The named delivery (or other entity) does not exist."""


class IdempotencyConflict(MailsvcError):
    """The idempotency key was used with a different request within its TTL."""

    def __init__(self, key: str) -> None:
        super().__init__(f"idempotency key {key!r} was already used with a different request")
        self.key = key


class NotResendable(MailsvcError):
    """Only a delivery in a terminal status can be resent."""
