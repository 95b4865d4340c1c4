"""Shared layouts (`_layout/`), spliced into each body once, when the catalog loads (SPEC §6).

A body may `{% extends "_layout/body.html" %}` and fill the layout's blocks, and `{% include
"_layout/button.html" %}` a shared part (with `{% with %}` giving it variables). Jinja would resolve
both on every render: a loader lookup, the layout's render function calling one function per block,
a new context per include. Here the layout's syntax tree takes the body's blocks in place of its
own, each include is replaced by the included file's tree, and the result compiles to one flat
template: a render costs what a hand-written body costs, and reads no file. It renders what Jinja's
own inheritance renders (tests/unit/test_template_layout.py compares the two).

What Jinja allows but a flat template cannot be, the catalog refuses at load: `super()` and `self`
(a block is replaced whole), an `extends` that is not at the top level or names no shared file, text
outside the blocks of a body that extends (Jinja drops it silently), a block the layout does not
have, a required block left unfilled, and a shared file that itself extends or includes.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import jinja2
from jinja2 import nodes
from jinja2.visitor import NodeTransformer

from mailsvc.adapters.template_checks import NO_SAFE_URL, links_without_safe_url, private_attributes

SHARED_DIR = "_layout"  # the one top-level folder of the catalog that is not a template id
_SHARED_SUFFIXES = (".html", ".txt")


@dataclass(frozen=True, slots=True)
class SharedFile:
    """A file of `_layout/`: its bytes (for the digest of every body using it) and its tree."""

    raw: bytes
    ast: nodes.Template | None  # None: the file has problems, listed once under its own name


@dataclass(frozen=True, slots=True)
class Spliced:
    """A body with its layout and includes spliced in."""

    ast: nodes.Template
    uses: tuple[str, ...]  # the shared files spliced in (e.g. "_layout/body.html"), first use first
    problems: tuple[tuple[int | None, str], ...]  # (line of the body, message); empty when usable


def load_shared(
    folder: Path, text_env: jinja2.Environment, html_env: jinja2.Environment, problems: list[str]
) -> dict[str, SharedFile]:
    """Every file of `_layout/`, by the name bodies use ("_layout/body.html"), parsed. A file's own
    problems are listed once, under its name; each body using it then fails with one line more."""
    if not folder.exists():
        return {}
    if not folder.is_dir():
        problems.append(f"{SHARED_DIR}: unexpected file (expected the folder of shared layouts)")
        return {}
    shared: dict[str, SharedFile] = {}
    # dot files (.DS_Store, .gitkeep) are not part of the catalog, as in the template folders
    for entry in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
        path = f"{SHARED_DIR}/{entry.name}"
        if not entry.is_file() or entry.suffix not in _SHARED_SUFFIXES:
            problems.append(f"{path}: unexpected file (expected .html or .txt)")
            continue
        try:
            raw = entry.read_bytes()
        except OSError as exc:
            problems.append(f"{path}: unreadable: {exc.strerror or exc}")
            continue
        ast, own = _parse_shared(path, raw, html_env if entry.suffix == ".html" else text_env)
        problems.extend(f"{path}{where}: {message}" for where, message in own)
        shared[path] = SharedFile(raw, None if own else ast)
    return shared


def _parse_shared(
    path: str, raw: bytes, env: jinja2.Environment
) -> tuple[nodes.Template | None, list[tuple[str, str]]]:
    """The file's tree and its problems as (":line" or "", message)."""
    try:
        source = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, [("", "not valid UTF-8")]
    own = [(f":{line}", NO_SAFE_URL) for line in links_without_safe_url(source)] if env.autoescape else []
    try:
        ast = env.parse(source, name=path)
    except jinja2.TemplateSyntaxError as exc:
        return None, [*own, (f":{exc.lineno}", exc.message or "syntax error")]
    found = private_attributes(ast) + [
        (n.lineno, "a shared file cannot extend or include another") for n in _references(ast)
    ]
    return ast, own + [(f":{line}", message) for line, message in found + _self_and_super(ast)]


def splices(ast: nodes.Template) -> bool:
    """Whether the template extends or includes anything (otherwise it compiles as it is)."""
    return next(ast.find_all((nodes.Extends, nodes.Include)), None) is not None


def splice(ast: nodes.Template, shared: Mapping[str, nodes.Template | None]) -> Spliced:
    """`ast` with its layout and includes spliced in. `shared` maps each file of `_layout/` to its
    tree, or to `None` when that file has problems of its own (reported under its own name)."""
    splicer = _Splicer(shared)
    flat = nodes.Template(splicer.body(ast), lineno=1)
    _Joiner().visit(flat)
    return Spliced(flat, tuple(splicer.uses), tuple(splicer.problems))


def _references(ast: nodes.Template) -> list[nodes.Extends | nodes.Include]:
    return list(ast.find_all((nodes.Extends, nodes.Include)))


def _self_and_super(ast: nodes.Template) -> list[tuple[int, str]]:
    return [
        (name.lineno, f"{name.name!r} is not available where a layout is spliced in (a block is replaced whole)")
        for name in ast.find_all(nodes.Name)
        if name.name in ("self", "super")
    ]


