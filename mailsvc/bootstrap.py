"""The composition root: the only place that builds adapters and wires the process together."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from uuid import UUID

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.routing import Route

from mailsvc.adapters.postgres.advisory_lock import AdvisoryLock
from mailsvc.adapters.postgres.engine import engines_from_settings, queue_engine_from_settings
from mailsvc.adapters.postgres.event_store import EventStore
from mailsvc.adapters.postgres.intake_store import IntakeStore
from mailsvc.adapters.postgres.migrations import SchemaNotAtHead, downgrade, require_head, upgrade
from mailsvc.adapters.postgres.notifications import WorkListener
from mailsvc.adapters.postgres.provider_store import ProviderStore
from mailsvc.adapters.postgres.queue_store import QueueStore
from mailsvc.adapters.postgres.read_store import ReadStore
from mailsvc.adapters.postgres.redrive_store import RedriveStore
from mailsvc.adapters.postgres.replay_store import ReplayStore
from mailsvc.adapters.postgres.retention_store import RetentionStore
from mailsvc.adapters.postgres.suppression_store import SuppressionStore
from mailsvc.adapters.redis_clients import commands_client, stream_client
from mailsvc.adapters.redis_events import RedisEventWriter
from mailsvc.adapters.redis_stream import RedisStreamReader
from mailsvc.adapters.smtp_provider import SmtpProvider
from mailsvc.adapters.stub_provider import StubProvider, write_outbox
from mailsvc.adapters.telemetry import setup_telemetry
from mailsvc.adapters.templates import TemplateCatalog
from mailsvc.domain.clock import utc_now
from mailsvc.domain.mime import ascii_address
from mailsvc.domain.model import Address
from mailsvc.domain.provider import ProviderPolicy
from mailsvc.domain.retry import RetryPolicy
from mailsvc.domain.templates import CatalogError
from mailsvc.errors import StartupError
from mailsvc.http.app import create_app
from mailsvc.http.routes.events import event_routes
from mailsvc.http.routes.intake import intake_routes
from mailsvc.http.routes.operator import operator_routes
from mailsvc.http.routes.policy import policy_routes
from mailsvc.http.routes.provider import provider_routes
from mailsvc.http.server import bind_socket, build_server
from mailsvc.instruments import NO_INSTRUMENTS, Instruments
from mailsvc.loops.base import Loop
from mailsvc.loops.consumer import StreamConsumer
from mailsvc.loops.publisher import EventPublisher
from mailsvc.loops.retention import RetentionLoop, RetentionPolicy
from mailsvc.loops.scheduler import Scheduler
from mailsvc.loops.wakeup import Wakeup
from mailsvc.loops.workers import ResultWriter, WorkerPool
from mailsvc.runtime import Runtime
from mailsvc.services.acceptance import AcceptanceService
from mailsvc.services.event_feed import EventFeedService
from mailsvc.services.execution import ExecutionService, Provider
from mailsvc.services.group_commit import GroupCommitStore
from mailsvc.services.operator_read import OperatorReadService
from mailsvc.services.policy import PolicyService
from mailsvc.services.provider import ProviderService
from mailsvc.services.redrive import RedriveService
from mailsvc.services.replay import ReplayService
from mailsvc.services.resend import ResendService
from mailsvc.settings import Settings

log = logging.getLogger("mailsvc.bootstrap")


@dataclass
class Resources:
    """Connections owned by the process; closed in reverse order of opening."""

    redis_commands: Redis
    redis_stream: Redis
    primary: AsyncEngine
    queue: AsyncEngine  # the primary again, in the scheduler's and result writer's own pool
    replicas: list[AsyncEngine] = field(default_factory=list)

    async def close(self) -> None:
        for engine in [*self.replicas, self.queue, self.primary]:
            await engine.dispose()
        await self.redis_stream.aclose()
        await self.redis_commands.aclose()


@contextlib.contextmanager
def process_telemetry(settings: Settings) -> Iterator[Instruments]:
    """The process's traces and metrics (OpenTelemetry providers from the `OTEL_*` settings) as the
    instruments everything records into; flushed on the way out (an unreachable collector costs
    at most the export timeout)."""
    telemetry = setup_telemetry(settings.telemetry)
    try:
        yield Instruments(telemetry.tracer_provider, telemetry.meter_provider)
    finally:
        telemetry.shutdown()


async def migrate(dsn: str, *, downgrade_to: str | None = None) -> None:
    """`mailsvc migrate`: upgrade to the latest revision (or downgrade to `downgrade_to`)."""
    if downgrade_to:
        await downgrade(dsn, downgrade_to)
    else:
        await upgrade(dsn)


async def _ping_redis(client: Redis, role: str, settings: Settings) -> None:
    addr = settings.redis.master_addr
    try:
        async with asyncio.timeout(settings.redis.operation_timeout.total_seconds()):
            await client.ping()
    except Exception as exc:
        raise StartupError(f"redis ({role} client) at {addr} is unreachable: {type(exc).__name__}") from exc


async def _check_postgres(engine: AsyncEngine, role: str, settings: Settings) -> None:
    try:
        async with asyncio.timeout(settings.postgres.operation_timeout.total_seconds()):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            await require_head(engine)
    except SchemaNotAtHead as exc:
        raise StartupError(f"postgresql ({role}): {exc}") from exc
    except Exception as exc:
        raise StartupError(f"postgresql ({role}) is unreachable: {type(exc).__name__}: {str(exc)[:200]}") from exc


async def open_resources(settings: Settings) -> Resources:
    """Open and check every connection; raise `StartupError` (one clear line) on the first failure."""
    redis_commands = commands_client(settings.redis)
    redis_stream = stream_client(settings.redis, settings.stream.block_timeout.total_seconds())
    primary, replicas = engines_from_settings(settings.postgres)
    resources = Resources(
        redis_commands, redis_stream, primary, queue_engine_from_settings(settings.postgres), replicas
    )
    try:
        await _ping_redis(redis_commands, "commands", settings)
        await _ping_redis(redis_stream, "stream", settings)
        await _check_postgres(primary, "primary", settings)
        for index, replica in enumerate(replicas):
            await _check_postgres(replica, f"replica {index}", settings)
    except BaseException:
        await resources.close()
        raise
    return resources


def load_catalog(settings: Settings) -> TemplateCatalog:
    try:
        return TemplateCatalog.load(settings.templates.dir)
    except CatalogError as error:
        listing = "\n  ".join(error.problems)
        raise StartupError(
            f"template catalog {settings.templates.dir} is invalid ({len(error.problems)} problems):\n  {listing}"
        ) from error


def build_provider(settings: Settings) -> Provider:
    if settings.smtp.mode == "smtp":
        return SmtpProvider(settings.smtp, settings.workers.concurrency)
    return StubProvider(settings.smtp.stub_outbox_dir)


def provider_policy(settings: Settings) -> ProviderPolicy:
    group = settings.provider_policy
    return ProviderPolicy(group.pause_after, group.probe_interval, group.rate_limit, group.rate_burst)


def build_provider_service(
    settings: Settings, resources: Resources, instruments: Instruments = NO_INSTRUMENTS
) -> ProviderService:
    """The provider's shared state as the operator sees it (`GET /provider`), its log and gauge."""
    return ProviderService(
        ProviderStore(resources.primary),
        mode=settings.smtp.mode,
        policy=provider_policy(settings),
        instruments=instruments,
    )


