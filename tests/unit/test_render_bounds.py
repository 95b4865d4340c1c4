"""Rendering is bounded (SPEC §2): subject ≤ 998 characters, each body ≤ the byte limit, and a
render stops as soon as it passes the limit — its cost follows the limit, not the template."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from markupsafe import Markup

from mailsvc.adapters.template_files import load_catalog
from mailsvc.adapters.template_filters import paragraphs
from mailsvc.adapters.templates import TemplateCatalog
from mailsvc.domain.templates import DEFAULT_MAX_RENDERED_BYTES, RenderTooLarge
from tests.unit.test_templates import SHIPPED, simple, write_template

KIB = 1024


@pytest.fixture(scope="module")
def shipped() -> TemplateCatalog:
    return TemplateCatalog.load(SHIPPED)


class Lines:
    """An iterable of 1 KiB strings that counts how many a render pulled out of it."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.pulled = 0

    def __iter__(self) -> Iterator[str]:
        for _ in range(self.count):
            self.pulled += 1
            yield "x" * KIB


def test_the_default_limit_is_one_mib() -> None:
    assert DEFAULT_MAX_RENDERED_BYTES == 1024 * 1024


def test_a_render_stops_as_soon_as_it_passes_the_limit(tmp_path: Path) -> None:
    write_template(tmp_path, "t.loop", {"en": simple("S", "{% for line in lines %}{{ line }}\n{% endfor %}")},
                   variables='variables = ["lines"]')  # fmt: skip
    catalog = TemplateCatalog.load(tmp_path)
    lines = Lines(100_000)  # 100 MB if rendered in full
    with pytest.raises(RenderTooLarge) as info:
        catalog.render("t.loop", "en", {"lines": lines}, max_bytes=64 * KIB)
    assert info.value.reason == "render_too_large"
    assert "text body" in str(info.value)
    assert lines.pulled <= 64 + 2  # stopped right after the limit, not 100,000 lines later


def test_only_locales_with_a_loop_or_a_macro_are_rendered_piece_by_piece(tmp_path: Path) -> None:
    write_template(tmp_path, "t.loop", {"en": simple("S", "{% for line in lines %}{{ line }}{% endfor %}")},
                   variables='variables = ["lines"]')  # fmt: skip
    macro = "{% macro twice(x) %}{{ x }}{{ x }}{% endmacro %}{{ twice(name) }}"
    write_template(tmp_path, "t.macro", {"en": simple("S", "B") | {"body.html": macro}})
    write_template(tmp_path, "t.flat", {"en": simple("S {{ name }}", "B {{ name }}")})
    templates, problems = load_catalog(tmp_path)
    assert problems == []
    assert {tid: template.locales["en"].repeats for tid, template in templates.items()} == {
        "t.loop": True,
        "t.macro": True,
        "t.flat": False,
    }
    shipped_templates, _ = load_catalog(SHIPPED)  # the shipped ones render whole: no loop in any
    assert not any(locale.repeats for t in shipped_templates.values() for locale in t.locales.values())
    catalog = TemplateCatalog(templates)
    assert catalog.render("t.macro", "en", {"name": "ab"}).html == "abab"
    assert catalog.render("t.loop", "en", {"lines": ["a", "b"]}).text == "ab"


def test_a_template_rendered_whole_is_held_to_the_same_limits(tmp_path: Path) -> None:
    write_template(tmp_path, "t.flat", {"en": simple("Re: {{ name }}", "{{ name }}{{ name }}")})
    catalog = TemplateCatalog.load(tmp_path)
    assert catalog.render("t.flat", "en", {"name": "é" * 256}, max_bytes=1024).text == "é" * 512
    with pytest.raises(RenderTooLarge, match="text body is longer than 1024 bytes"):
        catalog.render("t.flat", "en", {"name": "é" * 257}, max_bytes=1024)  # 1,028 bytes, 514 characters
    with pytest.raises(RenderTooLarge, match="subject is longer than 998 characters"):
        catalog.render("t.flat", "en", {"name": "x" * 995})


def test_a_body_at_the_limit_renders_and_one_byte_more_is_too_large(tmp_path: Path) -> None:
    write_template(tmp_path, "t.body", {"en": simple("S", "{{ name }}") | {"body.html": "<p>{{ name }}</p>"}})
    catalog = TemplateCatalog.load(tmp_path)
    limit = 10 * KIB
    fits = "é" * ((limit - len("<p></p>")) // 2)  # two UTF-8 bytes each: bytes are counted, not characters
    assert catalog.render("t.body", "en", {"name": fits}, max_bytes=limit).html == f"<p>{fits}</p>"
    with pytest.raises(RenderTooLarge, match="HTML body is longer than 10240 bytes"):
        catalog.render("t.body", "en", {"name": fits + "é"}, max_bytes=limit)


def test_the_rendered_subject_is_at_most_998_characters(tmp_path: Path) -> None:
    write_template(tmp_path, "t.subj", {"en": simple("Re: {{ name }}", "body")})
    catalog = TemplateCatalog.load(tmp_path)
    assert len(catalog.render("t.subj", "en", {"name": "x" * 994}).subject) == 998
    with pytest.raises(RenderTooLarge, match="subject is longer than 998 characters"):
        catalog.render("t.subj", "en", {"name": "x" * 995})
    # counted once control characters became spaces and runs of them collapsed
    assert len(catalog.render("t.subj", "en", {"name": "x" + "\n" * 5000 + "y"}).subject) == len("Re: x y")


def test_a_generic_notification_that_would_be_megabytes_of_html_is_too_large(shipped: TemplateCatalog) -> None:
    body = "a\n\n" * (256 * KIB // 3)  # a 256 KiB variable, ~4 MB of paragraphs
    with pytest.raises(RenderTooLarge, match="HTML body"):
        shipped.render("notification.generic", "en", {"title": "T", "body": body})
    content = shipped.render("notification.generic", "en", {"title": "T", "body": "a\n" * (128 * KIB)})
    assert content.html is not None
    assert content.html.count("<br>") == 128 * KIB - 1


# -- the paragraphs filter -------------------------------------------------------------------


def test_paragraphs_escape_every_character_and_break_lines() -> None:
    html = paragraphs("Hi <b>Ann</b> & co\nsecond line\r\n\r\nnext 'para' \"quoted\"", style="margin:0")
    assert isinstance(html, Markup)
    assert html == (
        '<p style="margin:0">Hi &lt;b&gt;Ann&lt;/b&gt; &amp; co<br>second line</p>\n'
        '<p style="margin:0">next &#39;para&#39; &#34;quoted&#34;</p>'
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ""),
        (" \n\t\n ", ""),
        ("one", "<p>one</p>"),
        ("  padded  ", "<p>padded</p>"),
        ("a\n\n\n\nb", "<p>a</p>\n<p>b</p>"),
        ("a\n  \t\n  b", "<p>a</p>\n<p>b</p>"),  # a line of whitespace is a blank line
        ("a\n  b", "<p>a<br>  b</p>"),
        ("a\rb", "<p>a<br>b</p>"),
    ],
)
def test_paragraphs_are_separated_by_blank_lines(text: str, expected: str) -> None:
    assert paragraphs(text) == expected


def test_paragraphs_style_is_escaped() -> None:
    assert paragraphs("x", style='"><script>') == '<p style="&#34;&gt;&lt;script&gt;">x</p>'