def _is_blank(node: nodes.Node) -> bool:
    """Whitespace between the blocks of a body that extends (Jinja never renders it either)."""
    return isinstance(node, nodes.Output) and all(
        isinstance(piece, nodes.TemplateData) and not piece.data.strip() for piece in node.nodes
    )


class _Splicer(NodeTransformer):
    def __init__(self, shared: Mapping[str, nodes.Template | None]) -> None:
        self._shared = shared
        self._blocks: dict[str, nodes.Block] = {}  # the body's blocks, which replace the layout's
        self._layout = ""
        self.uses: list[str] = []
        self.problems: list[tuple[int | None, str]] = []

    def _problem(self, line: int | None, message: str) -> None:
        self.problems.append((line, message))

    def body(self, ast: nodes.Template) -> list[nodes.Node]:
        self.problems.extend(_self_and_super(ast))
        top_level = [n for n in ast.body if isinstance(n, nodes.Extends)]
        for nested in (n for n in ast.find_all(nodes.Extends) if n not in top_level):
            self._problem(nested.lineno, "extends must stand at the top level, outside any block or tag")
        if not top_level:
            return self._splice(ast.body)
        extends = top_level[0]
        for extra in top_level[1:]:
            self._problem(extra.lineno, "a template extends one layout only")
        layout = self._resolve(extends.template, extends.lineno, "extends")
        self._blocks = {block.name: block for block in ast.find_all(nodes.Block)}
        defined = set() if layout is None else {block.name for block in layout.find_all(nodes.Block)}
        for node in ast.body:
            if isinstance(node, nodes.Block):
                if layout is not None and node.name not in defined:
                    self._problem(node.lineno, f"block {node.name!r} is not a block of {self._layout}")
            elif node is not extends and not _is_blank(node):
                self._problem(node.lineno, "outside a block: a template that extends renders only its blocks")
        return [] if layout is None else self._splice(layout.body)

    def _splice(self, body: list[nodes.Node]) -> list[nodes.Node]:
        spliced = self.visit(nodes.Scope(body))
        assert isinstance(spliced, nodes.Scope)
        return list(spliced.body)

    def _resolve(self, name: nodes.Expr, line: int, what: str) -> nodes.Template | None:
        """A copy of the shared file `name` names (the copy is spliced into, the original is shared)."""
        if not isinstance(name, nodes.Const) or not isinstance(name.value, str):
            self._problem(line, f'{what} must name a file of {SHARED_DIR}/ as a string, e.g. "{SHARED_DIR}/body.html"')
            return None
        path = name.value
        if path not in self._shared:
            self._problem(line, f"{what} {path!r}: no such file in {SHARED_DIR}/")
            return None
        if path not in self.uses:
            self.uses.append(path)
        tree = self._shared[path]
        if tree is None:
            self._problem(line, f"{what} {path!r}, which has problems (listed under its own name)")
            return None
        if what == "extends":
            self._layout = path
        # every node refers to the environment that parsed it: share it rather than copy it
        environment = getattr(tree, "environment", None)
        return copy.deepcopy(tree, {id(environment): environment})

    def visit_Block(self, node: nodes.Block) -> nodes.Node:
        chosen = self._blocks.get(node.name, node)
        if chosen is node and node.required:
            self._problem(None, f"fills no block {node.name!r}, which {self._layout or 'its layout'} requires")
        # a scope, like the block function Jinja would call: what a block sets stays in the block
        return self.generic_visit(nodes.Scope(chosen.body, lineno=node.lineno))

    def visit_Include(self, node: nodes.Include) -> nodes.Node:
        if not node.with_context:
            self._problem(node.lineno, "include … without context is not supported")
        included = self._resolve(node.template, node.lineno, "include")
        if included is None:
            return nodes.Scope([], lineno=node.lineno)
        outer, self._blocks = self._blocks, {}  # an included file renders its own blocks, never the body's
        try:
            return self.generic_visit(nodes.Scope(included.body, lineno=node.lineno))
        finally:
            self._blocks = outer


# what a scope keeps from leaking: without any of these inside, a scope is only a wrapper
_BINDS = (nodes.Assign, nodes.AssignBlock, nodes.Macro, nodes.Import, nodes.FromImport)


class _Joiner(NodeTransformer):
    """Removes the scopes that bind nothing and joins the text on either side of a former block
    or include boundary, so the layout's text and a block's text go out as one piece, as they
    would from a hand-written body (Jinja yields each output node's text separately)."""

    def generic_visit(self, node: nodes.Node, *args: object, **kwargs: object) -> nodes.Node:
        super().generic_visit(node)
        for field, value in node.iter_fields():
            if isinstance(value, list) and any(isinstance(item, nodes.Stmt) for item in value):
                setattr(node, field, _joined(value))
        return node


def _joined(body: list[nodes.Node]) -> list[nodes.Node]:
    out: list[nodes.Node] = []
    for node in body:
        if isinstance(node, nodes.Scope) and next(node.find_all(_BINDS), None) is None:
            pieces = _joined(node.body)
        else:
            pieces = [node]
        for piece in pieces:
            if out and isinstance(piece, nodes.Output) and isinstance(out[-1], nodes.Output):
                out[-1] = nodes.Output([*out[-1].nodes, *piece.nodes], lineno=out[-1].lineno)
            else:
                out.append(piece)
    return out
