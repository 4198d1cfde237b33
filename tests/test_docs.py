"""The docs point at things that exist: links, source files, configs and the tests they cite."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "bench" / "RESULTS.md", *sorted((ROOT / "docs").glob("*.md"))]
FILES = [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*")
         if p.is_file() and not any(part.startswith(".") or part in ("runs", "data", "build")
                                    for part in p.relative_to(ROOT).parts)]
TESTS = {m for p in (ROOT / "tests").glob("test_*.py") for m in re.findall(r"^def (test_\w+)", p.read_text(), re.MULTILINE)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_files_and_cited_tests_exist(doc):
    text = doc.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://|#|mailto:", target):
            continue
        assert (doc.parent / target.split("#")[0]).exists(), f"{doc.name}: broken link {target}"
    for name in re.findall(r"`[^`]*?\b(test_\w+)(?![\w.])", text):
        assert name in TESTS, f"{doc.name}: cites {name}, which no test file defines"
    for path in re.findall(r"`([\w./-]+\.(?:py|yaml))`", text):
        if "*" in path or path.startswith("."):
            continue
        assert any(f == path or f.endswith("/" + path) for f in FILES), f"{doc.name}: names {path}, not in the repo"
