from __future__ import annotations

import json
from pathlib import Path

import pytest

from mailsvc.adapters.templates import TemplateCatalog
from mailsvc.domain.templates import CatalogError, MissingVariables, TemplateRenderError, UnknownTemplate
from mailsvc.templates_cli import check_command, render_command

SHIPPED = Path(__file__).resolve().parents[2] / "templates"

SAMPLES: dict[str, dict[str, object]] = {
    "auth.login_code": {"code": "481516", "expires_in_minutes": 10},
    "auth.email_verification": {"verification_url": "https://example.test/v?t=abc", "expires_in_hours": 24},
    "auth.password_reset": {"reset_url": "https://example.test/r?t=abc", "expires_in_minutes": 30},
    "notification.generic": {"title": "Export ready", "body": "Your export is ready.\n\nIt has 3 files."},
}


def write_template(
    root: Path,
    template_id: str,
    locales: dict[str, dict[str, str]],
    *,
    variables: str = 'variables = ["name"]',
    default_locale: str = "en",
) -> Path:
    folder = root / template_id
    folder.mkdir(parents=True)
    manifest = f'description = "test"\ndefault_locale = "{default_locale}"\n{variables}\n'
    (folder / "manifest.toml").write_text(manifest)
    for locale, files in locales.items():
        (folder / locale).mkdir()
        for name, content in files.items():
            (folder / locale / name).write_text(content)
    return folder


def simple(subject: str = "Hi {{ name }}", text: str = "Hello {{ name }}") -> dict[str, str]:
    return {"subject.txt": subject + "\n", "body.txt": text}


@pytest.fixture(scope="module")
def shipped() -> TemplateCatalog:
    return TemplateCatalog.load(SHIPPED)


def test_shipped_catalog_lists_every_required_template(shipped: TemplateCatalog) -> None:
    infos = {info.id: info for info in shipped.templates()}
    assert set(infos) == set(SAMPLES)
    for info in infos.values():
        assert info.default_locale == "en"
        assert info.locales == ("en", "pt-BR")
    assert infos["notification.generic"].required_variables == ("title", "body")
    assert shipped.has("auth.login_code")
    assert not shipped.has("auth.nope")


@pytest.mark.parametrize("locale", ["en", "pt-BR"])
@pytest.mark.parametrize("template_id", sorted(SAMPLES))
def test_every_shipped_template_renders(shipped: TemplateCatalog, template_id: str, locale: str) -> None:
    content = shipped.render(template_id, locale, SAMPLES[template_id])
    assert content.locale == locale
    assert content.subject
    assert "\n" not in content.subject
    assert content.html is not None
    assert content.html.startswith("<!DOCTYPE html>")
    assert f'lang="{locale}"' in content.html
    assert content.template_digest is not None
    assert len(content.template_digest) == 16
    for value in SAMPLES[template_id].values():
        first_line = str(value).split("\n")[0]
        assert first_line in content.text
        assert first_line in content.html


def test_login_code_is_prominent_and_pluralised(shipped: TemplateCatalog) -> None:
    one = shipped.render("auth.login_code", "en", {"code": "123456", "expires_in_minutes": 1})
    assert one.subject == "123456 is your sign-in code"
    assert "1 minute " in one.text
    assert one.html is not None
    assert "monospace" in one.html
    pt = shipped.render("auth.login_code", "pt-BR", {"code": "123456", "expires_in_minutes": 15})
    assert "15 minutos" in pt.text


def test_generic_notification_optional_action(shipped: TemplateCatalog) -> None:
    without = shipped.render("notification.generic", "en", {"title": "T", "body": "B"})
    assert without.html is not None
    assert "<a " not in without.html
    assert "View details" not in without.text
    with_action = shipped.render(
        "notification.generic", "pt-BR", {"title": "T", "body": "B", "action_url": "https://x.test/?a=1&b=2"}
    )
    assert "Ver detalhes: https://x.test/?a=1&b=2" in with_action.text
    assert with_action.html is not None
    assert 'href="https://x.test/?a=1&amp;b=2"' in with_action.html


def test_locale_fallback(tmp_path: Path) -> None:
    write_template(
        tmp_path,
        "t.one",
        {"en": simple("en {{ name }}"), "pt": simple("pt {{ name }}"), "fr-CA": simple("fr-CA {{ name }}")},
    )
    catalog = TemplateCatalog.load(tmp_path)
    vars_ = {"name": "x"}
    assert catalog.render("t.one", "pt-BR", vars_).locale == "pt"
    assert catalog.render("t.one", "pt-BR", vars_).subject == "pt x"
    assert catalog.render("t.one", "PT", vars_).locale == "pt"
    assert catalog.render("t.one", "fr-ca", vars_).locale == "fr-CA"
    assert catalog.render("t.one", "fr", vars_).locale == "en"
    assert catalog.render("t.one", "de-DE", vars_).locale == "en"
    assert catalog.render("t.one", None, vars_).locale == "en"


