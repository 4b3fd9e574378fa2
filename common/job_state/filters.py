"""What ``list_jobs`` selects, stated once: the memory store tests a record with ``matches``,
the SQL stores put the same conditions in a ``WHERE`` clause with ``where``.

Every field given must hold (AND); a field left ``None`` selects everything. A record whose
column is missing (NULL) never matches a condition on it, as in SQL.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from conveyor.common.job_state.states import JobRecord, JobState

__all__ = ["JobFilter"]

_TESTS: dict[str, Callable[[Any, Any], bool]] = {"=": operator.eq, ">=": operator.ge}


@dataclass(frozen=True, slots=True)
class JobFilter:
    state: JobState | None = None
    job_type: str | None = None
    since: datetime | None = None  # created at or after
    idempotency_key: str | None = None

    def conditions(self) -> list[tuple[str, str, Any]]:
        """``(column, operator, value)`` for each field given: the one definition of the filter."""
        wanted = (
            ("state", "=", self.state), ("job_type", "=", self.job_type),
            ("idempotency_key", "=", self.idempotency_key), ("created_at", ">=", self.since),
        )
        return [c for c in wanted if c[2] is not None]

    def matches(self, record: JobRecord) -> bool:
        for column, op, value in self.conditions():
            actual = getattr(record, column)
            if actual is None or not _TESTS[op](actual, value):
                return False
        return True

    def where(self, placeholder: Callable[[int], str], to_db: Callable[[datetime], Any]) -> tuple[str, list[Any]]:
        """`` WHERE …`` (or ``""``) and its arguments, numbered from ``placeholder(1)``."""
        clauses: list[str] = []
        args: list[Any] = []
        for column, op, value in self.conditions():
            args.append(to_db(value) if isinstance(value, datetime) else str(value))
            clauses.append(f"{column} {op} {placeholder(len(args))}")
        return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), args
