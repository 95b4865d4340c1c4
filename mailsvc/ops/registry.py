"""How a `mailsvc ops` subcommand is declared: a `Group` (`deliveries`) and in it one function
per route, registered with its arguments, a one-line summary, an example for `--help` and how its
answer reads as text. `--json` prints the answer itself, so a command only fetches:

    @GROUP.command(
        "cancel",
        summary="cancel a queued delivery",
        example="mailsvc ops deliveries cancel 0b6f4c1e-…",
        arguments=[arg("delivery_id", metavar="ID", help="the delivery")],
        render=lambda answer, args: f"cancelled {answer['delivery_id']}",
    )
    def cancel(api: Api, args: Namespace) -> Json:
        return api.post(f"/deliveries/{segment(args.delivery_id)}/cancel")

A new group is a module in `mailsvc/ops/commands/` with its `GROUP`, listed in `GROUPS` there.
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mailsvc.ops.client import Api, Json

Run = Callable[[Api, Namespace], Json]
Render = Callable[[Json, Namespace], str]
Emit = Callable[[Json], None]
# a command that prints as it goes (`events tail`): each item through `emit`, until it is done
Follow = Callable[[Api, Namespace, Emit], None]


@dataclass(frozen=True, slots=True)
class Arg:
    """One `ArgumentParser.add_argument(*flags, **options)` call."""

    flags: tuple[str, ...]
    options: dict[str, Any]


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    summary: str
    example: str
    arguments: tuple[Arg, ...]
    run: Run
    render: Render  # of the answer; of each item for a `follow` command
    follow: Follow | None = None


@dataclass
class Group:
    name: str
    summary: str
    commands: list[Command] = field(default_factory=list)

    def command(
        self, name: str, *, summary: str, example: str, render: Render, arguments: Sequence[Arg] = ()
    ) -> Callable[[Run], Run]:
        """Register the decorated function as `mailsvc ops <group> <name>`."""

        def register(run: Run) -> Run:
            if any(c.name == name for c in self.commands):
                raise ValueError(f"mailsvc ops {self.name} {name} is declared twice")
            self.commands.append(Command(name, summary, example, tuple(arguments), run, render))
            return run

        return register

    def follower(
        self, name: str, *, summary: str, example: str, render: Render, arguments: Sequence[Arg] = ()
    ) -> Callable[[Follow], Follow]:
        """Register the decorated function as `mailsvc ops <group> <name>`, printing each item it
        emits as it comes (`--json`: one JSON object per line)."""

        def register(follow: Follow) -> Follow:
            if any(c.name == name for c in self.commands):
                raise ValueError(f"mailsvc ops {self.name} {name} is declared twice")
            self.commands.append(Command(name, summary, example, tuple(arguments), _no_answer, render, follow))
            return follow

        return register


def _no_answer(api: Api, args: Namespace) -> Json:
    return None