def test_unknown_template(shipped: TemplateCatalog) -> None:
    with pytest.raises(UnknownTemplate) as info:
        shipped.render("auth.nope", "en", {})
    assert info.value.reason == "unknown_template"


def test_missing_variables_reported_all_at_once(tmp_path: Path) -> None:
    write_template(
        tmp_path,
        "t.vars",
        {"en": simple("{{ a }}", "{{ b }} {{ c }} {{ d }}")},
        variables='[variables]\na = {}\nb = {}\nc = {}\nd = { required = false, default = "dflt" }',
    )
    catalog = TemplateCatalog.load(tmp_path)
    with pytest.raises(MissingVariables) as info:
        catalog.render("t.vars", "en", {"b": "x", "c": None, "extra": "ignored"})
    assert info.value.names == ["a", "c"]
    content = catalog.render("t.vars", "en", {"a": 1, "b": 2, "c": 3, "extra": 4})
    assert content.text == "2 3 dflt"


def test_html_autoescaped_text_not(tmp_path: Path) -> None:
    files = simple("S", "{{ name }}") | {"body.html": "<p>{{ name }}</p>"}
    write_template(tmp_path, "t.esc", {"en": files})
    content = TemplateCatalog.load(tmp_path).render("t.esc", "en", {"name": "<b>Tom & Jerry</b>"})
    assert content.text == "<b>Tom & Jerry</b>"
    assert content.html == "<p>&lt;b&gt;Tom &amp; Jerry&lt;/b&gt;</p>"


@pytest.mark.parametrize(
    "evil", ["x\r\nBcc: victim@evil.test", "x\nBcc: v", "x\rBcc: v", "x\x00\x0bBcc: v", "x\u2028Bcc: v"]
)
def test_subject_header_injection_neutralised(tmp_path: Path, evil: str) -> None:
    write_template(tmp_path, "t.subj", {"en": simple("  Hello {{ name }}  ")})
    content = TemplateCatalog.load(tmp_path).render("t.subj", "en", {"name": evil})
    assert content.subject == "Hello x Bcc: " + evil.rsplit(": ", 1)[1]
    assert not any(ch in content.subject for ch in "\r\n\x00\x0b\u2028")


def test_broken_folder_reports_every_problem(tmp_path: Path) -> None:
    write_template(tmp_path, "t.ok", {"en": simple()})
    write_template(tmp_path, "t.syntax", {"en": simple(text="Hello {{ name ")})
    write_template(tmp_path, "t.undeclared", {"en": simple(text="{{ name }} {{ secret }}")})
    write_template(tmp_path, "t.nobody", {"en": {"subject.txt": "S\n"}})
    (write_template(tmp_path, "t.nomanifest", {"en": simple()}) / "manifest.toml").unlink()
    write_template(tmp_path, "t.multiline", {"en": simple("line one\nline two")})
    write_template(tmp_path, "t.nodefault", {"pt": simple()})
    write_template(tmp_path, "t.stray", {"en": simple() | {"notes.md": "x"}})
    write_template(tmp_path, "t.badtoml", {"en": simple()}, variables="variables = [")
    write_template(tmp_path, "t.private", {"en": simple(text="{{ name.__class__ }}")})
    (tmp_path / "Bad Id").mkdir()

    with pytest.raises(CatalogError) as info:
        TemplateCatalog.load(tmp_path)
    problems = info.value.problems
    expected = [
        "t.syntax/en/body.txt:1:",
        "t.undeclared/en/body.txt: uses undeclared variable(s): secret",
        "t.nobody/en/body.txt: missing",
        "t.nomanifest/manifest.toml: missing",
        "t.multiline/en/subject.txt: must be a single line",
        "t.nodefault/manifest.toml: default locale folder 'en' is missing",
        "t.stray/en/notes.md: unexpected file",
        "t.badtoml/manifest.toml: invalid TOML",
        "t.private/en/body.txt:1: access to private attribute '__class__'",
        "Bad Id: invalid template id",
    ]
    for prefix in expected:
        assert any(p.startswith(prefix) for p in problems), (prefix, problems)
    assert not any(p.startswith("t.ok") for p in problems)
    assert len(problems) == len(expected)


def test_empty_or_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="no templates found"):
        TemplateCatalog.load(tmp_path)
    with pytest.raises(CatalogError, match="not a directory"):
        TemplateCatalog.load(tmp_path / "absent")


