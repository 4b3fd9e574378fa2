"""Reason codes are a closed set (metric labels, CLI filters): every code a worker writes is listed."""

from __future__ import annotations

import inspect

from conveyor.common import errors
from conveyor.schemas.dead_letter import REASONS

# Written by settlement itself, not carried by an exception.
SETTLEMENT_REASONS = {"exhausted", "expired", "unknown_version", "permanent", "rejected", "settlement_failed"}


def test_every_reason_code_a_worker_can_write_is_in_the_closed_set() -> None:
    raised = {cls.reason for _, cls in inspect.getmembers(errors, inspect.isclass)
              if issubclass(cls, errors.RejectedMessage)}
    raised.add("unsupported_content_encoding")  # UnsupportedContent's second code
    missing = (raised | SETTLEMENT_REASONS) - set(REASONS)
    assert not missing, f"reason codes a worker writes but REASONS does not list: {sorted(missing)}"
    assert len(REASONS) == len(set(REASONS))
