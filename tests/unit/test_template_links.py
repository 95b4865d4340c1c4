"""Links in templates (SPEC §6): a URL variable in an `href` renders only when it is http(s), through
the one `safe_url` filter every template shares; the catalog refuses an `href` that skips it."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailsvc.adapters import template_filters
from mailsvc.adapters.template_filters import UnsafeUrl, safe_url
from mailsvc.adapters.templates import TemplateCatalog
from mailsvc.domain.templates import CatalogError, RejectedVariable
from tests.unit.test_templates import SAMPLES, SHIPPED, simple, write_template

URL_VARIABLES = {
    "auth.email_verification": "verification_url",
    "auth.password_reset": "reset_url",
    "notification.generic": "action_url",
}


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/verify?t=abc&u=1",
        "http://example.com",
        "HTTPS://EXAMPLE.COM/Path",
        "https://user@mail.example.com:8443/a/b#frag",
        "https://xn--bcher-kva.example/ü",
    ],
)
def test_http_and_https_urls_pass_unchanged(url: str) -> None:
    assert safe_url(url) == url


HOSTILE = [
    "javascript:alert(1)",
    "JavaScript:alert(document.cookie)",
    "JAVASCRIPT:alert(1)",
    " javascript:alert(1)",
    "\tjavascript:alert(1)",
    "\x01javascript:alert(1)",
    "\x85javascript:alert(1)",
    "\u00a0javascript:alert(1)",
    "java\tscript:alert(1)",
    "java\nscript:alert(1)",
    "javascript&#58;alert(1)",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "DATA:text/html,<script>alert(1)</script>",
    "vbscript:msgbox(1)",
    "mailto:ann@example.com",
    "//evil.example/path",
    "/relative/path",
    "https:evil.example",
    "https:///path-without-host",
    "https://exa mple.com/",
    "https://example.com\\@evil.example/",
    "https://[::1/",
    "",
]


@pytest.mark.parametrize("url", HOSTILE)
def test_anything_else_is_refused(url: str) -> None:
    with pytest.raises(UnsafeUrl):
        safe_url(url)


@pytest.fixture(scope="module")
def shipped() -> TemplateCatalog:
    return TemplateCatalog.load(SHIPPED)


@pytest.mark.parametrize("locale", ["en", "pt-BR"])
@pytest.mark.parametrize(("template_id", "variable"), sorted(URL_VARIABLES.items()))
@pytest.mark.parametrize("url", ["javascript:alert(1)", " JavaScript:alert(1)", "data:text/html,<b>x</b>"])
def test_shipped_templates_refuse_a_hostile_link_as_validation_failed(
    shipped: TemplateCatalog, template_id: str, variable: str, locale: str, url: str
) -> None:
    variables = {**SAMPLES[template_id], variable: url}
    with pytest.raises(RejectedVariable) as info:
        shipped.render(template_id, locale, variables)
    assert info.value.reason == "validation_failed"
    assert info.value.field == f"variables.{variable}"
    assert url not in str(info.value)  # the value may be a secret (a reset token): never echoed


@pytest.mark.parametrize(("template_id", "variable"), sorted(URL_VARIABLES.items()))
def test_shipped_templates_render_an_https_link(shipped: TemplateCatalog, template_id: str, variable: str) -> None:
    url = "https://example.com/x?token=a&b=c"
    content = shipped.render(template_id, "en", {**SAMPLES[template_id], variable: url})
    assert content.html is not None
    assert 'href="https://example.com/x?token=a&amp;b=c"' in content.html


def test_every_href_of_the_shipped_templates_goes_through_safe_url() -> None:
    bodies = list(SHIPPED.glob("*/*/body.html"))
    shared = list(SHIPPED.glob("_layout/*.html"))  # the button's link is in the shared part
    assert (len(bodies), len(shared)) == (8, 2)
    sources = [path.read_text() for path in bodies + shared]
    hrefs = [chunk.split('"', 1)[0] for source in sources for chunk in source.split('href="')[1:]]
    assert len(hrefs) == 5
    assert all(href.startswith("{{ ") and href.endswith("|safe_url }}") for href in hrefs), hrefs


@pytest.mark.parametrize(
    "link",
    ['<a href="{{ url }}">x</a>', "<a HREF='{{url}}'>x</a>", '<a href = "{{ url|e }}">x</a>', "<a href={{url}}>x</a>"],
)
def test_the_catalog_refuses_a_link_that_skips_safe_url(tmp_path: Path, link: str) -> None:
    write_template(tmp_path, "t.link", {"en": simple("S", "{{ url }}") | {"body.html": f"<p>\n{link}</p>"}},
                   variables='variables = ["url"]')  # fmt: skip
    with pytest.raises(CatalogError) as info:
        TemplateCatalog.load(tmp_path)
    assert info.value.problems == ["t.link/en/body.html:2: a link's URL must pass through the safe_url filter"]


def test_the_catalog_accepts_a_link_through_safe_url_or_a_fixed_scheme(tmp_path: Path) -> None:
    html = '<a href="{{ url|safe_url }}">x</a> <a href="https://example.com/?q={{ url|urlencode }}">y</a>'
    write_template(tmp_path, "t.link", {"en": simple("S", "{{ url }}") | {"body.html": html}},
                   variables='variables = ["url"]')  # fmt: skip
    content = TemplateCatalog.load(tmp_path).render("t.link", "en", {"url": "https://a.example/"})
    assert content.html is not None
    assert 'href="https://a.example/"' in content.html


@pytest.mark.parametrize(
    "url",
    [
        *HOSTILE,
        "https://example.com",
        "https://example.com:",
        "https://example.com:8443",
        "http://a.b-c.d/x?y=[1]&z=%20#top",
        "https://.",
        "https://-",
        "hTTp://example.com/",
        "https://example.com/a\\b",
        "https://example.com/ü",
        "https://ex\u00e4mple.com/",
        "https://user:pw@example.com/",
        "https://[::1]/",
        "https://example.com:99999999999999999999/",
        "https://example.com/\x7f",
        "ftp://example.com/",
        "httpss://example.com/",
    ],
)
def test_a_link_taken_without_the_full_check_would_pass_it(url: str) -> None:
    """The fast path (`_PLAIN_URL`) accepts only links the full check accepts too."""
    if template_filters._PLAIN_URL.fullmatch(url):
        template_filters._check_url(url)  # does not raise
        assert safe_url(url) == url