def build_execution(
    settings: Settings,
    resources: Resources,
    wakeup: Wakeup,
    instruments: Instruments = NO_INSTRUMENTS,
    provider_service: ProviderService | None = None,
) -> tuple[Scheduler, WorkerPool, Provider]:
    """The scheduler and the worker pool it feeds, with the provider they send through."""
    provider = build_provider(settings)
    smtp_timeout = settings.smtp.timeout
    states = provider_service or build_provider_service(settings, resources, instruments)
    queue = QueueStore(resources.queue, provider=provider_policy(settings), on_provider_change=states.changed)
    execution = ExecutionService(
        provider=provider,
        policy=RetryPolicy(settings.retry.base_delay, settings.retry.max_delay, settings.retry.max_attempts),
        envelope_from=ascii_address(settings.smtp.from_email),  # its wire form, once
        # the SMTP provider bounds the whole attempt by MAIL_SMTP_TIMEOUT itself (a second timer per
        # attempt cost ~2 % of the service's CPU); the stub gets the safety net
        attempt_timeout=None if isinstance(provider, SmtpProvider) else smtp_timeout.total_seconds() + 5,
        clock=utc_now,
        instruments=instruments,
        suppression_ttl=settings.retention.suppression_ttl,
    )
    # the claim deadline: how long a result can be applied — a wait to send (`WorkerPool.start_within`, 10 s),
    # one attempt (MAIL_SMTP_TIMEOUT, or the stub's 5 s more) and 15 s to write the result
    lease = smtp_timeout + timedelta(seconds=30)
    pool = WorkerPool(
        execution=execution,
        writer=ResultWriter(queue, lease=lease, instruments=instruments),
        concurrency=settings.workers.concurrency,
        # a claim waiting for each sender while its result is written: result writes of ~15 instead
        # of ~8 results each (README, fifth round)
        slots=2 * settings.workers.concurrency,
    )
    states.on_change = pool.provider_changed  # a claim that waited across a pause is given back
    scheduler = Scheduler(
        store=queue,
        pool=pool,
        wakeup=wakeup,
        lease=lease,
        max_attempts=settings.retry.max_attempts,
        # a quarter of the senders: claims and result writes of ~4 (16 senders) instead of ~1 each
        claim_batch=settings.workers.concurrency // 4,
        instruments=instruments,
        samplers=[states.sample],
    )
    pool.on_slot_freed = scheduler.slot_freed
    pool.writer.claims_wanted = scheduler.claims_for_results  # the next claims ride on the result write
    pool.writer.on_claimed = scheduler.results_claimed
    return scheduler, pool, provider


