"""The README's console pictures are there, are PNG screenshots, and the README shows them."""

from __future__ import annotations

import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parents[5]


def test_the_readme_shows_the_overview_and_a_dead_letter() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in ("console-overview.png", "console-dead-letter.png"):
        picture = (ROOT / "docs" / name).read_bytes()
        assert picture[:8] == b"\x89PNG\r\n\x1a\n", name
        width, height = struct.unpack(">II", picture[16:24])
        assert width == 1280 and height >= 800, (name, width, height)  # taken at 1280×800
        assert f"](docs/{name})" in readme
