"""The repository stands alone: it cites no document outside it, and its links resolve."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Written in pieces, so that this file does not name them itself.
OUTSIDE = ("../" + "shared", "design" + ".md", "reference/" + "rke.md", "original" + "-service")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def tracked() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True
    ).stdout.decode()
    return [REPO / name for name in out.split("\0") if name]


def documents() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {slug(m) for m in re.findall(r"^#{1,6}\s+(.+)$", text, re.MULTILINE)}


def relative_links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text())
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_no_tracked_file_cites_a_document_outside_the_repository():
    cited = {}
    for path in tracked():
        if path.is_file():
            text = path.read_bytes().decode(errors="replace")
            if found := [name for name in OUTSIDE if name in text]:
                cited[str(path.relative_to(REPO))] = found
    assert cited == {}, "say it in the repository's own words (README.md, docs/)"


@pytest.mark.parametrize("document", documents(), ids=lambda p: p.name)
def test_every_relative_link_resolves_in_the_repository(document):
    files = set(tracked())
    broken = []
    for link in relative_links(document):
        target, _, anchor = link.partition("#")
        path = (document.parent / target).resolve() if target else document
        if path not in files and not (path.is_dir() and any(f.is_relative_to(path) for f in files)):
            broken.append(f"{link}: no such file in the repository")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{link}: no heading #{anchor} in {path.name}")
    assert broken == []


def test_the_link_check_sees_links():
    assert "docs/contracts.md" in relative_links(REPO / "README.md")
    assert slug("Lost `known_hosts` under `accept-new`") == "lost-known_hosts-under-accept-new"
