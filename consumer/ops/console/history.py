"""The overview's memory: status samples over the last minutes, and the rates between them.

Each sample is ``collect_status`` with no wait and no DLQ browsing (depths only: browsing on
every refresh would take and give back every dead letter each time), taken every ``refresh``
seconds by one task for all browsers. Rates come from the workers' counters, summed over the
workers that answered both samples (one that did not answer the first would add its whole
total as one step); a counter that went down is a restarted worker, and its step counts 0.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from conveyor.common.errors import ConveyorError
from conveyor.common.transport.base import Transport
from conveyor.consumer.ops.status import StatusReport, collect_status

__all__ = ["RATE_SERIES", "OverviewHistory", "Sample", "sample_forever"]

log = logging.getLogger(__name__)

# chart name → worker counters summed into it
RATE_SERIES = {"published": ("published",), "completed": ("succeeded",), "failed": ("failed",),
               "dead_lettered": ("dead_lettered",)}
# Each rate is taken over at least this many seconds: a job or two per sample is noise, not a rate.
RATE_WINDOW = 10.0


@dataclass(frozen=True)
class Sample:
    at: float  # monotonic seconds
    wall: datetime
    report: StatusReport

    def totals(self) -> dict[str, dict[str, float]]:
        """Worker URL → its counter totals, for the workers that answered this time."""
        return {w.url: w.totals for w in self.report.workers if w.up}


class OverviewHistory:
    def __init__(self, keep: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.keep = keep
        self._clock = clock
        self._samples: collections.deque[Sample] = collections.deque()

    def add(self, report: StatusReport) -> Sample:
        sample = Sample(self._clock(), datetime.now(UTC), report)
        self._samples.append(sample)
        while self._samples and sample.at - self._samples[0].at > self.keep:
            self._samples.popleft()
        return sample

    @property
    def span(self) -> float:
        """Seconds a chart shows: the samples kept, at least a minute, at most ``keep``."""
        if not self._samples:
            return 60.0
        return min(self.keep, max(60.0, self._clock() - self._samples[0].at))

    @property
    def latest(self) -> Sample | None:
        return self._samples[-1] if self._samples else None

    def rates(self) -> dict[str, list[tuple[float, float]]]:
        """Chart name → [(seconds ago, per second)]: at each sample, each worker's rate over the
        last ``RATE_WINDOW`` seconds (from its first answer in that window), summed."""
        now = self._clock()
        out: dict[str, list[tuple[float, float]]] = {name: [] for name in RATE_SERIES}
        samples = list(self._samples)
        start = 0
        for index in range(1, len(samples)):
            after = samples[index]
            while samples[index].at - samples[start + 1].at >= RATE_WINDOW:
                start += 1
            rates = dict.fromkeys(RATE_SERIES, 0.0)
            for url, totals in after.totals().items():
                before = next((s for s in samples[start:index] if url in s.totals()), None)
                if before is None or after.at <= before.at:
                    continue
                old = before.totals()[url]
                for name, counters in RATE_SERIES.items():
                    step = sum(totals.get(c, 0.0) - old.get(c, 0.0) for c in counters)
                    rates[name] += max(0.0, step) / (after.at - before.at)
            for name, value in rates.items():
                out[name].append((now - after.at, value))
        return out

    def depths(self, queue: str) -> dict[str, list[tuple[float, float]]]:
        """Ready, delayed and dead-letter depth of ``queue`` over time: name → [(seconds ago, count)]."""
        now = self._clock()
        out: dict[str, list[tuple[float, float]]] = {"ready": [], "delayed": [], "dead": []}
        for sample in self._samples:
            row = next((q for q in sample.report.queues if q.queue == queue and q.error is None), None)
            if row is None:
                continue
            for name, value in (("ready", row.ready), ("delayed", row.delayed), ("dead", row.dead_letters)):
                if value is not None:
                    out[name].append((now - sample.at, float(value)))
        return out


async def sample_forever(transport: Transport, queues: list[str], workers: list[str], history: OverviewHistory,
                         refresh: float, ready: asyncio.Event | None = None) -> None:
    """Sample until cancelled; a failed round is logged and tried again next time."""
    while True:
        try:
            history.add(await collect_status(transport, queues, interval=0, workers=workers, dlq_scan_limit=0))
        except ConveyorError as exc:
            log.warning("console: a status sample failed: %s: %s", type(exc).__name__, exc)
        if ready is not None:
            ready.set()
        await asyncio.sleep(refresh)
