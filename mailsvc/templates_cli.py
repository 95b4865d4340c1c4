"""`mailsvc templates check` and `mailsvc templates render`: the catalog seen from a terminal."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mailsvc.adapters.templates import TemplateCatalog
from mailsvc.domain.templates import CatalogError, TemplateError


def check_command(template_dir: Path) -> int:
    """Load the whole catalog; print a one-line summary (0) or every problem to stderr (1)."""
    catalog = _load(template_dir)
    if catalog is None:
        return 1
    infos = catalog.templates()
    locales = sum(len(info.locales) for info in infos)
    print(f"ok: {len(infos)} templates, {locales} locales")
    return 0


def render_command(template_dir: Path, template_id: str, locale: str | None, vars_json: str) -> int:
    """Render one template with variables given as a JSON object; print subject, text and HTML."""
    try:
        variables = json.loads(vars_json)
    except json.JSONDecodeError as exc:
        return _fail(f"--vars is not valid JSON: {exc}")
    if not isinstance(variables, dict):
        return _fail('--vars must be a JSON object, e.g. \'{"code": "123456"}\'')
    catalog = _load(template_dir)
    if catalog is None:
        return 1
    try:
        content = catalog.render(template_id, locale, variables)
    except TemplateError as exc:
        return _fail(str(exc))
    print(f"locale: {content.locale}")
    print(f"digest: {content.template_digest}")
    print(f"subject: {content.subject}")
    print("----- text -----")
    print(content.text)
    print("----- html -----")
    print(content.html if content.html is not None else "(none)")
    return 0


def _load(template_dir: Path) -> TemplateCatalog | None:
    try:
        return TemplateCatalog.load(template_dir)
    except CatalogError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1
