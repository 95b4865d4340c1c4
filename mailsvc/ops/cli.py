"""The `mailsvc ops` parser and runner: where the API is, the token, tables or `--json`, exit codes.

Exit code 0 when the API answered 2xx, 1 for every failure (the API's error `code` and `message`,
or one line saying why there was no usable answer), 2 for a usage error (argparse).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from mailsvc.ops.client import DEFAULT_TIMEOUT, DEFAULT_URL, Api, Connection, OpsError, check_token, parse_url
from mailsvc.ops.commands import GROUPS
from mailsvc.ops.registry import Command

EXIT_FAILED = 1
_RAW = argparse.RawDescriptionHelpFormatter

DESCRIPTION = """\
The operator's client of the mail service's internal HTTP API: tables for people, --json for
scripts (the API's JSON, unchanged). Exit code 1 with the API's error code and message on failure.

environment:
  MAIL_API_URL    the service (default http://127.0.0.1:8080)
  MAIL_API_TOKEN  an operator token, sent as Authorization: Bearer … (or --token-file)"""

EXAMPLES = """\
examples:
  mailsvc ops deliveries list --status dead_lettered --limit 20
  mailsvc ops deliveries show 0b6f4c1e-5d2a-4f0e-9c1b-2a3d4e5f6a7b
  MAIL_API_URL=https://mail.internal:8080 mailsvc ops --token-file ~/.mail-token templates list --json"""


def _add_common(parser: argparse.ArgumentParser) -> None:
    """Options accepted at every level (`ops --json deliveries list` = `ops deliveries list --json`):
    SUPPRESS keeps a subparser from resetting a value given before it."""
    options = parser.add_argument_group("API and output")
    options.add_argument("--url", default=argparse.SUPPRESS, help=f"the API (default: MAIL_API_URL or {DEFAULT_URL})")
    options.add_argument(
        "--token-file", default=argparse.SUPPRESS, metavar="PATH", help="read the token here (default: MAIL_API_TOKEN)"
    )
    options.add_argument(
        "--timeout",
        type=float,
        default=argparse.SUPPRESS,
        metavar="SECONDS",
        help=f"give up on a request after this long (default {DEFAULT_TIMEOUT:g})",
    )
    options.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print the API's JSON instead of a table"
    )


def _add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser], command: Command) -> None:
    parser = commands.add_parser(
        command.name,
        help=command.summary,
        description=command.summary,
        epilog=f"example:\n  {command.example}",
        formatter_class=_RAW,
    )
    for argument in command.arguments:
        parser.add_argument(*argument.flags, **argument.options)
    _add_common(parser)
    parser.set_defaults(ops_command=command)


def add_ops_arguments(parser: argparse.ArgumentParser) -> None:
    """Make `parser` (the `ops` subparser of `mailsvc`) parse every group and command."""
    parser.description, parser.epilog, parser.formatter_class = DESCRIPTION, EXAMPLES, _RAW
    _add_common(parser)
    groups = parser.add_subparsers(dest="ops_group", required=True, metavar="GROUP")
    for group in GROUPS:
        examples = "\n".join(f"  {c.example}" for c in group.commands)
        group_parser = groups.add_parser(
            group.name,
            help=group.summary,
            description=group.summary,
            epilog=f"examples:\n{examples}",
            formatter_class=_RAW,
        )
        _add_common(group_parser)
        commands = group_parser.add_subparsers(dest="ops_action", required=True, metavar="COMMAND")
        for command in group.commands:
            _add_command(commands, command)


def connection(args: argparse.Namespace, env: Mapping[str, str]) -> Connection:
    """Where and how to reach the API: flags first, then MAIL_API_URL / MAIL_API_TOKEN."""
    url = parse_url(getattr(args, "url", None) or env.get("MAIL_API_URL") or DEFAULT_URL)
    token_file = getattr(args, "token_file", None)
    token: str | None
    if token_file is not None:
        try:
            token = Path(token_file).expanduser().read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise OpsError(f"cannot read the token file {token_file}: {getattr(exc, 'strerror', None) or exc}") from exc
        token = check_token(token, f"--token-file {token_file}")
    else:
        raw = env.get("MAIL_API_TOKEN", "").strip()
        token = check_token(raw, "MAIL_API_TOKEN") if raw else None
    timeout = getattr(args, "timeout", DEFAULT_TIMEOUT)
    if not timeout > 0:
        raise OpsError("--timeout must be a positive number of seconds")
    return Connection(url, token, timeout)


def _print_json(value: Any, out: TextIO) -> None:
    text = json.dumps(value, indent=2, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (`"\udce9"` in the JSON) cannot be written as text
        text = json.dumps(value, indent=2)
    out.write(text + "\n")


def _follow(command: Command, args: argparse.Namespace, env: Mapping[str, str], out: TextIO, *, as_json: bool) -> int:
    """A command that prints each item as it arrives; Ctrl-C ends it as a success."""
    assert command.follow is not None

    def emit(item: Any) -> None:
        if as_json:
            out.write(json.dumps(item, ensure_ascii=False, separators=(",", ":")) + "\n")
        else:
            out.write(command.render(item, args) + "\n")
        out.flush()

    try:
        with Api(connection(args, env)) as api:
            command.follow(api, args, emit)
    except KeyboardInterrupt:
        pass
    return 0


def ops_command(
    args: argparse.Namespace,
    *,
    env: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run the parsed `mailsvc ops …` command; the exit code."""
    env = os.environ if env is None else env
    out, err = out or sys.stdout, err or sys.stderr
    command: Command = args.ops_command
    as_json = getattr(args, "json", False)
    try:
        if command.follow is not None:
            return _follow(command, args, env, out, as_json=as_json)
        with Api(connection(args, env)) as api:
            answer = command.run(api, args)
        if as_json:
            _print_json(answer, out)
        else:
            out.write(command.render(answer, args) + "\n")
    except OpsError as error:
        if as_json and error.body is not None:
            _print_json(error.body, out)
        err.write(f"mailsvc ops: {error}\n")
        err.writelines(f"  {detail}\n" for detail in error.details)
        return EXIT_FAILED
    except (KeyError, TypeError, AttributeError) as exc:  # an answer of another shape than expected
        err.write(f"mailsvc ops: the API's answer has an unexpected shape ({exc!r}); try --json\n")
        return EXIT_FAILED
    return 0
