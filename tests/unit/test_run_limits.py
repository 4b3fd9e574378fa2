"""The suite's own limits under CI (tests/conftest.py): a broken run stops early with its failures
printed instead of being killed at the CI's limit with nothing said."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import run_limits, stop_reason


def test_under_ci_the_defaults_stop_after_25_failures_or_80_minutes() -> None:
    limits = run_limits({"CI": "true"}, now=100.0)
    assert (limits.max_failures, limits.budget) == (25, 4800.0)
    assert stop_reason(limits, failed=24, now=100.0 + 4799) is None
    assert "25 tests failed" in (stop_reason(limits, failed=25, now=101.0) or "")
    assert "over 4800 s" in (stop_reason(limits, failed=0, now=100.0 + 4801) or "")


def test_outside_ci_a_run_goes_to_the_end_unless_asked() -> None:
    limits = run_limits({}, now=0.0)
    assert stop_reason(limits, failed=10_000, now=1e9) is None
    asked = run_limits({"CONVEYOR_TEST_MAX_FAILURES": "3"}, now=0.0)
    assert stop_reason(asked, failed=3, now=0.0) is not None


def test_a_limit_that_is_not_a_number_is_a_usage_error() -> None:
    with pytest.raises(pytest.UsageError, match="not a number"):
        run_limits({"CI": "true", "CONVEYOR_TEST_BUDGET": "an hour"}, now=0.0)


def test_a_run_past_its_failure_limit_stops_prints_its_failures_and_fails(tmp_path: Path) -> None:
    # A real pytest run with this conftest: three failing tests, limit two, the third never runs.
    root = Path(__file__).resolve().parents[2]
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import pytest_configure, pytest_runtest_protocol  # noqa: F401\n")
    (tmp_path / "test_broken.py").write_text(textwrap.dedent("""
        def test_one(): assert False, "first"
        def test_two(): assert False, "second"
        def test_three(): raise SystemExit("must not run")
    """))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={"PYTHONPATH": str(root), "CONVEYOR_TEST_MAX_FAILURES": "2", "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert "2 tests failed (CONVEYOR_TEST_MAX_FAILURES=2)" in run.stdout
    assert "FAILED test_broken.py::test_one" in run.stdout and "FAILED test_broken.py::test_two" in run.stdout
    assert "test_three" not in run.stdout


def test_a_run_keeps_its_state_directory_to_itself() -> None:
    # Set by tests/conftest.py before any test: workers started by tests write their crash
    # journals there, not in the developer's ~/.local/state.
    from conveyor.common.settings import Settings

    state = Path(os.environ["XDG_STATE_HOME"])
    assert state.name.startswith("conveyor-test-state-") and state.is_dir()
    assert Settings(state_dir=None).effective_state_dir == state / "conveyor"
