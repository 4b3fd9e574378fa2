"""What ``pip install .`` puts in site-packages: one ``conveyor`` package, complete, and typed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT_FOLDERS = ("common", "schemas", "producer", "consumer")


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    out = tmp_path_factory.mktemp("wheel")
    # A copy of the sources: setuptools' build/ directory keeps modules that were since removed.
    source = tmp_path_factory.mktemp("source") / "conveyor"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "tests", "bench", "deploy", "var"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True, capture_output=True, timeout=300,
    )
    [wheel] = out.glob("conveyor-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_wheel_installs_one_conveyor_package_and_nothing_generic(wheel_names: list[str]) -> None:
    tops = {name.split("/", 1)[0] for name in wheel_names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"conveyor"}
    assert not tops & set(PRODUCT_FOLDERS)


def test_wheel_holds_every_module_of_the_product_folders(wheel_names: list[str]) -> None:
    expected = {
        f"conveyor/{path.relative_to(ROOT).as_posix()}"
        for folder in PRODUCT_FOLDERS
        for path in (ROOT / folder).rglob("*")
        if path.suffix in {".py", ".json", ".sql", ".html", ".css", ".js"} and "__pycache__" not in path.parts
    }
    assert expected - set(wheel_names) == set()
    assert {"conveyor/__init__.py", "conveyor/__main__.py", "conveyor/py.typed"} <= set(wheel_names)
    assert "conveyor/consumer/ops/console/templates/base.html" in wheel_names  # the console's pages
    assert "conveyor/consumer/ops/console/static/console.js" in wheel_names


def test_wheel_carries_the_license_it_declares(wheel_names: list[str]) -> None:
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in wheel_names), wheel_names[-5:]
