"""The shared layout (`templates/_layout/`): spliced into each body when the catalog loads, it renders
what Jinja's own inheritance renders, costs nothing per render, is part of every digest, and a
problem in it (or in how a body uses it) is listed at load."""

from __future__ import annotations

import shutil
from pathlib import Path

import jinja2
import pytest

from mailsvc.adapters.template_files import load_catalog
from mailsvc.adapters.template_filters import paragraphs, safe_url
from mailsvc.adapters.templates import TemplateCatalog
from mailsvc.templates_cli import check_command
from tests.unit.test_templates import SAMPLES, SHIPPED, write_template

LOCALES = ("en", "pt-BR")
# a few inputs per template: the samples, singular/plural, values that need escaping, the button
INPUTS: dict[str, list[dict[str, object]]] = {
    "auth.login_code": [SAMPLES["auth.login_code"], {"code": "<b>&1", "expires_in_minutes": 1}],
    "auth.email_verification": [
        SAMPLES["auth.email_verification"],
        {"verification_url": "http://e.test/?a=1&b=\"2\"", "expires_in_hours": 1},
    ],
    "auth.password_reset": [
        SAMPLES["auth.password_reset"],
        {"reset_url": "https://e.test/<x>", "expires_in_minutes": "1"},
    ],
    "notification.generic": [
        SAMPLES["notification.generic"] | {"action_url": "", "action_label": ""},
        {"title": "T <x>", "body": "one\nline\n\n\ntwo & <three>", "action_url": "https://x.test/?a=1&b=2",
         "action_label": ""},
        {"title": "T", "body": "", "action_url": "https://x.test/", "action_label": "Open & <see>"},
    ],
}  # fmt: skip


