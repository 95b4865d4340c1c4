"""Command line: serve | migrate | dev | templates | send | settings | bench | ops."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any

from mailsvc.errors import StartupError
from mailsvc.settings import SettingsError, load_settings, parse_dsn

_GC_YOUNG_THRESHOLD = 25_000  # allocations of container objects between two young collections (default 700)

EXIT_CONFIG = 2


def run_async(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when available (faster sockets), asyncio otherwise."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def _config_failure(error: SettingsError) -> int:
    print("mailsvc: invalid configuration:", file=sys.stderr)
    for problem in error.problems:
        print(f"  {problem}", file=sys.stderr)
    return EXIT_CONFIG


async def serve(env: Mapping[str, str] | None = None) -> int:
    """`mailsvc serve`: load settings, build, run until a signal; exit code."""
    from mailsvc.bootstrap import build_runtime, process_telemetry
    from mailsvc.logs import configure_logging

    try:
        settings = load_settings(env)
    except SettingsError as error:
        return _config_failure(error)
    configure_logging(settings.process.log_level)
    with process_telemetry(settings) as instruments:
        try:
            runtime = await build_runtime(settings, instruments=instruments)
        except StartupError as error:
            logging.getLogger("mailsvc").error("startup_failed", extra={"reason": str(error)})
            print(f"mailsvc: cannot start: {error}", file=sys.stderr)
            return 1
        # what startup built lives as long as the process: keep it out of the collector's full
        # passes, which otherwise scan all of it and stall the loop ~40 ms about once a second
        gc.collect()
        gc.freeze()
        # and the young collections: a stream batch of 500 commands keeps 5,000-10,000 container
        # objects alive until it commits, so at the default threshold (700 allocations) the
        # collector walked (and promoted) each batch many times over: 3 % of the service's CPU
        # in the e2e profile. Garbage cycles are still collected, every 25,000 net allocations.
        gc.set_threshold(_GC_YOUNG_THRESHOLD, 10, 10)
        return await runtime.run()


def _migrate(args: argparse.Namespace) -> int:
    from mailsvc.bootstrap import migrate

    raw = os.environ.get("MAIL_POSTGRES_PRIMARY_DSN", "")
    if not raw.strip():
        return _config_failure(SettingsError(["MAIL_POSTGRES_PRIMARY_DSN: required but not set"]))
    try:
        dsn = parse_dsn(raw)
    except ValueError as exc:
        return _config_failure(SettingsError([f"MAIL_POSTGRES_PRIMARY_DSN: {exc}"]))
    asyncio.run(migrate(dsn, downgrade_to=args.downgrade))
    print("mailsvc: migrations applied" if not args.downgrade else f"mailsvc: downgraded to {args.downgrade}")
    return 0


def _dev_tooling_missing(command: str) -> int:
    print(
        f"mailsvc {command}: needs the development tooling (pip install -e '.[dev]' from a checkout)", file=sys.stderr
    )
    return 1


def _dev(args: argparse.Namespace) -> int:
    try:
        from devtools.dev import run_dev
    except ImportError:
        return _dev_tooling_missing("dev")
    return run_dev(Path(args.data_dir), args.addr, lambda env: run_async(serve(env)))


def _templates(args: argparse.Namespace) -> int:
    from mailsvc.templates_cli import check_command, render_command

    template_dir = Path(getattr(args, "dir", None) or os.environ.get("MAIL_TEMPLATE_DIR", "./templates"))
    if args.templates_command == "check":
        return check_command(template_dir)
    return render_command(template_dir, args.id, args.locale, args.vars)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailsvc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the service (configuration from the environment / .env)")
    migrate = commands.add_parser("migrate", help="upgrade the schema to the latest migration")
    migrate.add_argument("--downgrade", metavar="REVISION", help="downgrade instead (e.g. base)")
    dev = commands.add_parser("dev", help="everything on one machine: embedded PostgreSQL and Redis, stub mode")
    dev.add_argument("--data-dir", default=".mailsvc-dev", help="where the embedded servers keep data")
    dev.add_argument("--addr", default="127.0.0.1:8080", help="HTTP listen address")
    # `--dir` is accepted before or after the subcommand (`templates --dir X check` and
    # `templates check --dir X`); SUPPRESS keeps the subparser from resetting a value given before it
    template_dir = argparse.ArgumentParser(add_help=False)
    template_dir.add_argument(
        "--dir", default=argparse.SUPPRESS, help="template folder (default: MAIL_TEMPLATE_DIR or ./templates)"
    )
    templates = commands.add_parser("templates", help="check or render the template catalog", parents=[template_dir])
    template_commands = templates.add_subparsers(dest="templates_command", required=True)
    template_commands.add_parser("check", help="load the whole catalog, list every problem", parents=[template_dir])
    render = template_commands.add_parser("render", help="render one template", parents=[template_dir])
    render.add_argument("id")
    render.add_argument("--locale")
    render.add_argument("--vars", default="{}", help="variables as a JSON object")
    from mailsvc.producer import add_send_arguments

    add_send_arguments(commands.add_parser("send", help="XADD a send_email command to the stream"))
    settings = commands.add_parser("settings", help="print every setting's variable, default and meaning")
    form = settings.add_mutually_exclusive_group(required=True)
    form.add_argument("--env-example", action="store_true", help="as .env.example (what `make settings-docs` writes)")
    form.add_argument("--markdown", action="store_true", help="as the README's table")
    bench = commands.add_parser("bench", help="measure capacity (SPEC §10); part of the development tooling")
    try:  # the bench lives beside the product (top-level `bench` package, dev extra), not in the image
        from bench.cli import add_bench_arguments
    except ImportError:
        bench.add_argument("rest", nargs=argparse.REMAINDER)
    else:
        add_bench_arguments(bench)
    from mailsvc.ops.cli import add_ops_arguments

    add_ops_arguments(commands.add_parser("ops", help="the operator's client of the HTTP API (tables, or --json)"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return run_async(serve())
    if args.command == "migrate":
        return _migrate(args)
    if args.command == "dev":
        return _dev(args)
    if args.command == "templates":
        return _templates(args)
    if args.command == "send":
        from mailsvc.producer import send_command

        return send_command(args)
    if args.command == "settings":
        from mailsvc.settings.docs import env_example, markdown_table

        print(env_example() if args.env_example else markdown_table(), end="")
        return 0
    if args.command == "bench":
        try:
            from bench.cli import bench_command
        except ImportError:
            return _dev_tooling_missing("bench")
        return bench_command(args)
    if args.command == "ops":
        from mailsvc.ops.cli import ops_command

        return ops_command(args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