def test_manifest_validation(tmp_path: Path) -> None:
    write_template(
        tmp_path,
        "t.manifest",
        {"en": simple("S", "{{ a }}")},
        variables='colour = "red"\n[variables]\na = { required = true, default = "x" }\n"b-c" = {}',
    )
    with pytest.raises(CatalogError) as info:
        TemplateCatalog.load(tmp_path)
    joined = "\n".join(info.value.problems)
    assert "unknown key 'colour'" in joined
    assert "a required variable cannot have a default" in joined
    assert "invalid variable name 'b-c'" in joined


def test_sandbox_blocks_unsafe_attribute_at_render(tmp_path: Path) -> None:
    write_template(tmp_path, "t.sandbox", {"en": simple(text="{{ name|attr('__class__') }}")})
    catalog = TemplateCatalog.load(tmp_path)
    with pytest.raises(TemplateRenderError) as info:
        catalog.render("t.sandbox", "en", {"name": "x"})
    assert info.value.reason == "render_failed"


def test_render_time_errors_are_wrapped(tmp_path: Path) -> None:
    write_template(tmp_path, "t.div", {"en": simple(text="{{ 1 / name }}")})
    with pytest.raises(TemplateRenderError, match="ZeroDivisionError"):
        TemplateCatalog.load(tmp_path).render("t.div", "en", {"name": 0})


def test_digest_changes_with_files(tmp_path: Path) -> None:
    folder = write_template(tmp_path, "t.dig", {"en": simple(), "pt": simple()})
    before = TemplateCatalog.load(tmp_path)
    en = before.render("t.dig", "en", {"name": "x"}).template_digest
    pt = before.render("t.dig", "pt", {"name": "x"}).template_digest
    assert en == pt  # identical bytes in both locales
    assert TemplateCatalog.load(tmp_path).render("t.dig", "en", {"name": "x"}).template_digest == en

    (folder / "en" / "body.txt").write_text("Hello {{ name }}!")
    after = TemplateCatalog.load(tmp_path)
    assert after.render("t.dig", "en", {"name": "x"}).template_digest != en
    assert after.render("t.dig", "pt", {"name": "x"}).template_digest == pt

    (folder / "manifest.toml").write_text('description = "changed"\ndefault_locale = "en"\nvariables = ["name"]\n')
    assert TemplateCatalog.load(tmp_path).render("t.dig", "pt", {"name": "x"}).template_digest != pt


def test_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_command(SHIPPED) == 0
    assert capsys.readouterr().out == "ok: 4 templates, 8 locales\n"

    write_template(tmp_path, "t.a", {"en": simple(text="{{ nope }}")})
    write_template(tmp_path, "t.b", {"en": {"subject.txt": "S"}})
    assert check_command(tmp_path) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "t.a/en/body.txt: uses undeclared variable(s): nope",
        "t.b/en/body.txt: missing",
    ]


def test_render_command(capsys: pytest.CaptureFixture[str]) -> None:
    vars_json = json.dumps({"code": "424242", "expires_in_minutes": 5})
    assert render_command(SHIPPED, "auth.login_code", "pt-BR", vars_json) == 0
    out = capsys.readouterr().out
    assert "subject: 424242 é o seu código de acesso" in out
    assert "----- text -----" in out
    assert "----- html -----" in out
    assert "locale: pt-BR" in out


@pytest.mark.parametrize(
    ("template_id", "vars_json", "message"),
    [
        ("auth.login_code", "{not json", "error: --vars is not valid JSON"),
        ("auth.login_code", "[1, 2]", "error: --vars must be a JSON object"),
        ("auth.nope", "{}", "error: unknown template 'auth.nope'"),
        ("auth.login_code", "{}", "error: template 'auth.login_code' is missing variable(s): code, expires"),
    ],
)
def test_render_command_errors(
    capsys: pytest.CaptureFixture[str], template_id: str, vars_json: str, message: str
) -> None:
    assert render_command(SHIPPED, template_id, None, vars_json) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(message)
    assert captured.err.count("\n") == 1


def test_catalog_is_immutable(shipped: TemplateCatalog) -> None:
    with pytest.raises(AttributeError):
        shipped.extra = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        shipped._templates["t.new"] = shipped._templates["auth.login_code"]  # type: ignore[index]


def test_a_file_with_several_problems_lists_them_all(tmp_path: Path) -> None:
    html = '<a href="{{ name }}">x</a>\n{{ name.__class__ }}\n{{ name|nosuchfilter }}'
    write_template(tmp_path, "t.many", {"en": simple() | {"body.html": html}})
    with pytest.raises(CatalogError) as info:
        TemplateCatalog.load(tmp_path)
    assert info.value.problems == [
        "t.many/en/body.html:1: a link's URL must pass through the safe_url filter",
        "t.many/en/body.html:2: access to private attribute '__class__'",
        "t.many/en/body.html:3: No filter named 'nosuchfilter'.",
    ]
