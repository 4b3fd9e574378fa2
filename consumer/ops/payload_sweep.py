"""Remove orphaned claim-check objects: ``conveyor payloads sweep --older-than 7d``.

Whether an object's job is still pending or dead-lettered cannot be known cheaply (that
would mean reading every queue and DLQ), so an *orphan* is defined by age alone: an object
older than ``--older-than``. The rule that makes this safe is on the operator:

    older-than  >  the longest a job can live (RetryPolicy.max_age, default 24 h, plus any
                   publish delay and deferrals)  +  how long dead letters are kept before
                   they are replayed or purged.

Objects normally disappear sooner: a succeeded job's object is deleted right after the
ack, and ``conveyor dlq purge`` deletes the objects of the entries it purges. The sweep is
for the rest (a failed delete, a publish whose outcome stayed unknown, a crashed producer),
and a bucket lifecycle rule with the same age is a good second line on S3.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from conveyor.common.errors import ConfigurationError
from conveyor.common.payload_store.base import PayloadStore

__all__ = ["MIN_SWEEP_AGE", "SweepReport", "parse_age", "sweep"]

MIN_SWEEP_AGE = timedelta(hours=1)
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> timedelta:
    """``90s``, ``30m``, ``12h``, ``7d``, ``2w`` → timedelta."""
    match = _AGE.match(text)
    if not match:
        raise ConfigurationError(f"age {text!r}: use a number and one of s, m, h, d, w (e.g. 7d)")
    try:
        return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    except OverflowError:  # past what a timedelta holds (~2.7 million years): a typo, not an age
        raise ConfigurationError(f"age {text!r}: longer than any object can be old") from None


@dataclass
class SweepReport:
    scanned: int = 0
    orphans: int = 0
    deleted: int = 0
    failed: int = 0
    orphan_bytes: int = 0
    dry_run: bool = False


async def sweep(store: PayloadStore, older_than: timedelta, *, now: datetime, dry_run: bool = False) -> SweepReport:
    """Delete (or with ``dry_run`` only count) objects last modified before ``now - older_than``."""
    if older_than < MIN_SWEEP_AGE:
        raise ConfigurationError(f"--older-than must be at least {MIN_SWEEP_AGE}: younger objects belong to live jobs")
    cutoff = now - older_than
    report = SweepReport(dry_run=dry_run)
    async for item in store.list_objects():
        report.scanned += 1
        if item.modified >= cutoff:
            continue
        report.orphans += 1
        report.orphan_bytes += item.size
        if dry_run:
            continue
        try:
            await store.delete_key(item.key)
            report.deleted += 1
        except Exception:
            report.failed += 1
    return report
