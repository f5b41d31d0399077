"""The documentation holds together: every relative link in README.md and docs/ reaches an existing
file (and heading), every docs/ page the code cites exists, and the README stays a front door."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_README_LINES = 250
SETUP_COMMANDS = (
    "pip install -r requirements.txt && python app.py",
    "pip install -r requirements-dev.txt && python -m pytest",
)
SETUP_WITHIN_LINES = 40
"""The set-up commands must appear this close to the top (front matter and title included)."""
CODE_ROOTS = ("resadapt", "allocator", "benchmarks", "tests")
DOC_PATH = re.compile(r"docs/[\w./-]+\.md")
ROOT_DOC = re.compile(r"(?<![\w/.-])[A-Z][A-Z_]+\.md\b")
"""A design note named bare (``CAPO.md``): it must be a file at the repository root."""
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def prose(text: str) -> str:
    """The text without fenced code blocks (their links and `#` lines are not markdown)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    kept = "".join(
        c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN"
    )  # letters, numbers, space, hyphen, underscore
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file, with GitHub's -1, -2 suffixes for repeats."""
    seen: dict[str, int] = {}
    out = set()
    for match in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose(path.read_text()), re.M):
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def test_slug_is_githubs():
    assert slug("Probe credit (`--probe-credit w`)") == "probe-credit---probe-credit-w"
    assert slug("The count/main allocator's recipe") == "the-countmain-allocators-recipe"
    assert slug("Real sizes (`benchmarks/real_size.py`)") == "real-sizes-benchmarksreal_sizepy"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(path):
    broken = []
    for target in LINK.findall(prose(path.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not broken, f"{path.name}: " + "; ".join(broken)


def test_doc_paths_cited_in_the_code_exist():
    sources = [ROOT / "app.py"]
    for root in CODE_ROOTS:
        sources += sorted((ROOT / root).rglob("*.py"))
    sources.remove(Path(__file__).resolve())  # this file names a missing note on purpose
    missing = sorted(
        f"{source.relative_to(ROOT)}: {cited}"
        for source in sources
        for text in [source.read_text()]
        for cited in set(DOC_PATH.findall(text)) | set(ROOT_DOC.findall(text))
        if not (ROOT / cited).exists()
    )
    assert not missing, missing


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines"
    top = "\n".join(lines[:SETUP_WITHIN_LINES])
    for command in SETUP_COMMANDS:
        assert command in top, f"the README's first lines lack {command!r}"


def test_docs_pages_exist():
    names = {p.name for p in (ROOT / "docs").glob("*.md")}
    expected = {"usage.md", "real-checkpoints.md", "offline-world.md", "capo.md", "results.md"}
    assert expected | {"benchmarks.md"} <= names
