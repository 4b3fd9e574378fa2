"""Every test the README and docs/ name as the proof of a claim exists: a renamed or deleted
test must take its claim's citation with it (``test_x_…`` names a test by its beginning)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CITED = re.compile(r"\btest_[a-z0-9_]+…?")


def _tests() -> set[str]:
    names = {path.stem for path in (ROOT / "tests").rglob("test_*.py")}
    for path in (ROOT / "tests").rglob("*.py"):
        names |= set(re.findall(r"def (test_[a-z0-9_]+)", path.read_text(encoding="utf-8")))
    return names


@pytest.mark.parametrize("document", ["README.md", *sorted(p.name for p in (ROOT / "docs").glob("*.md"))])
def test_every_test_a_document_cites_exists(document: str) -> None:
    path = ROOT / document if document == "README.md" else ROOT / "docs" / document
    tests = _tests()
    missing = [name for name in sorted(set(CITED.findall(path.read_text(encoding="utf-8"))))
               if not (any(t.startswith(name[:-1]) for t in tests) if name.endswith("…") else name in tests)]
    assert not missing, f"{document} cites tests that do not exist: {missing}"


def test_the_check_finds_a_citation_that_names_no_test() -> None:
    tests = _tests()
    assert "test_every_test_a_document_cites_exists" in tests
    assert "test_no_such_test_anywhere" not in tests
