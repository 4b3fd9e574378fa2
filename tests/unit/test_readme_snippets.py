"""Every Python snippet in the README runs, in order, as a reader would paste them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
SNIPPET = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def test_readme_has_python_snippets() -> None:
    assert len(SNIPPET.findall(README.read_text())) >= 4


def test_every_python_snippet_in_the_readme_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme"}
    for number, code in enumerate(SNIPPET.findall(README.read_text()), start=1):
        compiled = compile(code, f"README.md python snippet {number}", "exec")
        exec(compiled, namespace)