def _dev_outbox(settings: Settings) -> Callable[[UUID, bytes], Awaitable[None]] | None:
    """Stub mode with `MAIL_STUB_OUTBOX_DIR`: where suppressed auth deliveries are written (SPEC §4)."""
    directory = settings.smtp.stub_outbox_dir
    if settings.smtp.mode != "stub" or directory is None:
        return None
    return functools.partial(write_outbox, directory)


def build_publisher(
    settings: Settings, resources: Resources, instruments: Instruments = NO_INSTRUMENTS
) -> EventPublisher | None:
    """The event publisher (SPEC §11), or None when `MAIL_REDIS_EVENT_STREAM` is empty."""
    stream = settings.redis.event_stream
    if not stream:
        return None
    return EventPublisher(
        source=EventStore([resources.primary]),
        sink=RedisEventWriter(resources.redis_commands, stream, maxlen=settings.redis.event_stream_maxlen),
        stream_key=stream,
        lock=AdvisoryLock(settings.postgres.primary_dsn.reveal(), f"events:{stream}"),
        instruments=instruments,
    )


def build_operator(
    settings: Settings,
    resources: Resources,
    catalog: TemplateCatalog,
    acceptance: AcceptanceService,
    instruments: Instruments = NO_INSTRUMENTS,
) -> tuple[list[Route], RetentionLoop]:
    """Operator routes (reads on the replicas when configured) and the retention loop."""
    reads = OperatorReadService(store=ReadStore(resources.replicas or [resources.primary]), catalog=catalog)
    resends = ResendService(sources=ReadStore([resources.primary]), acceptance=acceptance)
    redrives = RedriveService(
        store=RedriveStore(resources.primary, IntakeStore(resources.primary)),
        resends=resends,
        idempotency_ttl=settings.retention.idempotency_ttl,
        wake_scheduler=acceptance.wake_scheduler,
    )
    replays = ReplayService(
        store=ReplayStore(resources.primary, IntakeStore(resources.primary)),
        acceptance=acceptance,
        idempotency_ttl=settings.retention.idempotency_ttl,
        instruments=instruments,
    )
    read_timeout = settings.operator.request_timeout.total_seconds()
    routes = operator_routes(
        reads, resends, redrives, replays, read_timeout=read_timeout, max_body_bytes=settings.http.max_body_bytes
    )
    feed = EventFeedService(EventStore(resources.replicas or [resources.primary]))
    routes += event_routes(feed, read_timeout=read_timeout)
    policy = PolicyService(
        suppressions=SuppressionStore(resources.primary),
        cancels=IntakeStore(resources.primary),
        reads=ReadStore([resources.primary]),
        instruments=instruments,
    )
    routes += policy_routes(policy, settings.http.max_body_bytes)
    retention = RetentionLoop(
        store=RetentionStore(resources.primary, event_stream=settings.redis.event_stream),
        policy=RetentionPolicy(
            settings.retention.delivery_retention,
            settings.retention.malformed_command_retention,
            # never longer than the delivery's own life (an explicit longer one is refused at load)
            min(settings.retention.event_retention, settings.retention.delivery_retention),
        ),
        interval=settings.retention.cleanup_interval,
        instruments=instruments,
    )
    return routes, retention


