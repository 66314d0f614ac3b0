"""The docs' relative links lead somewhere: every file they name exists, every #anchor is a heading of its file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def prose(text: str) -> str:
    """Return `text` without its fenced code blocks, where a `#` line is a comment and a link is code."""
    return FENCE.sub("", text)


def anchor(heading: str) -> str:
    """Return GitHub's anchor for a heading: lowercase, punctuation dropped, each space a hyphen."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors by its text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Return every anchor of a markdown file's headings, the -1, -2 … GitHub gives repeated ones included."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for heading in HEADING.findall(prose(path.read_text(encoding="utf-8"))):
        base = anchor(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[str]:
    """Return the relative link targets of a markdown file (not web addresses, not code)."""
    text = CODE_SPAN.sub("", prose(path.read_text(encoding="utf-8")))
    return [target for target in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def broken(path: Path) -> list[str]:
    """Return the links of `path` whose file does not exist or whose #anchor is no heading of it."""
    bad = []
    for target in links(path):
        name, _, fragment = target.partition("#")
        linked = (path.parent / name).resolve() if name else path
        if not linked.exists():
            bad.append(f"{target}: no such file")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            bad.append(f"{target}: no heading #{fragment} in {linked.name}")
    return bad


@pytest.mark.parametrize("path", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_names_an_existing_file_and_heading(path: Path) -> None:
    assert broken(path) == []


def test_anchors_follow_githubs_rules() -> None:
    assert anchor("Every core: `--workers`") == "every-core---workers"
    assert anchor("The store's write path (issue 15)") == "the-stores-write-path-issue-15"
    assert anchor("smtp11: the SMTP reply (`handover.Outcome`)") == "smtp11-the-smtp-reply-handoveroutcome"


def test_a_wrong_anchor_or_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# A\n\n## Where things stand\n\n```sh\n# not a heading\n```\n")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md#where-things-stand) [x](a.md#not-a-heading) [y](c.md) `[z](d.md)` [self](#b)\n\n# B\n")
    assert broken(page) == ["a.md#not-a-heading: no heading #not-a-heading in a.md", "c.md: no such file"]
