"""`.env.example` and the README's settings table, written from the declarations.

`mailsvc settings --env-example` / `--markdown` print them; `make settings-docs` rewrites both
files; `tests/unit/test_settings.py` fails while either differs from what is printed here.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from dataclasses import Field
from typing import Any

from mailsvc.settings.declare import Variable, declarations, example_text, external_variables, title
from mailsvc.settings.load import group_types

_ENV_HEADER = """\
# mailsvc configuration. Every variable with its default; copy to .env (read at startup) or export.
# Durations use Go syntax (250ms, 2s, 1m30s, 24h). Lists are comma-separated.
# Generated from the declarations in mailsvc/settings/ by `make settings-docs`: change those, not this file.
"""
_REQUIRED = "Required for every start"
TABLE_START = "<!-- settings table: generated from the declarations in mailsvc/settings/ by `make settings-docs` -->"
TABLE_END = "<!-- end of settings table -->"
_TABLE_START_PREFIX = "<!-- settings table"  # found by this, so the marker's wording may change

Declared = tuple[Field[Any], Variable[Any]]


def _sections() -> Iterator[tuple[str, list[Declared], type[Any] | None]]:
    """(title, declarations, group) per section: the required variables of every group first."""
    groups = list(group_types().values())
    everything = [declared for group in groups for declared in declarations(group)]
    yield _REQUIRED, [d for d in everything if d[1].required], None
    for group in groups:
        yield title(group), [d for d in declarations(group) if not d[1].required], group


def env_example() -> str:
    """The whole `.env.example`: every variable, its default (or example), its line of meaning."""
    out = [_ENV_HEADER]
    for heading, declared, group in _sections():
        out.append(f"\n## {heading}\n")
        for item, variable in declared:
            out.append(_comment(variable.doc))
            out.append(f"{variable.name}={example_text(item, variable)}\n")
        for external in external_variables(group) if group else ():
            out.append(_comment(external.doc))
            out.append(f"# {external.name}={external.example}\n")
    return "".join(out)


def _comment(doc: str) -> str:
    return "".join(f"# {line}\n" for line in textwrap.wrap(doc, width=108))


def markdown_table() -> str:
    """The README's table of every variable, between its two marker lines."""
    rows = [TABLE_START, "", "| Variable | Default | Meaning |", "|---|---|---|"]
    for heading, declared, group in _sections():
        rows.append(f"| **{heading}** | | |")
        for item, variable in declared:
            default = "required" if variable.required else _code(example_text(item, variable))
            rows.append(f"| `{variable.name}` | {default} | {_cell(variable.doc)} |")
        for external in external_variables(group) if group else ():
            rows.append(f"| `{external.name}` | read by the library itself | {_cell(external.doc)} |")
    rows += ["", TABLE_END]
    return "\n".join(rows) + "\n"


def _code(text: str) -> str:
    return f"`{_cell(text)}`" if text else "empty"


def _cell(text: str) -> str:
    """Markdown table cell text: a `|` would end the cell, a `<...>` would vanish as an HTML tag."""
    return text.replace("|", "\\|").replace("<", "&lt;")


def with_table(readme: str) -> str:
    """`readme` with the text between the table's markers (inclusive) replaced by a fresh table."""
    start, end = readme.find(_TABLE_START_PREFIX), readme.find(TABLE_END)
    if start < 0 or end < start:
        raise ValueError(f"the README lacks the settings table markers ({TABLE_START!r} … {TABLE_END!r})")
    rest = readme[end + len(TABLE_END) :].removeprefix("\n")
    return readme[:start] + markdown_table() + rest
