"""The template catalog: loaded eagerly from disk, immutable, rendered in a sandbox (SPEC §6)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import jinja2

from mailsvc.adapters.template_files import CompiledLocale, CompiledTemplate, load_catalog, locale_key
from mailsvc.adapters.template_filters import UnsafeUrl
from mailsvc.domain.commands import MAX_SUBJECT, utf8_size
from mailsvc.domain.model import RenderedContent
from mailsvc.domain.templates import (
    DEFAULT_MAX_RENDERED_BYTES,
    CatalogError,
    MissingVariables,
    RejectedVariable,
    RenderTooLarge,
    TemplateInfo,
    TemplateRenderError,
    UnknownTemplate,
)

# control characters (C0, DEL, C1) and Unicode line/paragraph separators: none may reach a header
_SUBJECT_BREAKS = re.compile(r"[\s\x00-\x1f\x7f-\x9f\u2028\u2029]+")


class _TooLarge(Exception):
    """Raised out of a render the moment its output passes the limit (internal to this module)."""

    def __init__(self, part: str) -> None:
        super().__init__(part)
        self.part = part


class TemplateCatalog:
    """Every template, parsed and compiled once; rendering touches no file."""

    __slots__ = ("_templates",)

    def __init__(self, templates: Mapping[str, CompiledTemplate]) -> None:
        self._templates: Mapping[str, CompiledTemplate] = MappingProxyType(dict(templates))

    @classmethod
    def load(cls, directory: Path) -> TemplateCatalog:
        """Read, validate and compile every template under `directory`.

        Raises `CatalogError` listing every problem found anywhere in the folder.
        """
        templates, problems = load_catalog(directory)
        if problems:
            raise CatalogError(problems)
        return cls(templates)

    def has(self, template_id: str) -> bool:
        return template_id in self._templates

    def templates(self) -> list[TemplateInfo]:
        return [_info(self._templates[tid]) for tid in sorted(self._templates)]

    def render(
        self,
        template_id: str,
        locale: str | None,
        variables: Mapping[str, object],
        *,
        max_bytes: int = DEFAULT_MAX_RENDERED_BYTES,
    ) -> RenderedContent:
        """Render `template_id` in `locale` (falling back `pt-BR` → `pt` → the default locale).

        Undeclared variables are ignored; a declared one whose value is absent or `None` counts as
        missing unless the manifest gives it a default. Raises `UnknownTemplate`,
        `MissingVariables` (naming every missing variable, checked before rendering),
        `RenderTooLarge` (the subject passes 998 characters or a body `max_bytes` UTF-8 bytes:
        rendering stops right there, so its cost is bounded by the limit, not by how much the
        template multiplies its input), `RejectedVariable` (a link that is not http(s)) or
        `TemplateRenderError` (anything else the template raises, sandbox refusals included).
        The subject is always one line: control characters a variable carries become spaces.
        """
        template = self._templates.get(template_id)
        if template is None:
            raise UnknownTemplate(template_id)
        context: dict[str, object] = {}
        missing: list[str] = []
        for declared in template.manifest.variables:
            value = variables.get(declared.name)
            if value is not None:
                context[declared.name] = value
            elif declared.required:
                missing.append(declared.name)
            else:
                context[declared.name] = declared.default
        if missing:
            raise MissingVariables(template_id, missing)
        chosen = _resolve_locale(template, locale)
        bounded = _streamed if chosen.repeats else _whole
        try:
            subject = _SUBJECT_BREAKS.sub(" ", bounded(chosen.subject, context, "subject", max_bytes)).strip()
            if len(subject) > MAX_SUBJECT:
                raise _TooLarge("subject")
            text = bounded(chosen.text, context, "text body", max_bytes)
            html = None if chosen.html is None else bounded(chosen.html, context, "HTML body", max_bytes)
        except _TooLarge as exc:
            if exc.part == "subject":
                message = f"the rendered subject is longer than {MAX_SUBJECT} characters"
            else:
                message = f"the rendered {exc.part} is longer than {max_bytes} bytes (MAIL_MAX_RENDERED_BYTES)"
            raise RenderTooLarge(template_id, chosen.locale, message) from None
        except UnsafeUrl as exc:
            names = sorted(name for name, value in context.items() if isinstance(value, str) and value == exc.value)
            raise RejectedVariable(template_id, names, f"{', '.join(names) or 'a variable'}: {exc}") from None
        except jinja2.TemplateError as exc:
            raise TemplateRenderError(template_id, chosen.locale, exc.message or type(exc).__name__) from exc
        except Exception as exc:
            raise TemplateRenderError(template_id, chosen.locale, f"{type(exc).__name__}: {exc}") from exc
        if not subject:
            raise TemplateRenderError(template_id, chosen.locale, "the subject rendered empty")
        return RenderedContent(
            subject=subject,
            text=text,
            html=html,
            locale=chosen.locale,
            template_digest=chosen.digest,
            sensitive=template.manifest.sensitive,
        )


def _whole(template: jinja2.Template, context: Mapping[str, object], part: str, limit: int) -> str:
    """The output of a template without loops or macros, or `_TooLarge` past `limit` UTF-8 bytes.

    Such a template yields a fixed number of pieces, so stopping between two of them (`_streamed`)
    could only save the pieces after the one that passed the limit: rendered whole, it skips a
    Python-level step per piece (27 for the three parts of a notification) and measures the result
    once."""
    output = template.render(context)
    if utf8_size(output) > limit:
        raise _TooLarge(part)
    return output


def _streamed(template: jinja2.Template, context: Mapping[str, object], part: str, limit: int) -> str:
    """The template's output, piece by piece (`generate`), stopped with `_TooLarge` as soon as it
    passes `limit` UTF-8 bytes: a template that turns each line of a 256 KiB variable into markup
    is cut off at the limit instead of producing (and paying for) 15 MB."""
    pieces: list[str] = []
    size = 0
    # leaving the loop drops the generator, which closes it: the render stops where it stood
    for piece in template.generate(context):
        size += len(piece) if piece.isascii() else utf8_size(piece)
        if size > limit:
            raise _TooLarge(part)
        pieces.append(piece)
    return "".join(pieces)


def _resolve_locale(template: CompiledTemplate, requested: str | None) -> CompiledLocale:
    if requested:
        subtags = locale_key(requested).split("-")
        while subtags:
            found = template.locales.get("-".join(subtags))
            if found is not None:
                return found
            subtags.pop()
    return template.locales[locale_key(template.manifest.default_locale)]


def _info(template: CompiledTemplate) -> TemplateInfo:
    manifest = template.manifest
    return TemplateInfo(
        id=template.id,
        description=manifest.description,
        default_locale=manifest.default_locale,
        locales=tuple(sorted(loc.locale for loc in template.locales.values())),
        variables=tuple(v.name for v in manifest.variables),
        required_variables=tuple(v.name for v in manifest.variables if v.required),
        sensitive=manifest.sensitive,
    )
