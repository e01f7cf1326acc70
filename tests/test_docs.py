"""The README and docs/ stay honest: every relative link and image points at a file that exists
and, with a `#fragment`, at a heading that is there (GitHub's anchor rules); every page in
docs/ is reachable from the README; and the README's first screen is what a newcomer needs."""

from __future__ import annotations

import glob
import os
import re

import pytest
from conftest import ROOT

PAGES = sorted([os.path.join(ROOT, "README.md")]
               + glob.glob(os.path.join(ROOT, "docs", "*.md")))

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HTML_REF = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)=\"([^\"]+)\"", re.I)
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)


def prose(text: str) -> str:
    """The text without fenced code blocks (their `#` lines are no headings, their brackets no
    links); inline code keeps its content, as GitHub renders it."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower case, without punctuation, each
    space a hyphen (no collapsing: "a — b" is "a--b")."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # a link's text only
    text = CODE_SPAN.sub(lambda m: m.group(2), text)
    text = re.sub(r"<[^>]+>", "", text).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: str) -> set[str]:
    with open(path, encoding="utf-8") as fh:
        text = prose(fh.read())
    found, seen = set(), {}
    for match in HEADING.finditer(text):
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    found.update(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", text))
    return found


def references(path: str) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        text = prose(fh.read())
    without_code = CODE_SPAN.sub(lambda m: "x" * len(m.group(2)), text)
    return ([m.group(2) for m in LINK.finditer(without_code)]
            + HTML_REF.findall(without_code))


def test_the_slug_rules_are_githubs():
    assert slug("Night/dim schedule") == "nightdim-schedule"
    assert slug("`SIGHUP` (`systemctl reload loop`)") == "sighup-systemctl-reload-loop"
    assert slug("The broker's access rules (Mosquitto)") == "the-brokers-access-rules-mosquitto"
    assert slug("Health checks (`GET /api/poll/health`)") == "health-checks-get-apipollhealth"
    assert slug("Text, clocks and notifications") == "text-clocks-and-notifications"


def test_the_checker_finds_a_broken_link_and_a_missing_anchor(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\n## Sub part\n\n[ok](#sub-part) [x](b.md#nope)\n"
                                   "```\n# not a heading\n[not](a link)\n```\n")
    assert anchors(str(tmp_path / "a.md")) == {"title", "sub-part"}
    assert references(str(tmp_path / "a.md")) == ["#sub-part", "b.md#nope"]
    assert broken(str(tmp_path / "a.md")) == ["b.md#nope: no such file"]


def broken(page: str) -> list[str]:
    problems = []
    for target in references(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):     # http:, https:, mailto:
            continue
        file_part, _, fragment = target.partition("#")
        resolved = (os.path.normpath(os.path.join(os.path.dirname(page), file_part))
                    if file_part else page)
        if not os.path.exists(resolved):
            problems.append(f"{target}: no such file")
        elif fragment and resolved.endswith(".md") and fragment not in anchors(resolved):
            problems.append(f"{target}: no heading with that anchor in "
                            f"{os.path.relpath(resolved, ROOT)}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_relative_link_and_anchor_resolves(page):
    assert broken(page) == []


def test_every_page_in_docs_is_linked_from_the_readme():
    readme = os.path.join(ROOT, "README.md")
    linked = {os.path.normpath(os.path.join(ROOT, t.partition("#")[0]))
              for t in references(readme)}
    missing = [os.path.relpath(p, ROOT) for p in PAGES if p != readme and p not in linked]
    assert missing == [], "list them in the README's Reference section"


def test_the_readme_opens_with_what_a_newcomer_needs():
    """What LOOP is, the dashboard's picture, the two commands, then Try it, on the first
    screen; reference material lives in docs/."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    first_screen = "\n".join(lines[:40])
    assert '<img src="docs/dashboard-phone.png"' in first_screen
    assert os.path.exists(os.path.join(ROOT, "docs", "dashboard-phone.png"))
    run, test = (next(i for i, line in enumerate(lines) if line.startswith(cmd))
                 for cmd in ("make run ", "make test "))
    assert run < test < 20
    assert next(i for i, line in enumerate(lines) if line == "## Try it") < 30
    assert "<!-- config:begin" not in "\n".join(lines)   # the key reference is in docs/
