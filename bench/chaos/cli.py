"""`mailsvc bench chaos`: its flags (an argument group of `mailsvc bench`) and the command."""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from pathlib import Path

EXIT_UNRUNNABLE = 2  # the run could not be set up (1: it ran and found a broken promise)


def add_chaos_arguments(parser: argparse.ArgumentParser) -> None:
    chaos = parser.add_argument_group("chaos (mailsvc bench chaos; runs alone)")
    chaos.add_argument("--seed", type=int, help="the fault schedule's and the load's seed (default: random, printed)")
    chaos.add_argument("--chaos-minutes", type=float, default=20.0, help="length of the fault phase (default 20)")
    chaos.add_argument("--kills", type=int, default=100, help="kill -9 of a random replica (default 100)")
    chaos.add_argument("--sigterms", type=int, default=10, help="SIGTERM of a replica mid-batch (default 10)")
    chaos.add_argument("--pg-restarts", type=int, default=3, help="pg_ctl restart -m immediate (default 3)")
    chaos.add_argument("--redis-restarts", type=int, default=2,
                       help="Redis restarts, alternately without and with persistence (default 2)")  # fmt: skip
    chaos.add_argument("--net-faults", type=int, default=3,
                       help="faults of each network kind: latency, reset, blackhole, halfopen (default 3)")  # fmt: skip
    chaos.add_argument("--stream-rate", type=float, default=50.0, help="stream commands/s (default 50)")
    chaos.add_argument("--http-clients", type=int, default=8, help="concurrent HTTP clients (default 8)")
    chaos.add_argument("--http-rate", type=float, default=2.0, help="requests/s per HTTP client (default 2)")
    chaos.add_argument("--drain-timeout", type=float, default=300.0,
                       help="seconds the system gets to drain after the faults (default 300)")  # fmt: skip
    chaos.add_argument("--work-dir", type=Path, help="keep everything here (default: a temporary folder)")
    chaos.add_argument("--keep", action="store_true", help="keep the work folder after a clean run too")
    chaos.add_argument("--reconcile", type=Path, metavar="WORK_DIR",
                       help="run nothing: reconcile a kept run's facts.json again")  # fmt: skip


def chaos_command(args: argparse.Namespace) -> int:
    if args.reconcile is not None:
        from bench.chaos.report import reconcile_again

        code, document = reconcile_again(args.reconcile)
        json.dump(document, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return code
    from bench.chaos.run import ChaosOptions, run_chaos
    from bench.chaos.schedule import Plan
    from bench.processes import BenchError
    from mailsvc.cli import run_async

    seed = args.seed if args.seed is not None else secrets.randbelow(1_000_000)
    plan = Plan(
        seed=seed, seconds=args.chaos_minutes * 60, kills=args.kills, sigterms=args.sigterms,
        pg_restarts=args.pg_restarts, redis_restarts=args.redis_restarts, net_each=args.net_faults,
    )  # fmt: skip
    extra = tuple((name, value) for name, _, value in (item.partition("=") for item in args.service_env) if value)
    options = ChaosOptions(
        plan=plan, stream_rate=args.stream_rate, http_clients=args.http_clients, http_rate=args.http_rate,
        drain_timeout=args.drain_timeout, work_dir=args.work_dir, keep=args.keep, extra_env=extra,
    )  # fmt: skip

    async def main() -> int:
        code, document = await run_chaos(options)
        json.dump(document, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return code

    try:
        return run_async(main())
    except BenchError as exc:
        print(f"mailsvc bench chaos: {exc}", file=sys.stderr)
        return EXIT_UNRUNNABLE
    except KeyboardInterrupt:
        print("mailsvc bench chaos: interrupted; servers and replicas stopped", file=sys.stderr)
        return 130
