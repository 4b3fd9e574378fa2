"""The supervisor's pure parts: its restart policy, the process count option, the workers' beacon."""

from __future__ import annotations

import os

import click
import pytest

from conveyor.common.errors import ConfigurationError
from conveyor.common.metrics import WorkerMetrics
from conveyor.consumer.cli.worker import Processes
from conveyor.consumer.supervisor import Beacon, RestartPolicy, child_index


def test_restart_delay_doubles_from_the_first_delay_up_to_the_cap() -> None:
    policy = RestartPolicy(first_delay=0.5, max_delay=5.0)
    assert [policy.delay(streak) for streak in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_only_early_deaths_extend_the_streak_and_a_long_run_starts_it_again() -> None:
    policy = RestartPolicy(healthy_after=10.0, max_failures=3)
    streak = 0
    for uptime in (0.1, 2.0):
        streak = policy.streak(streak, uptime)
    assert streak == 2 and not policy.gives_up(streak)
    assert policy.streak(streak, 60.0) == 1, "a process that ran 60 s had a good run"
    assert policy.gives_up(policy.streak(streak, 9.9))


@pytest.mark.parametrize("kwargs", [{"first_delay": -1}, {"first_delay": 2, "max_delay": 1}, {"max_failures": 0},
                                    {"healthy_after": -1}])
def test_a_restart_policy_that_could_spin_or_never_start_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        RestartPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "expected"), [("1", 1), ("4", 4), (" AUTO ", os.cpu_count() or 1), (3, 3)])
def test_the_process_count_is_a_positive_number_or_auto(value: object, expected: int) -> None:
    assert Processes().convert(value, None, None) == expected


@pytest.mark.parametrize("value", ["0", "-1", "abc", "", "2.5", 0, True, "1025", 10**20, "99999999999999999999"])
def test_any_other_process_count_is_refused(value: object) -> None:
    with pytest.raises(click.BadParameter):
        Processes().convert(value, None, None)


def test_a_process_is_a_supervised_child_only_with_a_numeric_marker() -> None:
    assert child_index({}) is None
    assert child_index({"CONVEYOR_WORKER_CHILD": "3"}) == 3
    assert child_index({"CONVEYOR_WORKER_CHILD": "x"}) is None


def test_the_beacon_reports_ready_and_in_flight_and_notices_a_gone_supervisor() -> None:
    read_fd, write_fd = os.pipe()
    refreshed: list[int] = []
    beacon = Beacon(write_fd, lambda: (True, 7), before=lambda: refreshed.append(1))
    assert beacon.report()
    assert os.read(read_fd, 100) == b"1 7\n" and refreshed == [1]
    os.close(read_fd)
    assert not beacon.report(), "a closed pipe: the supervisor is gone"
    os.close(write_fd)


def test_refresh_writes_function_gauges_as_values() -> None:
    metrics = WorkerMetrics()
    count = [2]
    metrics.count_in_flight("q", lambda: count[0])
    metrics.refresh()
    child = metrics.child(metrics.in_flight, "q")
    assert child._value.get() == 2  # what the multiprocess files would hold
    count[0] = 5
    metrics.refresh()
    assert child._value.get() == 5


class _Captured:
    """A stand-in supervisor: records the command its worker processes would run, starts none."""

    commands: list[list[str]] = []

    def __init__(self, command: list[str], processes: int, **_: object) -> None:
        self.commands.append(list(command))
        self.error = None

    async def run(self) -> int:
        return 0


@pytest.mark.parametrize("argv", [["pytest", "-q"], ["conveyor", "worker", "other.app:jobs", "--processes", "9"]])
def test_worker_processes_run_the_arguments_main_was_given_not_sys_argv(
    monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    import sys

    import conveyor.consumer.supervisor as supervisor_package
    from conveyor.consumer.cli import main

    monkeypatch.setattr(supervisor_package, "Supervisor", _Captured)
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.delenv("CONVEYOR_WORKER_CHILD", raising=False)
    monkeypatch.setenv("E2E_QUEUE", "unit.supervisor.argv")
    _Captured.commands.clear()
    args = ["--log-level", "warning", "worker", "tests.e2e.processes_app:jobs", "--broker",
            "amqp://127.0.0.1:1/", "--processes", "2", "--http-port", "0"]
    main(args, standalone_mode=False)
    assert _Captured.commands == [[sys.executable, "-m", "conveyor", *args]]
