"""`mailsvc bench [SCENARIO ...]`: flags, and the run that strings the scenarios together."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCENARIOS = ("acceptance", "e2e", "scaleout", "events", "latency", "http", "http-backlog", "soak")
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def _scenario(text: str) -> str:
    if text not in (*SCENARIOS, "all", "chaos"):
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(SCENARIOS)}, all, chaos")
    return text


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Measure capacity against real PostgreSQL, Redis and an SMTP sink (SPEC §10)."
    parser.add_argument("scenarios", nargs="*", type=_scenario, default=["all"], metavar="SCENARIO",
                        help=f"one or more of {', '.join(SCENARIOS)}, all (default: all); or chaos, "
                        "alone: the fault-injection run (see the chaos flags)")  # fmt: skip
    size = parser.add_argument_group("sizes")
    size.add_argument("-n", "--count", type=int, default=20_000, help="backlog for acceptance/e2e/scaleout")
    size.add_argument("--raw-count", type=int, help="messages for the raw ceiling (default: --count)")
    size.add_argument("--rate", type=float, help="fixed commands/s for latency and soak (default: a fraction of e2e)")
    size.add_argument("--latency-fraction", type=float, default=0.2, help="latency rate as a fraction of e2e max")
    size.add_argument("--soak-fraction", type=float, default=0.5, help="soak rate as a fraction of e2e max")
    size.add_argument("--duration", type=float, help="seconds of latency (default 20) and http (default 10) load")
    size.add_argument("--http-requests", type=int, help="http: stop after this many requests instead of --duration")
    size.add_argument("--clients", type=int, default=16, help="http: concurrent clients")
    size.add_argument("--minutes", type=float, default=10.0, help="soak length")
    size.add_argument("--backlog", type=int, default=2_000, help="http-backlog: large commands XADDed first")
    size.add_argument("--backlog-kib", type=int, default=256, help="http-backlog: size of each (KiB, at most 256)")
    size.add_argument("--backlog-rate", type=float, default=50.0,
                      help="http-backlog: POST /deliveries per second while the backlog is worked through")  # fmt: skip
    size.add_argument("--payload", choices=["template", "raw"], default="template",
                      help="commands render notification.generic, or carry their own subject/text/html")  # fmt: skip
    size.add_argument("--repeat", type=int, default=1, help="run each scenario K times; the median is reported")
    where = parser.add_argument_group("what runs")
    where.add_argument("--postgres-dsn", default=os.environ.get("MAIL_BENCH_POSTGRES_DSN"),
                       help="admin DSN of the server to create bench databases on (env "
                       "MAIL_BENCH_POSTGRES_DSN; default postgresql://postgres@127.0.0.1:5432/postgres)")  # fmt: skip
    where.add_argument("--redis-addr", default=os.environ.get("MAIL_BENCH_REDIS_ADDR"),
                       help="Redis host:port (env MAIL_BENCH_REDIS_ADDR; default 127.0.0.1:6379); "
                       "password from MAIL_BENCH_REDIS_PASSWORD")  # fmt: skip
    where.add_argument("--embedded", action="store_true", help="embedded PostgreSQL and Redis in a temp folder")
    where.add_argument("--sink", choices=["auto", "python", "postfix"], default="auto",
                       help="SMTP sink: postfix smtp-sink (C, fast), python (aiosmtpd), auto = postfix if it "
                       "can be prepared; latency always uses python")  # fmt: skip
    where.add_argument("--cache-dir", default=os.environ.get("MAIL_BENCH_CACHE_DIR", ".bench-cache"),
                       help="where the postfix package is fetched and extracted (default .bench-cache)")  # fmt: skip
    where.add_argument("--replicas", type=int, default=1, help="service processes on the same database and stream")
    where.add_argument("--concurrency", type=int, default=16, help="MAIL_ATTEMPT_WORKER_CONCURRENCY per replica")
    where.add_argument("--service-log-level", default="warn", choices=["debug", "info", "warn", "error"])
    where.add_argument("--events", choices=["on", "off"], default="on",
                       help="delivery events published to Redis (SPEC §11); off: MAIL_REDIS_EVENT_STREAM empty "
                       "for the service (the `events` scenario runs both)")  # fmt: skip
    where.add_argument("--report", metavar="DIR",
                       help="also write the JSON and a self-contained HTML page with charts into DIR "
                       "(bench-<time>.json / .html)")  # fmt: skip
    where.add_argument("--service-env", action="append", default=[], metavar="KEY=VALUE",
                       help="extra service environment (repeatable), e.g. MAIL_STREAM_BATCH_SIZE=1000")  # fmt: skip
    from bench.chaos.cli import add_chaos_arguments

    add_chaos_arguments(parser)


def _selected(names: list[str]) -> list[str]:
    if "all" in names:
        return list(SCENARIOS)
    return [name for name in SCENARIOS if name in names]  # always in the canonical order


def _settings(args: argparse.Namespace, scenarios: list[str]) -> dict[str, Any]:
    from urllib.parse import urlsplit

    dsn = urlsplit(args.postgres_dsn or "postgresql://postgres@127.0.0.1:5432/postgres")
    settings = {
        key: value
        for key, value in vars(args).items()
        if key not in ("command", "scenarios", "postgres_dsn", "service_env", "report")
    }
    settings["scenarios"] = scenarios
    settings["postgres"] = "embedded" if args.embedded else f"{dsn.hostname}:{dsn.port or 5432}"
    settings["service_env"] = [item.split("=", 1)[0] + "=…" for item in args.service_env]
    return settings


async def _run(args: argparse.Namespace) -> int:
    from bench import report, scenarios, sustained
    from bench.context import Bench, Sizes
    from bench.infra import DEFAULT_POSTGRES_DSN, DEFAULT_REDIS_ADDR, bench_env
    from bench.processes import BenchError
    from bench.service import ServiceOptions
    from bench.stats import median_figures

    runners: dict[str, Callable[[Bench], Awaitable[dict[str, Any]]]] = {
        "acceptance": scenarios.acceptance, "e2e": scenarios.e2e, "scaleout": scenarios.scaleout,
        "events": scenarios.events, "latency": scenarios.latency, "http": sustained.http,
        "http-backlog": scenarios.http_backlog, "soak": sustained.soak,
    }  # fmt: skip
    chosen = _selected(args.scenarios)
    extra = tuple(tuple(item.split("=", 1)) for item in args.service_env if "=" in item)
    sizes = Sizes(
        count=args.count, raw_count=args.raw_count, rate=args.rate, latency_fraction=args.latency_fraction,
        soak_fraction=args.soak_fraction, latency_seconds=args.duration or 20.0, http_seconds=args.duration or 10.0,
        http_requests=args.http_requests, clients=args.clients, soak_minutes=args.minutes, payload=args.payload,
        backlog_count=args.backlog, backlog_kib=args.backlog_kib, backlog_rate=args.backlog_rate,
    )  # fmt: skip
    events = args.events == "on"
    service = ServiceOptions(args.replicas, args.concurrency, args.service_log_level, extra, events)
    cache_dir = Path(args.cache_dir)
    started_at, started, load = datetime.now(UTC), time.monotonic(), os.getloadavg()
    results: dict[str, dict[str, Any]] = {}
    failed = False
    try:
        postgres, redis = args.postgres_dsn or DEFAULT_POSTGRES_DSN, args.redis_addr or DEFAULT_REDIS_ADDR
        password = os.environ.get("MAIL_BENCH_REDIS_PASSWORD", "")
        async with bench_env(postgres, redis, password, embedded=args.embedded) as env:
            bench = Bench(env, sizes, service, args.sink, cache_dir)
            servers = await env.server_versions()
            for name in chosen:
                runs: list[dict[str, Any]] = []
                for attempt in range(args.repeat):
                    print(f"bench: {name} run {attempt + 1}/{args.repeat} …", file=sys.stderr, flush=True)
                    try:
                        runs.append(await runners[name](bench))
                    except (BenchError, OSError) as exc:
                        failed = True
                        runs.append({"error": str(exc)})
                        print(f"bench: {name} failed: {exc}", file=sys.stderr, flush=True)
                if name == "e2e" and any("figures" in run for run in runs):
                    good = [run["figures"] for run in runs if "figures" in run]
                    bench.max_rate = median_figures(good)["deliveries_per_s"]
                results[name] = report.summarize_scenario(name, runs)
    except BenchError as exc:
        print(f"mailsvc bench: {exc}", file=sys.stderr)
        return EXIT_FAILED
    document = {
        "tool": "mailsvc bench",
        "format": 1,
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - started, 1),
        "machine": report.machine(load),
        "versions": report.versions(servers),
        "git": report.git_state(),
        "sink": {"requested": args.sink, "used": sorted(bench.sink_kinds_used)},
        "settings": _settings(args, chosen),
        "notes": bench.notes,
        "scenarios": results,
    }
    report.emit(document)
    if args.report:
        from bench.html import write_report

        for path in write_report(document, Path(args.report), started_at):
            print(f"bench: wrote {path}", file=sys.stderr)
    return EXIT_FAILED if failed else 0


def bench_command(args: argparse.Namespace) -> int:
    from mailsvc.cli import run_async

    if "chaos" in args.scenarios:
        if len(args.scenarios) > 1:
            print("mailsvc bench: chaos runs alone", file=sys.stderr)
            return EXIT_FAILED
        from bench.chaos.cli import chaos_command

        return chaos_command(args)

    try:
        return run_async(_run(args))
    except KeyboardInterrupt:
        print("mailsvc bench: interrupted; processes and bench databases cleaned up", file=sys.stderr)
        return EXIT_INTERRUPTED
