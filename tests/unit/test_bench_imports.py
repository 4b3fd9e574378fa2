"""bench/README.md: ``python -m bench.imports`` prints the RSS each import step of a worker adds."""

from __future__ import annotations

from bench import imports


def test_every_step_is_measured_in_a_fresh_interpreter_in_order() -> None:
    rows = imports.measure("rabbitmq")
    assert [row[0] for row in rows] == imports.STEPS["rabbitmq"]
    totals = [row[2] for row in rows]
    assert totals[0] > 0 and totals[-1] > totals[0]  # the worker's imports cost memory
    aiormq = next(row for row in rows if row[0] == "aiormq")
    assert aiormq[3] > 0  # it imported aiormq's own modules, not ones an earlier step loaded
