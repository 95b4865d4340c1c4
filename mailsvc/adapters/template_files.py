"""Reading and compiling the template folder: every problem is collected, none stops the scan.

The folder holds one folder per template id, plus `_layout/`: the files bodies share, spliced into
each body that extends or includes them when the catalog loads (template_layout.py)."""

from __future__ import annotations

import hashlib
import keyword
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

from mailsvc.adapters.template_checks import NO_SAFE_URL, links_without_safe_url, private_attributes
from mailsvc.adapters.template_filters import paragraphs, safe_url
from mailsvc.adapters.template_layout import SHARED_DIR, SharedFile, load_shared, splice, splices

MANIFEST = "manifest.toml"
SUBJECT, BODY_TEXT, BODY_HTML = "subject.txt", "body.txt", "body.html"
LOCALE_FILES = (SUBJECT, BODY_TEXT, BODY_HTML)  # also the order the digest reads them in
DIGEST_LENGTH = 16

# a letter or digit first: a leading "_" marks the catalog's own folders (`_layout`), never a template
_TEMPLATE_ID = re.compile(r"[a-z0-9][a-z0-9_]*(\.[a-z0-9_]+)*")

_LOCALE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*")
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MANIFEST_KEYS = frozenset({"description", "default_locale", "variables", "sensitive"})
_VARIABLE_KEYS = frozenset({"description", "required", "default"})
# the nodes that can yield output any number of times: loops and macros (a `call` block needs one),
# and, never left after splicing, anything that would pull in another file
_REPEATING = (nodes.For, nodes.Macro, nodes.CallBlock, nodes.Include, nodes.Extends, nodes.Import, nodes.FromImport)


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    description: str = ""
    required: bool = True
    default: object = ""


@dataclass(frozen=True, slots=True)
class Manifest:
    description: str
    default_locale: str
    variables: tuple[Variable, ...]
    # the content is a secret (login code, reset link): redacted once the delivery is terminal (SPEC §13)
    sensitive: bool = False


@dataclass(frozen=True, slots=True)
class CompiledLocale:
    locale: str  # the folder's own spelling, e.g. "pt-BR"
    subject: jinja2.Template
    text: jinja2.Template
    html: jinja2.Template | None
    digest: str
    # a file of this locale has a loop or a macro, so its output can grow far past its inputs: its
    # parts are rendered piece by piece and stopped at the limit. Otherwise each part is a fixed
    # number of pieces, rendered in one go and measured once (no Python-level step per piece).
    repeats: bool


@dataclass(frozen=True, slots=True)
class CompiledTemplate:
    id: str
    manifest: Manifest
    locales: Mapping[str, CompiledLocale]  # keyed by locale_key(name)


def locale_key(locale: str) -> str:
    """Locale names compare case-insensitively, and `pt_BR` means `pt-BR`."""
    return locale.strip().replace("_", "-").lower()


