"""How a setting declares itself, and the one loader that walks the declarations.

A settings group is a frozen dataclass made with `@settings_group`; each field read from the
environment is written `name: T = setting("MAIL_...", parser, default=..., doc="...")`, so its
variable, parser, default and one line of meaning sit on the field. mypy checks the parser's
result and the default against the annotation, and knows which fields are required.
`read_group` walks a group's declarations and collects every problem instead of stopping.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, Generic, Literal, NamedTuple, TypeVar, dataclass_transform, overload

from mailsvc.errors import MailsvcError
from mailsvc.settings.values import format_value

T = TypeVar("T")
G = TypeVar("G")

_KEY = "mailsvc.setting"


class SettingsError(MailsvcError):
    """Raised with every configuration problem found, one line each (`NAME: what is wrong`)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Problems:
    """Collects `NAME: message` lines, remembering which variables already have one."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._names: set[str] = set()

    def add(self, name: str, message: str) -> None:
        self.lines.append(f"{name}: {message}")
        self._names.add(name)

    def any_of(self, *names: str) -> bool:
        """Whether one of `names` already failed: a cross-field rule over a value that fell back
        to its default would only add a misleading line."""
        return not self._names.isdisjoint(names)

    def raise_if_any(self) -> None:
        if self.lines:
            raise SettingsError(self.lines)


@dataclass(frozen=True)
class Variable(Generic[T]):
    """One environment variable: its name, how its text becomes the value, one line of meaning."""

    name: str
    parse: Callable[[str], T]
    doc: str
    required: bool = False
    allow_empty: bool = False  # the empty string counts as set (MAIL_REDIS_PASSWORD; MAIL_REDIS_EVENT_STREAM: off)
    example: str | None = None  # what .env.example writes instead of the formatted default


class ExternalVariable(NamedTuple):
    """A variable another library reads itself, listed in the docs so operators find it."""

    name: str
    example: str
    doc: str


@overload
def setting(
    name: str,
    parse: Callable[[str], T],
    *,
    default: T,
    doc: str,
    example: str | None = None,
    allow_empty: bool = False,
) -> T: ...


@overload
def setting(
    name: str,
    parse: Callable[[str], T],
    *,
    required: Literal[True],
    example: str,
    doc: str,
    allow_empty: bool = False,
) -> T: ...


def setting(
    name: str,
    parse: Callable[[str], Any],
    *,
    doc: str,
    default: Any = MISSING,
    required: bool = False,
    example: str | None = None,
    allow_empty: bool = False,
) -> Any:
    """Declare a field read from `name`: unset or blank gives `default` (blank is a value of its own
    with `allow_empty`); a `required` one has no default, and its `example` (which must parse) is
    what `.env.example` shows."""
    if "\n" in doc or not doc.strip():
        raise ValueError(f"{name}: the doc is one non-empty line")
    if required == (default is not MISSING):
        raise TypeError(f"{name}: a setting has a default or is required, not both or neither")
    variable = Variable(name, parse, doc, required=required, allow_empty=allow_empty, example=example)
    if required:
        return field(metadata={_KEY: variable})
    return field(default=default, metadata={_KEY: variable})


@dataclass_transform(frozen_default=True, field_specifiers=(setting, field))
def settings_group(cls: type[G]) -> type[G]:
    """A frozen dataclass of settings; its docstring's first line titles its section in the docs."""
    if not cls.__doc__:
        raise TypeError(f"{cls.__name__}: a settings group needs a docstring (its title in the docs)")
    return dataclass(frozen=True)(cls)


def declarations(group: type[Any]) -> Iterator[tuple[Field[Any], Variable[Any]]]:
    """The group's fields read from the environment, in declaration order, with their variables."""
    for item in fields(group):
        variable = item.metadata.get(_KEY)
        if variable is not None:
            yield item, variable


def title(group: type[Any]) -> str:
    return (group.__doc__ or "").strip().splitlines()[0].rstrip(".")


def external_variables(group: type[Any]) -> tuple[ExternalVariable, ...]:
    found: tuple[ExternalVariable, ...] = getattr(group, "external_variables", ())
    return found


def example_text(item: Field[Any], variable: Variable[Any]) -> str:
    """What `.env.example` writes for this variable: its example, else its default as text."""
    return variable.example if variable.example is not None else format_value(item.default)


def read_group(group: type[G], env: Mapping[str, str], problems: Problems) -> G:
    """Build `group` from `env`, adding a line to `problems` for each invalid or missing value.

    Variables the group does not declare are ignored. A value that failed keeps its default (a
    required one its parsed example), so later rules see a whole object; the caller raises
    before anyone else does.
    """
    values: dict[str, Any] = {}
    for item, variable in declarations(group):
        raw = env.get(variable.name)
        if raw is None or (not raw.strip() and not variable.allow_empty):
            if variable.required:
                problems.add(variable.name, "required but not set")
                values[item.name] = variable.parse(example_text(item, variable))
            continue
        try:
            values[item.name] = variable.parse(raw)
        except ValueError as exc:
            problems.add(variable.name, str(exc))
            if variable.required:
                values[item.name] = variable.parse(example_text(item, variable))
    return group(**values)
