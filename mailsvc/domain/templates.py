"""The template catalog's vocabulary (SPEC §6): what a catalog says about itself and how a render
request can fail. Pure; the catalog itself (Jinja2, files) is an adapter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mailsvc.errors import MailsvcError

DEFAULT_MAX_RENDERED_BYTES = 1024 * 1024  # SPEC §2: each rendered body, in UTF-8 bytes (MAIL_MAX_RENDERED_BYTES)


class CatalogError(MailsvcError):
    """The template folder is invalid; `problems` lists every problem found, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"{len(problems)} template problem(s): " + "; ".join(problems))
        self.problems = list(problems)


class TemplateError(MailsvcError):
    """A render request that can never succeed; `reason` is a stable machine-readable code and
    `field` the request field to blame."""

    reason: ClassVar[str] = "template_error"
    field: str = "template"


class UnknownTemplate(TemplateError):
    reason = "unknown_template"

    def __init__(self, template_id: str) -> None:
        super().__init__(f"unknown template {template_id!r}")
        self.template_id = template_id


class MissingVariables(TemplateError):
    reason = "missing_variables"

    def __init__(self, template_id: str, names: list[str]) -> None:
        super().__init__(f"template {template_id!r} is missing variable(s): {', '.join(names)}")
        self.template_id = template_id
        self.names = list(names)


class TemplateRenderError(TemplateError):
    reason = "render_failed"

    def __init__(self, template_id: str, locale: str, message: str) -> None:
        super().__init__(f"template {template_id!r} ({locale}) failed to render: {message}")
        self.template_id = template_id
        self.locale = locale


class RenderTooLarge(TemplateError):
    """The rendered subject passes 998 characters, or a rendered body the byte limit."""

    reason = "render_too_large"

    def __init__(self, template_id: str, locale: str, message: str) -> None:
        super().__init__(f"template {template_id!r} ({locale}): {message}")
        self.template_id = template_id
        self.locale = locale


class RejectedVariable(TemplateError):
    """A variable's value that the template refuses to render (a link that is not http(s))."""

    reason = "validation_failed"

    def __init__(self, template_id: str, names: list[str], message: str) -> None:
        super().__init__(message)
        self.template_id = template_id
        self.field = f"variables.{names[0]}" if len(names) == 1 else "variables"


@dataclass(frozen=True, slots=True)
class TemplateInfo:
    id: str
    description: str
    default_locale: str
    locales: tuple[str, ...]  # sorted
    variables: tuple[str, ...]  # every declared name, in manifest order
    required_variables: tuple[str, ...]
    sensitive: bool = False