def jinja_inheritance(directory: Path) -> jinja2.Environment:
    """Jinja resolving `extends` and `include` itself, per render, from the folder: the reference."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        undefined=jinja2.StrictUndefined,
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(safe_url=safe_url, paragraphs=paragraphs)
    return env


def copy_of_shipped(tmp_path: Path) -> Path:
    folder = tmp_path / "templates"
    shutil.copytree(SHIPPED, folder)
    return folder


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("template_id", sorted(INPUTS))
def test_a_spliced_body_renders_what_jinja_inheritance_renders(template_id: str, locale: str) -> None:
    catalog = TemplateCatalog.load(SHIPPED)
    reference = jinja_inheritance(SHIPPED).get_template(f"{template_id}/{locale}/body.html")
    for variables in INPUTS[template_id]:
        assert catalog.render(template_id, locale, variables).html == reference.render(variables)


def test_every_shipped_body_uses_the_layout_and_keeps_its_filters() -> None:
    bodies = sorted(SHIPPED.glob("*/*/body.html"))
    assert len(bodies) == 8
    assert all(body.read_text().startswith('{% extends "_layout/body.html" %}\n') for body in bodies)
    catalog = TemplateCatalog.load(SHIPPED)
    generic = catalog.render("notification.generic", "en", {"title": "T", "body": "a <b>\n\nc"})
    assert generic.html is not None
    assert '<p style="margin:0 0 16px;">a &lt;b&gt;</p>\n<p style="margin:0 0 16px;">c</p>' in generic.html
    assert '<div style="display:none' not in generic.html  # it empties the preheader block
    verification = catalog.render("auth.email_verification", "pt-BR", SAMPLES["auth.email_verification"])
    assert verification.html is not None
    assert verification.html.startswith('<!DOCTYPE html>\n<html lang="pt-BR">\n')
    assert verification.html.endswith("</body>\n</html>")
    assert 'mso-hide:all;">Confirme seu e-mail para concluir a configuração da sua conta.</div>\n' in verification.html


def test_nothing_is_resolved_or_read_when_rendering(tmp_path: Path) -> None:
    folder = copy_of_shipped(tmp_path)
    templates, problems = load_catalog(folder)
    assert problems == []
    for template in templates.values():
        for compiled in template.locales.values():
            assert compiled.html is not None
            assert compiled.html.blocks == {}  # one flat template: no block functions, no parent
    catalog = TemplateCatalog(templates)
    shutil.rmtree(folder)  # every file is gone: rendering needs none of them
    for template_id, inputs in INPUTS.items():
        for locale in LOCALES:
            assert catalog.render(template_id, locale, inputs[-1]).html


def digests(folder: Path) -> dict[tuple[str, str], str]:
    catalog = TemplateCatalog.load(folder)
    found = {}
    for template_id, inputs in INPUTS.items():
        for locale in LOCALES:
            digest = catalog.render(template_id, locale, inputs[0]).template_digest
            assert digest is not None
            found[(template_id, locale)] = digest
    return found


def test_the_shared_files_a_body_uses_are_part_of_its_digest(tmp_path: Path) -> None:
    folder = copy_of_shipped(tmp_path)
    before = digests(folder)
    assert len(set(before.values())) == 8

    layout = folder / "_layout" / "body.html"
    layout.write_text(layout.read_text() + "<!-- changed -->\n")
    after_layout = digests(folder)
    assert all(after_layout[key] != before[key] for key in before)

    button = folder / "_layout" / "button.html"
    button.write_text(button.read_text().replace("padding:12px 24px", "padding:12px 20px"))
    after_button = digests(folder)
    for (template_id, locale), digest in after_button.items():
        uses_the_button = template_id != "auth.login_code"
        assert (digest != after_layout[(template_id, locale)]) is uses_the_button, (template_id, locale)


def test_a_broken_layout_is_a_problem_of_every_template_using_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = copy_of_shipped(tmp_path)
    layout = folder / "_layout" / "body.html"
    layout.write_text(layout.read_text().replace("{% block heading required %}", "{% block heading required "))
    assert check_command(folder) == 1
    problems = capsys.readouterr().err.splitlines()
    assert problems[0].startswith("_layout/body.html:")
    consequence = "extends '_layout/body.html', which has problems (listed under its own name)"
    expected = [
        f"{template_id}/{locale}/body.html:1: {consequence}" for template_id in sorted(INPUTS) for locale in LOCALES
    ]
    assert problems[1:] == expected


def layout_catalog(root: Path) -> None:
    """A small catalog with a layout, a part, and bodies that misuse them."""
    shared = root / "_layout"
    shared.mkdir(parents=True)
    (shared / "page.html").write_text(
        '<html lang="{% block lang required %}{% endblock %}">\n{% block content required %}{% endblock %}\n'
        "<footer>{% block footer %}default{% endblock %}</footer>\n</html>\n"
    )
    (shared / "part.html").write_text('<a href="{{ url|safe_url }}">{{ label }}</a>\n{# keeps the newline #}\n')
    (shared / "greeting.html").write_text("<p>{{ greeting }}</p>\n")
    (shared / "link.html").write_text('<a href="{{ url }}">x</a>\n')
    (shared / "chain.html").write_text('{% include "_layout/part.html" %}\n')
    (shared / "notes.md").write_text("not a layout\n")

    def body(template_id: str, html: str) -> None:
        write_template(root, template_id, {"en": {"subject.txt": "S\n", "body.txt": "{{ name }}", "body.html": html}})

    extends = '{% extends "_layout/page.html" %}\n{% block lang %}en{% endblock %}\n'
    body("t.ok", extends + '{% block content %}\n<p>{{ name }}</p>\n{% with url=name, label="Go" %}'
         '{% include "_layout/part.html" %}{% endwith %}\n{% set local = 1 %}\n{% endblock %}\n')  # fmt: skip
    body("t.stray", extends + "Hello\n{% block content %}x{% endblock %}\n")
    body("t.unknown", extends + "{% block content %}x{% endblock %}\n{% block nope %}y{% endblock %}\n")
    body("t.unfilled", extends)
    body("t.missing", '{% extends "_layout/nope.html" %}\n')
    body("t.dynamic", "{% extends name %}\n")
    body("t.super", extends + "{% block content %}{{ super() }}{% endblock %}\n")
    body("t.nested", '{% if name %}{% extends "_layout/page.html" %}{% endif %}\n')
    body("t.greeting", '{% include "_layout/greeting.html" %}\n')
    body("t.link", '{% with url=name %}{% include "_layout/link.html" %}{% endwith %}\n')
    body("t.chain", '{% include "_layout/chain.html" %}\n')
    write_template(root, "_private", {"en": {"subject.txt": "S\n", "body.txt": "{{ name }}"}})


def test_misuse_of_the_layout_is_listed_at_load(tmp_path: Path) -> None:
    layout_catalog(tmp_path)
    templates, problems = load_catalog(tmp_path)
    assert sorted(problems) == sorted([
        "_layout/chain.html:1: a shared file cannot extend or include another",
        "_layout/link.html:1: a link's URL must pass through the safe_url filter",
        "_layout/notes.md: unexpected file (expected .html or .txt)",
        "_private: invalid template id (expected e.g. auth.login_code)",
        "t.stray/en/body.html:3: outside a block: a template that extends renders only its blocks",
        "t.unknown/en/body.html:4: block 'nope' is not a block of _layout/page.html",
        "t.unfilled/en/body.html: fills no block 'content', which _layout/page.html requires",
        "t.missing/en/body.html:1: extends '_layout/nope.html': no such file in _layout/",
        't.dynamic/en/body.html:1: extends must name a file of _layout/ as a string, e.g. "_layout/body.html"',
        "t.super/en/body.html:3: 'super' is not available where a layout is spliced in (a block is replaced whole)",
        "t.nested/en/body.html:1: extends must stand at the top level, outside any block or tag",
        "t.greeting/en/body.html: uses undeclared variable(s): greeting",
        "t.link/en/body.html:1: include '_layout/link.html', which has problems (listed under its own name)",
        "t.chain/en/body.html:1: include '_layout/chain.html', which has problems (listed under its own name)",
    ])  # fmt: skip
    assert set(templates) == {"t.ok"}
    html = TemplateCatalog(templates).render("t.ok", "en", {"name": "https://a.test/?x=<1>"}).html
    url = "https://a.test/?x=&lt;1&gt;"
    assert html == f'<html lang="en">\n<p>{url}</p>\n<a href="{url}">Go</a>\n<footer>default</footer>\n</html>'
