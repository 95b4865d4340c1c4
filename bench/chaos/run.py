"""One chaos run, start to end: servers, sink, proxy, replicas; load and faults; drain; reconcile.

Everything lives in one work folder (servers' data, every replica incarnation's log, the ledger,
the sink's record, `facts.json` and `report.json`). It is removed after a clean run and kept
after a failed one (or with `--keep`), so what went wrong can be read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from bench.chaos import report
from bench.chaos.children import LineChild
from bench.chaos.cluster import PostgresCluster, RedisServer
from bench.chaos.collect import read_database, read_logs, read_sink
from bench.chaos.commands import CommandFactory
from bench.chaos.facts import to_json
from bench.chaos.faults import FaultRunner, Targets
from bench.chaos.ledger import Ledger
from bench.chaos.load import HttpClient, Progress, RedisEpoch, StreamProducer, producer_client
from bench.chaos.reconcile import parse_id, reconcile
from bench.chaos.replicas import Replicas, ReplicaSlot
from bench.chaos.schedule import REPLICAS, SERVERS, Fault, Plan, build_schedule
from bench.processes import BenchError
from bench.service import template_dir
from devtools.embedded import free_port
from mailsvc.adapters.postgres.migrations import upgrade

STREAM = "mail:commands"
ALL_ROUTES = [f"r{slot}-{server}" for slot in range(REPLICAS) for server in SERVERS]
FROM_EMAIL = "chaos@mailsvc.example.com"


@dataclass(frozen=True)
class ChaosOptions:
    plan: Plan
    stream_rate: float = 50.0
    http_clients: int = 8
    http_rate: float = 2.0  # per client
    drain_timeout: float = 300.0
    work_dir: Path | None = None
    keep: bool = False
    extra_env: tuple[tuple[str, str], ...] = ()
    progress_every: float = 30.0


def replica_env(slot: int, ports: dict[str, int], http_port: int, options: ChaosOptions) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("MAIL_", "OTEL_"))}
    env = {
        **keep,
        "MAIL_POSTGRES_PRIMARY_DSN": f"postgresql://postgres@127.0.0.1:{ports[f'r{slot}-pg']}/mailsvc",
        "MAIL_POSTGRES_MAX_OPEN_CONNS": "10",
        "MAIL_POSTGRES_MAX_IDLE_CONNS": "5",
        "MAIL_REDIS_MASTER_ADDR": f"127.0.0.1:{ports[f'r{slot}-redis']}",
        "MAIL_REDIS_PASSWORD": "",
        "MAIL_REDIS_COMMAND_STREAM": STREAM,
        "MAIL_STREAM_BLOCK_TIMEOUT": "1s",
        "MAIL_INTERNAL_HTTP_ADDR": f"127.0.0.1:{http_port}",
        "MAIL_TEMPLATE_DIR": str(template_dir()),
        "MAIL_SMTP_MODE": "smtp",
        "MAIL_SMTP_ADDR": f"127.0.0.1:{ports[f'r{slot}-smtp']}",
        "MAIL_SMTP_TLS": "none",
        "MAIL_SMTP_FROM_EMAIL": FROM_EMAIL,
        "MAIL_SMTP_TIMEOUT": "5s",
        # short retry delays, and enough attempts that the faults alone never exhaust a delivery
        "MAIL_RETRY_BASE_DELAY": "1s",
        "MAIL_RETRY_MAX_DELAY": "5s",
        "MAIL_RETRY_MAX_ATTEMPTS": "30",
        "MAIL_SHUTDOWN_TIMEOUT": "10s",
        "MAIL_LOG_LEVEL": "info",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
    }
    env.update(dict(options.extra_env))
    return env


def _say(text: str) -> None:
    print(f"chaos: {text}", file=sys.stderr, flush=True)


@dataclass
class Stage:
    """What the load and the faults act on."""

    folder: Path
    ledger: Ledger
    replicas: Replicas
    postgres: PostgresCluster
    redis: RedisServer
    proxy: LineChild
    epoch: RedisEpoch = field(default_factory=RedisEpoch)
    progress: Progress = field(default_factory=Progress)


@contextlib.asynccontextmanager
async def _work_folder(options: ChaosOptions) -> AsyncIterator[Path]:
    folder = options.work_dir or Path(tempfile.mkdtemp(prefix="mailsvc-chaos-"))
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o755)  # noqa: S103 - the PostgreSQL cluster belongs to an unprivileged user
    yield folder


def _postgres_folder(folder: Path) -> Path:
    """`folder/pg`, unless the cluster's unprivileged user cannot reach it (a private parent, as
    pytest's tmp_path): then a folder of its own in the temporary directory, named in the report."""
    if all(os.stat(parent).st_mode & stat.S_IXOTH for parent in folder.resolve().parents):
        return folder / "pg"
    own = Path(tempfile.mkdtemp(prefix="mailsvc-chaos-pg-"))
    os.chmod(own, 0o755)  # noqa: S103 - see above
    return own


