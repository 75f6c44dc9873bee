"""The README and docs/: short front page, working links, nothing outside.

A newcomer reads the README's first screen and follows its links; a link
to a file that moved, or to a heading that was renamed, is a dead end.
Anchors are checked the way GitHub makes them from headings.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest

from hostagent import config

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = sorted([README, *(ROOT / "docs").glob("*.md")])
# Split so this file does not name what it forbids.
OUTSIDE = "../" + "shared"

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if fenced:
            continue
        lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file (repeats get -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for line in _prose(path.read_text()):
        m = _HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    """The link targets in a Markdown file's prose."""
    found = []
    for line in _prose(path.read_text()):
        # Inline code may show link syntax without being a link.
        line = re.sub(r"`[^`]*`", "", line)
        found += _LINK.findall(line)
    return found


def test_slug_is_githubs() -> None:
    assert slug("Exit status 3: the database is damaged") == (
        "exit-status-3-the-database-is-damaged"
    )
    assert slug("`[server]`: listeners and limits") == (
        "server-listeners-and-limits"
    )
    assert slug("926 the connector failed") == "926-the-connector-failed"
    assert slug("Where things are; logs") == "where-things-are-logs"


def test_pages_exist() -> None:
    names = {p.name for p in PAGES}
    assert "README.md" in names
    assert len(names) > 5, names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    bad = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (
            (page.parent / unquote(file_part)).resolve() if file_part else page
        )
        if not dest.exists():
            bad.append(f"{target}: no such file")
            continue
        if ROOT not in dest.parents and dest != ROOT:
            bad.append(f"{target}: outside the repository")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not bad, f"{page.relative_to(ROOT)}: " + "; ".join(bad)


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {
        (ROOT / t.partition("#")[0]).resolve()
        for t in links(README)
        if t.startswith("docs/")
    }
    unlinked = [p.name for p in PAGES if p != README and p not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def test_readme_is_short_and_starts_with_the_quick_start() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines"
    first = "\n".join(lines[:60])
    for words in ("make run", "make test", "make check"):
        assert words in first, f"{words!r} not in README's first 60 lines"
    # The first attach and detach, and how to stop the agent.
    assert "attach_volume" in first and "detach_volume" in first
    assert "losetup" in first
    assert "Ctrl-C" in first


def _repo_files() -> list[Path]:
    """Tracked and new (not ignored) files; a plain walk without git."""
    try:
        out = subprocess.run(
            [
                "git",
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", ".cache", ".run", "dist", "build"}
        return [
            p
            for p in ROOT.rglob("*")
            if p.is_file()
            and not skip & set(p.relative_to(ROOT).parts)
            and not any(s.endswith(".egg-info") for s in p.parts)
        ]
    return [ROOT / n for n in out.decode().split("\0") if n]


def test_nothing_points_outside_the_repository() -> None:
    files = _repo_files()
    assert any(p.name == "README.md" for p in files)
    hits = []
    for p in files:
        if not p.is_file():  # deleted in the work tree, still in the index
            continue
        try:
            text = p.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if OUTSIDE in line:
                hits.append(f"{p.relative_to(ROOT)}:{n}")
    assert not hits, f"{OUTSIDE} named in: {hits}"


def test_link_check_finds_a_dead_link(tmp_path: Path) -> None:
    """The checks above can fail: a dead file and a dead anchor are seen."""
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n## A section\n\n"
        "[ok](#a-section) [dead](#nowhere) [gone](missing.md)\n"
        "```\n[in code](ignored.md)\n```\n`[inline](ignored.md)`\n"
    )
    assert links(page) == ["#a-section", "#nowhere", "missing.md"]
    assert anchors(page) == {"title", "a-section"}


def test_configuration_page_names_every_key() -> None:
    """A key the config accepts is documented where operators look."""
    page = (ROOT / "docs" / "configuration.md").read_text()
    missing = []
    for section in dataclasses.fields(config.Config):
        if section.name == "backend":
            cls: type = config.BackendConfig
        else:
            cls = type(getattr(config.Config(), section.name))
        for f in dataclasses.fields(cls):
            if f.name != "name" and f"`{f.name}`" not in page:
                missing.append(f"{section.name}.{f.name}")
    assert not missing, f"not in docs/configuration.md: {missing}"


# Written by a run, not kept in the repository.
_GENERATED = {"tests/bench/results.json"}
_REPO_PATH = re.compile(
    r"`((?:hostagent|tests|contrib|systemd|bench|docs)/[\w./-]*\w)`"
)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_named_repository_files_exist(page: Path) -> None:
    """A file the docs name by path is there (paragraphs marked TODO,
    about work in flight, may name what is still to come)."""
    missing = []
    for paragraph in page.read_text().split("\n\n"):
        if "TODO" in paragraph:
            continue
        for name in _REPO_PATH.findall(paragraph):
            if name not in _GENERATED and not (ROOT / name).exists():
                missing.append(name)
    assert not missing, f"{page.name} names missing files: {missing}"