async def build_runtime(
    settings: Settings, *, extra_loops: list[Loop] | None = None, instruments: Instruments = NO_INSTRUMENTS
) -> Runtime:
    """Everything `mailsvc serve` runs, connected and checked, not yet started."""
    catalog = load_catalog(settings)
    resources = await open_resources(settings)
    try:
        wakeup = Wakeup()
        intake_store = IntakeStore(resources.primary)
        publisher = build_publisher(settings, resources, instruments)

        def work_committed() -> None:
            wakeup.set()
            if publisher is not None:
                publisher.wake()

        acceptance = AcceptanceService(
            store=GroupCommitStore(intake_store),
            renderer=catalog,
            from_address=Address(settings.smtp.from_email, settings.smtp.from_name or None),
            suppress_auth=settings.smtp.mode == "stub",
            idempotency_ttl=settings.retention.idempotency_ttl,
            stream_key=settings.redis.command_stream,
            max_rendered_bytes=settings.templates.max_rendered_bytes,
            wake_scheduler=work_committed,
            instruments=instruments,
            dev_outbox=_dev_outbox(settings),
            request_hash_key=settings.retention.idempotency_hash_key.reveal().encode(),
        )
        consumer = StreamConsumer(
            reader=RedisStreamReader(
                resources.redis_stream,
                settings.redis.command_stream,
                count=settings.stream.batch_size,
                batch_bytes=settings.stream.batch_bytes,
            ),
            stream_key=settings.redis.command_stream,
            offsets=intake_store,
            acceptance=acceptance,
            lock=AdvisoryLock(settings.postgres.primary_dsn.reveal(), f"consumer:{settings.redis.command_stream}"),
            block_ms=int(settings.stream.block_timeout.total_seconds() * 1000),
            instruments=instruments,
        )
        states = build_provider_service(settings, resources, instruments)
        scheduler, pool, provider = build_execution(settings, resources, wakeup, instruments, states)
        if publisher is not None:
            wake_publisher = publisher.wake
            pool.writer.on_written = lambda record, applied: wake_publisher() if applied else None
        listener = WorkListener(settings.postgres.primary_dsn.reveal(), work_committed)
        operator, retention = build_operator(settings, resources, catalog, acceptance, instruments)
        routes = [*intake_routes(acceptance, settings.http.max_body_bytes), *operator, *provider_routes(states)]
        app = create_app(
            routes, settings.http, concurrency_limit=settings.postgres.max_open_conns * 8, instruments=instruments
        )
        sock = bind_socket(settings.http)
        host, port = sock.getsockname()[:2]
        log.info("http_listening", extra={"host": host, "port": port})
        server = build_server(app, settings.http)
        loops: list[Loop] = [consumer, scheduler, pool, listener, retention, *(extra_loops or [])]
        if publisher is not None:
            loops.append(publisher)
        if not (settings.http.intake_tokens or settings.http.operator_tokens) and not (settings.http.addr.is_loopback):
            log.warning(
                "http_listener_unauthenticated",
                extra={"addr": str(settings.http.addr), "hint": "set MAIL_INTERNAL_HTTP_*_TOKENS"},
            )
    except BaseException:
        await resources.close()
        raise

    async def close_socket() -> None:
        sock.close()

    return Runtime(
        server=server,
        sockets=[sock],
        loops=loops,
        shutdown_timeout=settings.process.shutdown_timeout.total_seconds(),
        closers=[provider.close, resources.close, close_socket],
    )