def load_catalog(directory: Path) -> tuple[dict[str, CompiledTemplate], list[str]]:
    """Every template under `directory`, and every problem found (empty when the folder is valid)."""
    if not directory.is_dir():
        return {}, [f"{directory}: not a directory"]
    problems: list[str] = []
    text_env = _environment(autoescape=False)
    html_env = _environment(autoescape=True)
    shared = load_shared(directory / SHARED_DIR, text_env, html_env, problems)
    entries = [entry for entry in _visible(directory) if entry.name != SHARED_DIR]
    if not entries:
        problems.append(f"{directory}: no templates found")
    templates: dict[str, CompiledTemplate] = {}
    for entry in entries:
        if not entry.is_dir():
            problems.append(f"{entry.name}: unexpected file (expected one folder per template)")
        elif not _TEMPLATE_ID.fullmatch(entry.name):
            problems.append(f"{entry.name}: invalid template id (expected e.g. auth.login_code)")
        else:
            loader = _TemplateLoader(entry, text_env, html_env, shared, problems)
            compiled = loader.load()
            if compiled is not None:
                templates[compiled.id] = compiled
    return templates, problems


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with a fast path for attributes of strings (`.split`, `.strip`…):
    for a `str` the full check reduces to "not private", so that is all it computes."""

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if type(obj) is str or type(obj) is Markup:
            return not attr.startswith("_")
        return super().is_safe_attribute(obj, attr, value)

    def make_globals(self, d: Any) -> Any:
        # a plain dict, not jinja's ChainMap: every render copies the globals into its context, and
        # copying a ChainMap is Python-level work; the catalog never changes them after loading
        return {**self.globals, **(d or {})}


def _environment(*, autoescape: bool) -> jinja2.Environment:
    env = _Sandbox(
        undefined=jinja2.StrictUndefined,
        autoescape=autoescape,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.filters["safe_url"] = safe_url
    if autoescape:  # HTML markup: only for the HTML bodies (a text template using it fails to load)
        env.filters["paragraphs"] = paragraphs
    return env


def _visible(directory: Path) -> list[Path]:
    # editor and OS droppings (.DS_Store, .gitkeep) are not part of the catalog
    return sorted(p for p in directory.iterdir() if not p.name.startswith("."))


class _TemplateLoader:
    """Loads one template folder, appending to the shared problem list."""

    def __init__(
        self,
        folder: Path,
        text_env: jinja2.Environment,
        html_env: jinja2.Environment,
        shared: Mapping[str, SharedFile],
        problems: list[str],
    ) -> None:
        self._folder = folder
        self._id = folder.name
        self._text_env = text_env
        self._html_env = html_env
        self._shared = shared
        self._problems = problems
        self._failed = False

    def _problem(self, where: str, message: str) -> None:
        self._failed = True
        self._problems.append(f"{self._id}/{where}: {message}")

    def load(self) -> CompiledTemplate | None:
        manifest_bytes = self._read(self._folder / MANIFEST, MANIFEST)
        manifest = None if manifest_bytes is None else self._parse_manifest(manifest_bytes)
        locale_dirs: dict[str, Path] = {}
        for entry in _visible(self._folder):
            if entry.name == MANIFEST and entry.is_file():
                continue
            if not entry.is_dir():
                self._problem(entry.name, "unexpected file")
            elif not _LOCALE.fullmatch(entry.name):
                self._problem(entry.name, "invalid locale folder name (expected e.g. en, pt-BR)")
            elif (key := locale_key(entry.name)) in locale_dirs:
                self._problem(entry.name, f"same locale as {locale_dirs[key].name}")
            else:
                locale_dirs[key] = entry
        if manifest is not None and locale_key(manifest.default_locale) not in locale_dirs:
            self._problem(MANIFEST, f"default locale folder {manifest.default_locale!r} is missing")
        declared = None if manifest is None else frozenset(v.name for v in manifest.variables)
        locales: dict[str, CompiledLocale] = {}
        for key, folder in locale_dirs.items():
            compiled = self._load_locale(folder, declared, manifest_bytes or b"")
            if compiled is not None:
                locales[key] = compiled
        if self._failed or manifest is None:
            return None
        return CompiledTemplate(self._id, manifest, MappingProxyType(locales))

    def _read(self, path: Path, where: str) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            self._problem(where, "missing")
        except OSError as exc:
            self._problem(where, f"unreadable: {exc.strerror or exc}")
        return None

    def _parse_manifest(self, raw: bytes) -> Manifest | None:
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            self._problem(MANIFEST, "not valid UTF-8")
            return None
        except tomllib.TOMLDecodeError as exc:
            self._problem(MANIFEST, f"invalid TOML: {exc}")
            return None
        for unknown in sorted(set(data) - _MANIFEST_KEYS):
            self._problem(MANIFEST, f"unknown key {unknown!r}")
        description, default_locale = data.get("description"), data.get("default_locale")
        if not isinstance(description, str) or not description.strip():
            self._problem(MANIFEST, "'description' must be a non-empty string")
        if not isinstance(default_locale, str) or not _LOCALE.fullmatch(default_locale):
            self._problem(MANIFEST, "'default_locale' must be a locale name such as 'en'")
        sensitive = data.get("sensitive", False)
        if not isinstance(sensitive, bool):
            self._problem(MANIFEST, "'sensitive' must be true or false")
        variables = self._parse_variables(data.get("variables"))
        if self._failed or variables is None:
            return None
        return Manifest(str(description).strip(), str(default_locale), variables, sensitive is True)

    def _parse_variables(self, raw: object) -> tuple[Variable, ...] | None:
        if isinstance(raw, list):
            specs: dict[str, Any] = {}
            for name in raw:
                if not isinstance(name, str):
                    self._problem(MANIFEST, f"variable names must be strings, got {name!r}")
                elif name in specs:
                    self._problem(MANIFEST, f"variable {name!r} declared twice")
                else:
                    specs[name] = {}
        elif isinstance(raw, dict):
            specs = raw
        else:
            self._problem(MANIFEST, "'variables' must be a list of names or a table of variables")
            return None
        return tuple(v for name, spec in specs.items() if (v := self._variable(name, spec)) is not None)

    def _variable(self, name: str, spec: object) -> Variable | None:
        if not _VARIABLE.fullmatch(name) or keyword.iskeyword(name) or name in {"true", "false", "none"}:
            self._problem(MANIFEST, f"invalid variable name {name!r}")
            return None
        if not isinstance(spec, dict):
            self._problem(MANIFEST, f"variable {name!r} must be a table, e.g. {{ description = '…' }}")
            return None
        for unknown in sorted(set(spec) - _VARIABLE_KEYS):
            self._problem(MANIFEST, f"variable {name!r}: unknown key {unknown!r}")
        description = spec.get("description", "")
        required = spec.get("required", "default" not in spec)
        if not isinstance(description, str):
            self._problem(MANIFEST, f"variable {name!r}: 'description' must be a string")
        if not isinstance(required, bool):
            self._problem(MANIFEST, f"variable {name!r}: 'required' must be true or false")
        elif required and "default" in spec:
            self._problem(MANIFEST, f"variable {name!r}: a required variable cannot have a default")
        else:
            return Variable(name, str(description), required, spec.get("default", ""))
        return None

    def _load_locale(
        self, folder: Path, declared: frozenset[str] | None, manifest_bytes: bytes
    ) -> CompiledLocale | None:
        failed_before, self._failed = self._failed, False
        for entry in _visible(folder):
            if entry.name not in LOCALE_FILES or not entry.is_file():
                self._problem(f"{folder.name}/{entry.name}", "unexpected file")
        digest = hashlib.sha256()
        digest.update(manifest_bytes)
        compiled: dict[str, jinja2.Template] = {}
        repeats = False
        for name in LOCALE_FILES:
            where = f"{folder.name}/{name}"
            path = folder / name
            if name == BODY_HTML and not path.exists():
                continue
            raw = self._read(path, where)
            if raw is None:
                continue
            digest.update(f"\0{name}\0{len(raw)}\0".encode())
            digest.update(raw)
            result = self._compile(where, raw, declared)
            if result is not None:
                compiled[name], uses, repeating = result
                repeats = repeats or repeating
                for used in uses:  # the layout is one of "the exact template files used" (SPEC §1)
                    shared_raw = self._shared[used].raw
                    digest.update(f"\0{used}\0{len(shared_raw)}\0".encode())
                    digest.update(shared_raw)
        ok = not self._failed
        self._failed = self._failed or failed_before
        if not ok:
            return None
        return CompiledLocale(
            locale=folder.name,
            subject=compiled[SUBJECT],
            text=compiled[BODY_TEXT],
            html=compiled.get(BODY_HTML),
            digest=digest.hexdigest()[:DIGEST_LENGTH],
            repeats=repeats,
        )

    def _compile(
        self, where: str, raw: bytes, declared: frozenset[str] | None
    ) -> tuple[jinja2.Template, tuple[str, ...], bool] | None:
        """The compiled file, the shared files spliced into it and whether it has a loop or a
        macro (`CompiledLocale.repeats`), or `None` after a problem."""
        try:
            source = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._problem(where, "not valid UTF-8")
            return None
        if where.endswith(SUBJECT):
            line = source.removesuffix("\n").removesuffix("\r")
            if "\n" in line or "\r" in line:
                self._problem(where, "must be a single line")
                return None
            if not line.strip():
                self._problem(where, "is empty")
                return None
        env = self._html_env if where.endswith(".html") else self._text_env
        name = f"{self._id}/{where}"
        failed_before, self._failed = self._failed, False
        if env is self._html_env:
            for number in links_without_safe_url(source):
                self._problem(f"{where}:{number}", NO_SAFE_URL)
        try:
            ast = env.parse(source, name=name)
            for number, message in private_attributes(ast):
                self._problem(f"{where}:{number}", message)
            uses: tuple[str, ...] = ()
            if splices(ast):
                spliced = splice(ast, {path: file.ast for path, file in self._shared.items()})
                for at, message in spliced.problems:
                    self._problem(where if at is None else f"{where}:{at}", message)
                if spliced.problems:
                    return None
                ast, uses = spliced.ast, spliced.uses
                ast.set_environment(env)
            self._check_names(where, ast, env, declared)
            if not self._failed:
                template = env.template_class.from_code(env, env.compile(ast, name), env.make_globals(None))
                return template, uses, any(ast.find_all(_REPEATING))
        except jinja2.TemplateSyntaxError as exc:
            self._problem(f"{where}:{exc.lineno}", exc.message or "syntax error")
        finally:
            self._failed = self._failed or failed_before
        return None

    def _check_names(
        self, where: str, ast: nodes.Template, env: jinja2.Environment, declared: frozenset[str] | None
    ) -> None:
        if declared is not None:
            unknown = meta.find_undeclared_variables(ast) - declared - env.globals.keys()
            if unknown:
                self._problem(where, f"uses undeclared variable(s): {', '.join(sorted(unknown))}")
