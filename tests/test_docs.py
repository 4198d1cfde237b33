"""The docs point at things that exist: links (and their #headings), source files, configs and the tests they cite."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "bench" / "RESULTS.md", *sorted((ROOT / "docs").rglob("*.md"))]
FILES = [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*")
         if p.is_file() and not any(part.startswith(".") for part in p.relative_to(ROOT).parts)
         and p.relative_to(ROOT).parts[0] not in ("runs", "data", "build")]  # outputs, not the repository


def anchors(doc: Path) -> set[str]:
    """GitHub's anchors for the headings of a markdown file: lower case, punctuation dropped, spaces to -."""
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.DOTALL)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}


TESTS = {m for p in (ROOT / "tests").glob("test_*.py") for m in re.findall(r"^def (test_\w+)", p.read_text(), re.MULTILINE)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_files_and_cited_tests_exist(doc):
    text = doc.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = doc.parent / path if path else doc
        assert linked.exists(), f"{doc.name}: broken link {target}"
        if anchor:
            assert anchor in anchors(linked), f"{doc.name}: {target} names no heading of {linked.name}"
    for name in re.findall(r"`[^`]*?\b(test_\w+)(?![\w.])", text):
        assert name in TESTS, f"{doc.name}: cites {name}, which no test file defines"
    for path in re.findall(r"`([\w./-]+\.(?:py|yaml))`", text):
        if "*" in path or path.startswith("."):
            continue
        assert any(f == path or f.endswith("/" + path) for f in FILES), f"{doc.name}: names {path}, not in the repo"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_the_verdicts_the_docs_quote_are_those_of_their_results(doc):
    """Each `<!-- verdicts: RESULTS -->` block is what RESULTS renders (`bestrq report --fill DOC` rewrites it)."""
    from bestrq.study.summary import blocks

    for path, body, rendered in blocks(doc):
        assert body == rendered, f"{doc.name}: its verdicts block differs from {path}: run bestrq report --fill {doc.name}"
