"""PostgreSQL engines (primary and replicas) with the configured pool settings."""

from __future__ import annotations

import re
from collections.abc import Mapping

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from mailsvc.adapters.postgres.tcp_liveness import SERVER_SETTINGS as TCP_LIVENESS
from mailsvc.settings import PostgresSettings

# the server's statement_timeout error arrives first whenever the server can still answer
CLIENT_DEADLINE_MARGIN_S = 1.0

# The scheduler's and result writer's statements (claim, finish, recovery) find every row they
# touch by key. Each is prepared once per connection, and PostgreSQL keeps the generic plan it made
# after five runs while `delivery_queue` goes from a few rows to a backlog of millions: a plan made
# while the queue was small scans it whole (seen in a bench: every result write of ~7 deliveries
# read 17,000 queue rows, 2.3 ms instead of 0.3, until an autovacuum ANALYZE happened to replan
# it). Their own connections therefore never plan a sequential scan where an index serves — nor a
# bitmap scan: the result write's delete chose one over the claims index (every claimed row, and
# every row claimed and deleted since the last vacuum: a bitmap scan never marks an index entry
# dead), reading ~7,000 entries and ~100 heap pages a write, a third of its time in a bench, where
# the primary key finds each row.
QUEUE_PLANNER = {"enable_seqscan": "off", "enable_bitmapscan": "off"}
QUEUE_POOL_SIZE = 2  # the scheduler's pass and the writer's batch; releases and expiries overflow
QUEUE_POOL_OVERFLOW = 2


def async_url(dsn: str) -> str:
    """`postgres://…` / `postgresql://…` → the SQLAlchemy asyncpg URL.

    libpq's `sslmode=` becomes asyncpg's `ssl=` (same values), so operators can paste the DSN
    they use with psql.
    """
    url = re.sub(r"^postgres(ql)?(\+asyncpg)?://", "postgresql+asyncpg://", dsn)
    return re.sub(r"([?&])sslmode=", r"\1ssl=", url)


def create_engine(
    dsn: str,
    *,
    pool_size: int = 5,
    max_overflow: int = 0,
    pool_recycle_s: float = 1800,
    operation_timeout_s: float | None = None,
    application_name: str = "mailsvc",
    planner: Mapping[str, str] | None = None,
) -> AsyncEngine:
    # a vanished replica's sessions end 15 s after it went silent, with the row locks of any
    # transaction it had in flight: otherwise they would block its successor's offsets for hours
    server_settings = {"application_name": application_name, **TCP_LIVENESS, **(planner or {})}
    command_timeout = None
    if operation_timeout_s is not None:
        # a statement that outlives the operation timeout is cancelled by the server itself …
        server_settings["statement_timeout"] = str(int(operation_timeout_s * 1000))
        # … and one the server never answers (it never got it: a half-open connection, a
        # partition) is given up by the client a little later, instead of waiting forever
        command_timeout = operation_timeout_s + CLIENT_DEADLINE_MARGIN_S
    return create_async_engine(
        async_url(dsn),
        # an SQL error's text must never carry the statement's parameters (addresses, bodies)
        # into a log line or an exception message
        hide_parameters=True,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_recycle=pool_recycle_s,
        pool_pre_ping=False,
        pool_timeout=operation_timeout_s or 30,
        connect_args={
            "server_settings": server_settings,
            "timeout": operation_timeout_s or 10,
            "command_timeout": command_timeout,
        },
    )


def create_queue_engine(
    dsn: str, *, pool_recycle_s: float = 1800, operation_timeout_s: float | None = None
) -> AsyncEngine:
    """The engine of the scheduler and the result writer: a small pool of its own whose plans never
    scan `delivery_queue` whole (`QUEUE_PLANNER`)."""
    return create_engine(
        dsn,
        pool_size=QUEUE_POOL_SIZE,
        max_overflow=QUEUE_POOL_OVERFLOW,
        pool_recycle_s=pool_recycle_s,
        operation_timeout_s=operation_timeout_s,
        application_name="mailsvc-queue",
        planner=QUEUE_PLANNER,
    )


def queue_engine_from_settings(settings: PostgresSettings) -> AsyncEngine:
    return create_queue_engine(
        settings.primary_dsn.reveal(),
        pool_recycle_s=settings.conn_max_lifetime.total_seconds(),
        operation_timeout_s=settings.operation_timeout.total_seconds(),
    )


def engines_from_settings(settings: PostgresSettings) -> tuple[AsyncEngine, list[AsyncEngine]]:
    """The primary engine and one engine per replica DSN.

    `MAX_IDLE_CONNS` becomes the kept pool, the rest up to `MAX_OPEN_CONNS` are overflow
    connections closed when returned.
    """
    idle = max(1, settings.max_idle_conns)
    overflow = max(0, settings.max_open_conns - idle)
    kwargs = {
        "pool_size": idle,
        "max_overflow": overflow,
        "pool_recycle_s": settings.conn_max_lifetime.total_seconds(),
        "operation_timeout_s": settings.operation_timeout.total_seconds(),
    }
    primary = create_engine(settings.primary_dsn.reveal(), **kwargs)  # type: ignore[arg-type]
    replicas = [create_engine(dsn.reveal(), **kwargs) for dsn in settings.replica_dsns]  # type: ignore[arg-type]
    return primary, replicas
