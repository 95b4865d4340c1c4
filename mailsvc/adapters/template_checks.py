"""Checks of one template file's source and tree that the catalog makes when it loads (SPEC §6):
the same for a body and for a shared file of `_layout/`."""

from __future__ import annotations

import re
from collections.abc import Iterator

from jinja2 import nodes

NO_SAFE_URL = "a link's URL must pass through the safe_url filter"
# an href whose value starts with an expression: the scheme comes from a variable
_HREF_EXPRESSION = re.compile(r"""\bhref\s*=\s*["']?\s*\{\{(.*?)\}\}""", re.IGNORECASE | re.DOTALL)
_THROUGH_SAFE_URL = re.compile(r"\|\s*safe_url\s*-?$")


def links_without_safe_url(source: str) -> Iterator[int]:
    """The line of every `href="{{ … }}"` whose URL skips `safe_url` (SPEC §6: http/https only)."""
    for match in _HREF_EXPRESSION.finditer(source):
        if not _THROUGH_SAFE_URL.search(match.group(1).strip()):
            yield source.count("\n", 0, match.start()) + 1


def private_attributes(ast: nodes.Template) -> list[tuple[int, str]]:
    """(line, message) for each `x.__class__` or `x["_y"]`: the sandbox refuses them at render
    too; refusing them at load surfaces them early."""
    found = []
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        attr = node.attr if isinstance(node, nodes.Getattr) else getattr(node, "arg", None)
        if isinstance(attr, nodes.Const):
            attr = attr.value
        if isinstance(attr, str) and attr.startswith("_"):
            found.append((node.lineno, f"access to private attribute {attr!r}"))
    return found
