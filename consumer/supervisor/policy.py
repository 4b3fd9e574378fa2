"""When a worker process that died is started again, and when the supervisor stops trying."""

from __future__ import annotations

from dataclasses import dataclass

from conveyor.common.errors import ConfigurationError

__all__ = ["RestartPolicy"]


@dataclass(frozen=True)
class RestartPolicy:
    """Restart after ``first_delay · 2^(streak-1)`` seconds, at most ``max_delay``.

    ``streak`` counts the process's deaths in a row that came less than ``healthy_after``
    seconds after its start; a process that lived longer had a good run, and its streak starts
    again at 1. At ``max_failures`` early deaths in a row the supervisor gives up: it drains the
    other processes and exits non-zero with one line naming the process and its exit code,
    rather than spin on a process that cannot start (a broker it cannot reach, a bad setting).
    The default of 5 leaves room for the crash guard (``crash_limit``, default 3): a job that
    kills every worker that runs it is dead-lettered after its third death, before the
    supervisor would give up.
    """

    first_delay: float = 0.5
    max_delay: float = 30.0
    healthy_after: float = 10.0
    max_failures: int = 5

    def __post_init__(self) -> None:
        if self.first_delay < 0 or self.max_delay < self.first_delay:
            raise ConfigurationError("restart delays must satisfy 0 ≤ first_delay ≤ max_delay")
        if self.max_failures < 1 or self.healthy_after < 0:
            raise ConfigurationError("max_failures must be ≥ 1 and healthy_after ≥ 0")

    def streak(self, previous: int, uptime: float) -> int:
        """The early-death streak after a death ``uptime`` seconds after the process started."""
        return previous + 1 if uptime < self.healthy_after else 1

    def gives_up(self, streak: int) -> bool:
        return streak >= self.max_failures

    def delay(self, streak: int) -> float:
        """Seconds to wait before the next start, after ``streak`` early deaths in a row (≥ 1)."""
        return float(min(self.max_delay, self.first_delay * 2 ** max(0, streak - 1)))
