"""Every shipped template, in every locale, passes a real spam filter: SpamAssassin's local rules
(`spamassassin -L -t`) score the message the service sends at most 0.0.

The message is the one the acceptance path builds (the catalog's rendering, then
`mailsvc.domain.mime.build_message`). `spamassassin` comes from Debian's package, unpacked into
`.tools-cache/` when it is not installed (tests/support/debian_tools.py); where it cannot be had,
the tests skip with one line. Loading the rules costs ~1.5 s of CPU, a message ~0.1 s: all the
messages go through one `spamassassin` process, each found again in its output by its Message-ID.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailsvc.adapters.templates import TemplateCatalog
from mailsvc.domain.mime import build_message, make_message_id
from mailsvc.domain.model import Address
from tests.support.debian_tools import ToolUnavailable, spamassassin
from tests.unit.test_templates import SAMPLES, SHIPPED

TOOLS_CACHE = Path(__file__).resolve().parents[2] / ".tools-cache"
LOCALES = ("en", "pt-BR")
# the standard samples, and what a filter judges differently: a notification so short that the
# text part is mostly the footer, and one with a button
CASES: dict[str, list[dict[str, object]]] = {template_id: [sample] for template_id, sample in SAMPLES.items()} | {
    "notification.generic": [
        SAMPLES["notification.generic"],
        {"title": "Hi", "body": "Hi"},
        {"title": "T", "body": ""},
        {"title": "Export ready", "body": "Done.", "action_url": "https://example.com/exports/7"},
        {"title": "T", "body": "B", "action_url": "https://example.com/a", "action_label": "Open"},
    ],
}
# one header per message: its Message-ID, the score (as spamassassin prints it: one decimal), each
# rule hit with its score, then the report (every rule with its description), folded
_RESULT_HEADER = "add_header all Mailsvc-Score _HEADER(Message-ID)_ _SCORE_ _TESTSSCORES(,)_ _REPORT_"
_RESULT = re.compile(r"^X-Spam-Mailsvc-Score: (.*(?:\n[ \t].*)*)", re.MULTILINE)


@dataclass(frozen=True)
class Verdict:
    score: float
    rules: str  # "RULE=score,…" and the report, as spamassassin wrote them


def case_ids() -> list[tuple[str, str, int]]:
    return [(tid, locale, n) for tid in sorted(CASES) for locale in LOCALES for n in range(len(CASES[tid]))]


def message(catalog: TemplateCatalog, template_id: str, locale: str, variables: dict[str, object]) -> bytes:
    content = catalog.render(template_id, locale, variables)
    return build_message(
        from_addr=Address("no-reply@example.com", "Example"),
        to=[Address("ann@example.org")],
        cc=[],
        reply_to=None,
        subject=content.subject,
        text=content.text,
        html=content.html,
        headers={},
        message_id=make_message_id("example.com"),
        date=datetime.now(UTC),
    ).mime


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str, int], Verdict]:
    """Every case scored by one `spamassassin -L -t` over all the messages."""
    try:
        command = spamassassin(TOOLS_CACHE)
    except ToolUnavailable as exc:
        pytest.skip(f"spamassassin unavailable: {exc}")
    work = tmp_path_factory.mktemp("spam")
    catalog = TemplateCatalog.load(SHIPPED)
    ids: dict[str, tuple[str, str, int]] = {}
    for case in case_ids():
        template_id, locale, n = case
        raw = message(catalog, template_id, locale, CASES[template_id][n])
        ids[re.search(rb"^Message-ID: (<[^>]+>)", raw, re.MULTILINE)[1].decode()] = case  # type: ignore[index]
        (work / f"{len(ids):03d}.eml").write_bytes(raw)
    (work / "user_prefs").touch()
    # a home of its own (spamassassin keeps per-user state there) and the C locale (no perl warnings)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work), "LC_ALL": "C"}
    options = ["-L", "-t", "-p", str(work / "user_prefs"), "--cf", _RESULT_HEADER]
    messages = sorted(str(path) for path in work.glob("*.eml"))
    done = subprocess.run(
        [*command, *options, *messages], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    found: dict[tuple[str, str, int], Verdict] = {}
    for match in _RESULT.finditer(done.stdout):
        message_id, score, rules = match[1].split(None, 2)
        found[ids[message_id]] = Verdict(float(score), rules)
    assert found.keys() == set(ids.values()), done.stderr
    return found


@pytest.mark.parametrize(("template_id", "locale", "case"), case_ids())
def test_spamassassin_scores_every_shipped_template_at_most_zero(
    verdicts: dict[tuple[str, str, int], Verdict], template_id: str, locale: str, case: int
) -> None:
    verdict = verdicts[(template_id, locale, case)]
    score = verdict.score
    assert score <= 0.0, f"{template_id} ({locale}) with {CASES[template_id][case]}:\n{verdict.rules}"


# the two fixes that got the templates there, checked without spamassassin as well


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("template_id", sorted(CASES))
def test_every_text_part_ends_with_the_footer_of_its_html_part(template_id: str, locale: str) -> None:
    """A short notification's text part otherwise lacks nearly every word of its HTML part
    (`MPART_ALT_DIFF`, 2.2 points)."""
    content = TemplateCatalog.load(SHIPPED).render(template_id, locale, CASES[template_id][-1])
    assert content.html is not None
    footer = re.search(r'color:#9ca3af;">\n\s*(.+)\n', content.html)
    assert footer is not None
    assert content.text.endswith("\n\n" + footer[1])


def test_the_button_background_is_set_in_css() -> None:
    """Filters (and clients) that ignore `bgcolor` otherwise see the button's white text on the
    white card (`HTML_FONT_LOW_CONTRAST`)."""
    variables = SAMPLES["auth.password_reset"]
    html = TemplateCatalog.load(SHIPPED).render("auth.password_reset", "en", variables).html
    assert html is not None
    assert '<td align="center" bgcolor="#1f4fd1" style="border-radius:6px;background-color:#1f4fd1;">' in html
