"""The conformance suite refuses to pass without running: ``CONVEYOR_TEST_BACKENDS`` is checked
when the suite is collected (pytest run as a subprocess, ``--collect-only``: no server needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def collect(backends: str | None, *, ci: bool, quiet: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "CONVEYOR_TEST_BACKENDS")}
    if backends is not None:
        env["CONVEYOR_TEST_BACKENDS"] = backends
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "tests/conformance", "--collect-only", "-q" if quiet else "-v", "-p",
         "no:cacheprovider"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )


def collected(result: subprocess.CompletedProcess[str]) -> set[str]:
    """The backends of the collected tests (``…[memory]``, ``…[rabbitmq-…]``)."""
    return {line.split("[", 1)[1].split("]")[0].split("-")[0] for line in result.stdout.splitlines()
            if "::" in line and "[" in line and not line.startswith(f"tests/conformance/{Path(__file__).name}")}


@pytest.mark.parametrize("backends", [" ", "", " , "])
@pytest.mark.parametrize("ci", [False, True], ids=["local", "ci"])
def test_an_empty_backend_list_fails_the_suite(backends: str, ci: bool) -> None:
    result = collect(backends, ci=ci)
    assert result.returncode not in (0, 5), result.stdout
    assert "CONVEYOR_TEST_BACKENDS" in result.stdout + result.stderr
    assert "lists no backend" in result.stdout + result.stderr


@pytest.mark.parametrize("backends", ["memory", "memory,rabbitmq", "memory,pulsar", "rabbitmq"])
def test_under_ci_a_backend_list_without_both_real_brokers_fails_the_suite(backends: str) -> None:
    result = collect(backends, ci=True)
    assert result.returncode not in (0, 5), result.stdout
    output = result.stdout + result.stderr
    assert "CONVEYOR_TEST_BACKENDS" in output
    missing = {"rabbitmq", "pulsar"} - set(backends.split(","))
    assert all(name in output.split("lacks", 1)[-1] for name in missing), output


def test_an_unknown_backend_fails_the_suite() -> None:
    result = collect("memory,rabbit", ci=False)
    assert result.returncode not in (0, 5), result.stdout
    assert "unknown backend 'rabbit'" in result.stdout + result.stderr


@pytest.mark.parametrize("backends", [None, "memory,rabbitmq,pulsar", " pulsar , rabbitmq,memory "])
def test_under_ci_the_full_list_collects_every_backend(backends: str | None) -> None:
    result = collect(backends, ci=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert collected(result) == {"memory", "rabbitmq", "pulsar"}


def test_outside_ci_a_subset_runs_and_says_what_it_leaves_out() -> None:
    result = collect("memory", ci=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert collected(result) == {"memory"}
    result = collect("memory", ci=False, quiet=False)  # the report header is not shown with -q
    assert "conformance backends: memory (left out: rabbitmq, pulsar)" in result.stdout