async def run_chaos(options: ChaosOptions) -> tuple[int, dict[str, Any]]:
    """The whole run; (exit code, report document). Exit 1 when any promise was broken."""
    plan = options.plan
    schedule = build_schedule(plan)
    started_at = time.time()
    async with _work_folder(options) as folder, contextlib.AsyncExitStack() as stack:
        _say(f"seed {plan.seed}, {plan.seconds / 60:g} min of faults, work folder {folder}")
        postgres = await PostgresCluster.create(_postgres_folder(folder))
        if postgres.folder.parent != folder:
            stack.callback(shutil.rmtree, postgres.folder, ignore_errors=True)
            _say(f"PostgreSQL cluster in {postgres.folder} (the work folder is private)")
        await postgres.start()
        stack.push_async_callback(postgres.stop)
        dsn = await postgres.create_database("mailsvc")
        await upgrade(dsn)
        redis = RedisServer.create(folder / "redis")
        await redis.start()
        stack.push_async_callback(redis.stop)
        sink = await LineChild.start("bench.chaos.sink", "--record", str(folder / "sink.jsonl"),
                                     stderr=folder / "sink.err")  # fmt: skip
        stack.push_async_callback(sink.close)
        upstream = {"pg": postgres.port, "redis": redis.port, "smtp": int(sink.ready["port"])}
        routes = [{"name": route, "host": "127.0.0.1", "port": upstream[route.split("-")[1]]} for route in ALL_ROUTES]
        proxy = await LineChild.start("bench.chaos.proxy", "--routes", json.dumps(routes), stderr=folder / "proxy.err")
        stack.push_async_callback(proxy.close)
        ports: dict[str, int] = proxy.ready["ports"]
        ledger = Ledger(folder / "ledger.jsonl")
        stack.callback(ledger.close)
        http_ports = [free_port() for _ in range(REPLICAS)]
        slots = [
            ReplicaSlot(i, replica_env(i, ports, http_ports[i], options), http_ports[i], folder, ledger)
            for i in range(REPLICAS)
        ]
        replicas = Replicas(slots)
        stack.push_async_callback(replicas.close)
        if not await replicas.all_ready():
            raise BenchError(f"the replicas did not all start; see {folder}/replica*.log")
        _say(f"3 replicas ready; load and {len(schedule)} faults for {plan.seconds:.0f}s")
        stage = Stage(folder, ledger, replicas, postgres, redis, proxy)
        drained = await _phase(options, schedule, stage)
        await replicas.close()
        facts = ledger.facts
        facts.drained = drained
        await read_database(dsn, STREAM, facts)
        read_sink(folder / "sink.jsonl", facts)
        read_logs(folder, facts)
        (folder / "facts.json").write_text(json.dumps(to_json(facts)))
        result = reconcile(facts)
        document = report.document(options, schedule, result, started_at=started_at, folder=folder, extra={})
        (folder / "report.json").write_text(json.dumps(document, indent=2, default=str))
        _say(report.summary_line(document))
        keep = options.keep or not result.passed
    if not keep and options.work_dir is None:
        shutil.rmtree(folder, ignore_errors=True)
    elif not result.passed:
        _say(f"violations found: everything is kept in {folder}")
    return (0 if result.passed else 1), document


