"""One exception base for the service; adapters translate driver errors into these."""

from __future__ import annotations


class MailsvcError(Exception):
    """Base class of every error mailsvc raises on purpose."""


class StartupError(MailsvcError):
    """The process cannot start: a dependency is unreachable or misconfigured (one clear line)."""


class StoreUnavailable(MailsvcError):
    """PostgreSQL could not be reached, timed out, or failed for a reason of its own that a retry
    clears (connection lost, shutting down, out of connections, deadlock) — never an item's data."""


class DataRefused(MailsvcError):
    """PostgreSQL (or the driver, before sending) refused the data of this statement: SQLSTATE
    class 22 or 23. That item's failure, never an outage; retrying the same data fails again."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class NotFound(MailsvcError):
    """The named delivery (or other entity) does not exist."""


class IdempotencyConflict(MailsvcError):
    """The idempotency key was used with a different request within its TTL."""

    def __init__(self, key: str) -> None:
        super().__init__(f"idempotency key {key!r} was already used with a different request")
        self.key = key


class NotResendable(MailsvcError):
    """Only a delivery in a terminal status can be resent."""


class ContentRedacted(MailsvcError):
    """The delivery was sensitive and is terminal: its content is gone (SPEC §13), nothing to send again."""


class ActionKeyTaken(MailsvcError):
    """Another request recorded an operator action with this `Idempotency-Key` first."""


class NotCancellable(MailsvcError):
    """Only a `queued` delivery can be cancelled: it is being sent, or it is finished."""


class OffsetMoved(MailsvcError):
    """Another consumer advanced the stream offset: this batch was rolled back."""


class StreamUnavailable(MailsvcError):
    """Redis could not be read: unreachable (`refused` False), or it answered with an error reply
    (`refused` True: NOPERM, BUSY, an unknown command …) — never "the stream is missing"."""

    def __init__(self, cause: BaseException, *, refused: bool) -> None:
        super().__init__(f"{type(cause).__name__}: {str(cause)[:200]}")
        self.refused = refused
        self.error_class = type(cause).__name__  # the driver's, for logs: NoPermissionError, ConnectionError …
