"""Drive a fault scenario: real worker processes, a real broker (which the test may kill), the ledger.

A scenario publishes jobs (``publish``), starts ``conveyor worker`` processes
(``start_worker``), breaks something, heals it, then ``settle``s: waits until every job is
accounted for and returns the ``Figures``, which ``check`` holds to the invariants.

Every run records job states: the producer and the workers write to the scenario's own
PostgreSQL job-state store (``ledger.job_state_url``) with a short lease, so attempts of killed
workers are reconciled within the scenario, and ``settle`` waits (bounded) until the store
agrees with the ledger.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conveyor.common.errors import TransportError
from conveyor.common.job_state import job_state_store_from_url
from conveyor.common.transport.base import OutgoingMessage
from conveyor.common.transport.factory import transport_from_url
from conveyor.producer.producer import Producer
from tests.faults import app
from tests.faults.ledger import POISON_HEADER, Figures, Ledger, Snapshot
from tests.integration.accounting import publish_until_confirmed

log = logging.getLogger(__name__)

__all__ = ["BrokerControl", "FaultRun", "check"]

ROOT = Path(__file__).resolve().parents[2]
# The workers' lease on a running attempt: short, so the attempts of a killed worker are
# reconciled (abandoned) within the scenario rather than after the default minute.
JOB_STATE_LEASE = 3.0
RUN_DIR = Path(os.environ.get("CONVEYOR_RUN_DIR", Path.home() / ".cache" / "conveyor" / "run"))


@dataclass(frozen=True)
class BrokerControl:
    """Crash and restart the broker this machine runs (scripts/services/<name>.sh)."""

    name: str  # rabbitmq | pulsar

    def pid(self) -> int:
        if self.name == "pulsar":
            return int((RUN_DIR / "pulsar.pid").read_text().strip())
        # The node's own pid file (RABBITMQ_PID_FILE's default, in the trixie root): the cluster's
        # nodes (scripts/services/rabbitmq-cluster.sh) run beside it, so no process-name match.
        cache = Path(os.environ.get("CONVEYOR_CACHE_DIR", Path.home() / ".cache" / "conveyor"))
        pid_file = cache / "trixie-root" / "var/lib/rabbitmq/mnesia/rabbit4@localhost.pid"
        try:
            pid = int(pid_file.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError) as exc:
            pytest.fail(f"no running RabbitMQ node rabbit4@localhost to kill ({pid_file}: {exc}): the broker-kill "
                        "scenario needs the broker scripts/services/rabbitmq.sh runs on this machine")
        return pid

    async def crash(self) -> None:
        """RabbitMQ: ``kill -9``. Pulsar: an abrupt stop of the standalone JVM (SIGTERM, 5 s
        shutdown budget). Standalone embeds its bookie with ``journalWriteData=false`` and a
        random bookie port, so after a ``kill -9`` it can neither promise the data nor recover
        its ledgers (seen: restarts that never serve again); a real cluster's bookies journal
        and fsync. The broker-side connection loss the workers see is the same."""
        if self.name == "rabbitmq":
            os.kill(self.pid(), signal.SIGKILL)
            return
        process = await asyncio.create_subprocess_exec(
            "bash", str(ROOT / "scripts" / "services" / "pulsar.sh"), "down",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        _, err = await process.communicate()
        assert process.returncode == 0, f"pulsar did not stop: {err.decode()[-2000:]}"

    async def restart(self) -> None:
        """``up`` is idempotent: it starts the broker again and waits until it serves."""
        # Without the URL variables: given one, ``up`` only prints it (an external broker).
        # KEEP_DATA: a restart, not Pulsar's usual fresh start.
        env = {k: v for k, v in os.environ.items() if k not in ("CONVEYOR_AMQP_URL", "CONVEYOR_PULSAR_URL")}
        env["CONVEYOR_PULSAR_KEEP_DATA"] = "1"
        process = await asyncio.create_subprocess_exec(
            "bash", str(ROOT / "scripts" / "services" / f"{self.name}.sh"), "up",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env,
        )
        _, err = await process.communicate()
        assert process.returncode == 0, f"{self.name} did not come back: {err.decode()[-2000:]}"


@dataclass
class FaultRun:
    scenario: str
    broker: str  # rabbitmq | pulsar
    url: str
    queue: str
    workdir: Path
    ledger: Ledger
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def outage_flag(self) -> Path:
        return self.workdir / "outage"

    def env(self, url: str | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        markers = self.workdir / "markers"
        markers.mkdir(exist_ok=True)
        return {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "CONVEYOR_BROKER_URL": url or self.url,
            "CONVEYOR_IDEMPOTENCY_URL": self.ledger.database_url,
            "CONVEYOR_LOG_LEVEL": "WARNING",
            "CONVEYOR_METRICS_INTERVAL": "0",
            "FAULT_QUEUE": self.queue,
            "FAULT_EXECUTIONS": str(self.ledger.executions_file),
            "FAULT_EFFECTS_TABLE": self.ledger.effects_table,
            "FAULT_MARKERS": str(markers),
            "FAULT_OUTAGE_FLAG": str(self.outage_flag),
            # The crash journal of this run's workers (one host): restarted workers claim it.
            "CONVEYOR_STATE_DIR": str(self.workdir / "state"),
            **({"CONVEYOR_JOB_STATE_URL": self.ledger.job_state_url,
                "CONVEYOR_JOB_STATE_LEASE": str(JOB_STATE_LEASE)} if self.ledger.job_state_url else {}),
            **(extra or {}),
        }

    def start_worker(self, *, concurrency: int = 8, prefetch: int | None = None, grace: float = 10,
                     url: str | None = None, extra_env: Mapping[str, str] | None = None,
                     http_port: int = 0) -> subprocess.Popen[bytes]:
        """``http_port``: 0 (default) serves no /healthz, /readyz."""
        args = [sys.executable, "-m", "conveyor", "worker", "tests.faults.app:jobs",
                "--concurrency", str(concurrency), "--http-port", str(http_port), "--grace-period", str(grace)]
        if prefetch is not None:
            args += ["--prefetch", str(prefetch)]
        log = open(self.workdir / f"worker-{len(self.workers)}.log", "wb")
        process = subprocess.Popen(args, cwd=ROOT, env=self.env(url, extra_env), stdout=log, stderr=log)
        log.close()
        self.workers.append(process)
        return process

    def worker_log(self, process: subprocess.Popen[bytes]) -> str:
        return (self.workdir / f"worker-{self.workers.index(process)}.log").read_text(errors="replace")

    async def publish(self, payloads: list[dict[str, object]], *, dead: set[int] = frozenset(),  # type: ignore[assignment]
                      deadline: float = 120.0, job_types: Mapping[int, str] | None = None) -> list[str]:
        """Publish one job per payload (index in ``dead``: meant to be dead-lettered; in
        ``job_types``: of that job type, else ``app.JOB_TYPE``); confirmed each."""
        ids = []
        async with self.producer() as producer:
            for i, payload in enumerate(payloads):
                envelope = producer.build_envelope((job_types or {}).get(i, app.JOB_TYPE), payload)
                await publish_until_confirmed(producer, envelope, deadline)
                self.ledger.expect(envelope.job_id, dead=i in dead)
                ids.append(envelope.job_id)
        return ids

    @asynccontextmanager
    async def producer(self, url: str | None = None, **kwargs: object) -> AsyncIterator[Producer]:
        """A producer of the fault app that records ``queued`` in the run's job-state store."""
        states = job_state_store_from_url(self.ledger.job_state_url) if self.ledger.job_state_url else None
        try:
            async with Producer.for_registry(transport_from_url(url or self.url), app.jobs(),
                                             job_state=states, **kwargs) as producer:
                yield producer
        finally:
            if states is not None:
                await states.close()

    async def publish_raw(self, marker: str, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        """A poison message: bytes no producer of ours would send, tagged so its dead letter is found."""
        async with transport_from_url(self.url) as transport:
            await transport.declare(self.queue)
            message = OutgoingMessage(body=body, message_id=f"poison-{marker}",
                                      headers={**(headers or {}), POISON_HEADER: marker})
            await transport.publish(self.queue, message)
        self.ledger.poison[marker] = marker

    async def wait_for_effects(self, count: int, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while len((await self.ledger.effects())[0]) < count:
            if time.monotonic() > deadline:
                pytest.fail(f"{self.scenario}: fewer than {count} jobs succeeded after {timeout}s")
            self.assert_workers_alive()
            await asyncio.sleep(0.1)

    def assert_workers_alive(self) -> None:
        for process in self.workers:
            code = process.poll()
            if code is not None and code != 0 and code != -signal.SIGKILL:
                pytest.fail(f"a worker died with {code}:\n{self.worker_log(process)[-3000:]}")

    async def settle(self, timeout: float = 180.0, healed_at: float | None = None) -> Figures:
        """Wait until every job is accounted for; the figures (printed in the session summary).

        ``healed_at``: when the fault struck (or, for an outage, ended), wall clock."""
        deadline = time.monotonic() + timeout
        while True:
            snap = await self._observe(deadline)
            if snap is not None and self.ledger.settled(snap):
                break
            if time.monotonic() > deadline:
                summary = "the ledger could not read the broker" if snap is None else \
                    self.ledger.figures(self.scenario, self.broker, snap).line()
                pytest.fail(f"not settled after {timeout}s: {summary}")
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # late duplicates (redeliveries in flight) show up in the figures
        snap = await self.ledger.snapshot()
        figures = self.ledger.figures(self.scenario, self.broker, snap)
        if healed_at is not None:
            # Time to recover: the longest stretch after ``healed_at`` in which no job finished
            # (from the fault to the first success of the recovered system, or a later stall).
            times = sorted(t.timestamp() for t in snap.effect_times.values() if t.timestamp() >= healed_at)
            edges = [healed_at, *times]
            figures.recover_seconds = max((b - a for a, b in itertools.pairwise(edges)), default=None)
        if self.ledger.job_state_url:
            await self._converge_states(figures)
        return figures

    async def _converge_states(self, figures: Figures) -> None:
        """Poll the job-state store until it agrees with the ledger, bounded: the writers flush
        within a second or two (a restarted worker replays a killed one's journal first), and a
        killed worker's attempts are abandoned one lease after their last heartbeat, by the
        reconcile a live worker runs every half lease. What still disagrees then is counted."""
        began = time.monotonic()
        deadline = began + 4 * JOB_STATE_LEASE + 10
        while True:
            wrong, stuck = await self.ledger.job_states()
            if (not wrong and not stuck) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        figures.state_mismatch, figures.state_stuck = len(wrong), len(stuck)
        figures.notes["state_wait"] = f"{time.monotonic() - began:.1f}s"
        if wrong or stuck:
            log.warning("%s: job states disagree with the ledger: wrong %s; stuck %s", self.scenario,
                        list(wrong.items())[:5], list(stuck.items())[:5])
            figures.notes["state_examples"] = {**dict(list(wrong.items())[:3]), **dict(list(stuck.items())[:3])}

    async def _observe(self, deadline: float) -> Snapshot | None:
        """One ledger snapshot, or None while the broker cannot be read: the ledger browses the
        DLQ over a new connection each poll, and a scenario may still be restarting the broker
        (or a loaded machine may refuse a connect) -- the observer's hiccup, not the system's."""
        try:
            return await self.ledger.snapshot()
        except (TransportError, OSError) as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("ledger: broker not readable yet (%s: %s); polling again", type(exc).__name__, exc)
            return None

    def stop_workers(self) -> list[int]:
        codes = []
        for process in self.workers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.workers:
            try:
                codes.append(process.wait(40))
            except subprocess.TimeoutExpired:
                process.kill()
                codes.append(process.wait())
        return codes


def check(figures: Figures, *, max_duplicate_dead_letters: int = 0) -> None:
    """The invariants of every scenario."""
    assert figures.lost == 0, figures.line()
    assert figures.duplicate_effects == 0, figures.line()
    assert figures.both == 0, figures.line()
    assert figures.unexpected_dead == 0, figures.line()
    assert figures.duplicate_dead_letters <= max_duplicate_dead_letters, figures.line()
    assert figures.state_mismatch == 0, figures.line()
    assert figures.state_stuck == 0, figures.line()