async def _phase(options: ChaosOptions, schedule: list[Fault], stage: Stage) -> bool:
    """Load and faults for the phase; then stop the load, lift every fault and drain. Drained?"""
    plan = options.plan
    stop_load, stop_keeper = asyncio.Event(), asyncio.Event()
    factory = CommandFactory(random.Random(plan.seed + 1))
    producer_redis = producer_client(stage.redis.addr)
    producer = StreamProducer(
        producer_redis, STREAM, factory=factory, ledger=stage.ledger, epoch=stage.epoch, progress=stage.progress,
        rate=options.stream_rate,
    )  # fmt: skip
    ports = [slot.http_port for slot in stage.replicas.slots]
    clients = [
        HttpClient(
            ports,
            factory=factory,
            ledger=stage.ledger,
            progress=stage.progress,
            rng=random.Random(plan.seed * 1000 + i),
            rate=options.http_rate,
        )
        for i in range(options.http_clients)
    ]
    targets = Targets(stage.replicas, stage.postgres, stage.redis, stage.proxy, stage.epoch, stage.ledger)
    runner = FaultRunner(targets, schedule, plan.seed)
    keeper = asyncio.create_task(stage.replicas.keep_up(stop_keeper))
    load = [asyncio.create_task(producer.run(stop_load)), *(asyncio.create_task(c.run(stop_load)) for c in clients)]
    faults = asyncio.create_task(runner.run())
    reporter = asyncio.create_task(_report_progress(options, stage))
    try:
        await asyncio.sleep(plan.seconds)
        stop_load.set()
        _say("faults over, load stopped; waiting for the in-flight HTTP commands and the last recoveries")
        await asyncio.gather(*load)
        await faults
        await stage.proxy.ask({"op": "mode", "routes": ALL_ROUTES, "mode": "pass"})
        if not await stage.replicas.all_ready():
            _say("not every replica came back up for the drain")
        return await _drain(stage.postgres.dsn("mailsvc"), stage.epoch, stage.progress, options.drain_timeout)
    finally:
        stop_load.set()
        stop_keeper.set()
        reporter.cancel()
        for task in [*load, faults, keeper]:
            task.cancel()
        await asyncio.gather(*load, faults, keeper, reporter, return_exceptions=True)
        await producer_redis.aclose()


async def _drain(dsn: str, epoch: RedisEpoch, progress: Progress, timeout: float) -> bool:
    """Until the consumer has every entry of the last stream and no delivery is left in flight."""
    last = progress.last_entry.get(epoch.value)
    deadline = time.monotonic() + timeout
    _say(f"draining (deadline {timeout:.0f}s): stream up to {last}, every delivery terminal")
    while time.monotonic() < deadline:
        try:
            conn = await asyncpg.connect(dsn, timeout=5)
            try:
                offset = await conn.fetchval("SELECT last_id FROM stream_offsets WHERE stream_key = $1", STREAM)
                busy = await conn.fetchval("SELECT count(*) FROM deliveries WHERE status IN ('queued', 'sending')")
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError, TimeoutError):
            offset, busy = None, -1
        consumed = last is None or (offset is not None and parse_id(offset) >= parse_id(last))
        if consumed and busy == 0:
            _say(f"drained in {timeout - (deadline - time.monotonic()):.0f}s")
            return True
        await asyncio.sleep(1.0)
    _say("the drain deadline passed")
    return False


async def _report_progress(options: ChaosOptions, stage: Stage) -> None:
    started = time.monotonic()
    progress = stage.progress
    while True:
        await asyncio.sleep(options.progress_every)
        taken = 0
        with contextlib.suppress(OSError), (stage.folder / "sink.jsonl").open() as records:
            taken = sum(1 for line in records if '"verdict":"deferred"' not in line)
        up = sum(slot.ready for slot in stage.replicas.slots)
        _say(
            f"{time.monotonic() - started:5.0f}s  stream {progress.stream_sent} sent ({progress.stream_failed} "
            f"failed)  http {progress.http_acked} acked / {progress.http_tries} tries  sink {taken}  replicas up {up}"
        )
