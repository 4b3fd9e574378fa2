"""The three-node RabbitMQ cluster (scripts/services/rabbitmq-cluster.sh) as the fault scenarios drive it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

import pytest

from tests.faults import app
from tests.faults.harness import ROOT, FaultRun
from tests.integration.accounting import publish_until_confirmed

__all__ = ["NODES", "Cluster", "paced_publish", "readiness"]

SCRIPT = ROOT / "scripts" / "services" / "rabbitmq-cluster.sh"
NODES = (1, 2, 3)


class Cluster:
    """Commands of the cluster script, run off the event loop (they take seconds)."""

    async def run(self, *args: str, timeout: float = 240) -> str:
        env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_AMQP_URL"}
        # A group of its own: on a timeout the script's children (rabbitmqctl, curl, sleep) go
        # with it; killing bash alone left them running into the next scenario. The nodes are
        # not in it: rabbitmq-server -detached leaves the session.
        process = await asyncio.create_subprocess_exec(
            "bash", str(SCRIPT), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
            start_new_session=True,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            pytest.fail(f"rabbitmq-cluster.sh {' '.join(args)} took over {timeout}s")
        assert process.returncode == 0, f"rabbitmq-cluster.sh {' '.join(args)} failed: {err.decode()[-3000:]}"
        return out.decode()

    @staticmethod
    def up_sync() -> str:
        """Bring the cluster up (idempotent); its multi-host URL."""
        env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_AMQP_URL"}
        done = subprocess.run(["bash", str(SCRIPT), "up"], capture_output=True, text=True, env=env, timeout=600,
                              check=False)
        if done.returncode != 0:
            pytest.fail(f"the RabbitMQ cluster did not come up: {done.stderr[-3000:]}", pytrace=False)
        return done.stdout.strip().splitlines()[-1]

    async def up(self) -> None:
        await self.run("up")

    async def leader(self, queue: str) -> int:
        name = (await self.run("leader", queue)).strip()  # rabbitcN@localhost
        return int(name.removeprefix("rabbitc").partition("@")[0])

    async def members(self, queue: str) -> list[str]:
        """The quorum queue's members (node names), as node 1 or any running node reports them."""
        for node in NODES:
            try:
                out = await self.run("ctl", str(node), "-q", "list_queues", "name", "members", "--formatter", "json",
                                     timeout=60)
            except AssertionError:
                continue
            for row in json.loads(out):
                if row["name"] == queue:
                    return sorted(row["members"])
        pytest.fail(f"no node lists the queue {queue}")

    async def kill(self, node: int) -> None:
        await self.run("kill", str(node))

    async def stop(self, node: int) -> None:
        await self.run("stop", str(node))

    async def start(self, node: int) -> None:
        await self.run("start", str(node))

    async def restart(self, node: int) -> None:
        await self.run("restart", str(node))

    async def isolate(self, node: int) -> None:
        await self.run("isolate", str(node))

    async def heal(self) -> None:
        await self.run("heal")


async def readiness(port: int) -> int | None:
    """The status of a worker's /readyz (None: no answer)."""
    def get() -> int | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=3) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)
        except OSError:
            return None
    return await asyncio.to_thread(get)


async def paced_publish(run: FaultRun, payloads: Sequence[dict[str, object]], *, rate: float,
                        dead: set[int] = frozenset(), deadline: float = 180.0) -> list[str]:  # type: ignore[assignment]
    """Publish at about ``rate`` jobs per second, each until confirmed (the producer retries an
    unconfirmed publish with the same job id; so does this loop, after a loud failure)."""
    ids: list[str] = []
    started = time.monotonic()
    async with run.producer() as producer:
        for i, payload in enumerate(payloads):
            envelope = producer.build_envelope(app.JOB_TYPE, payload)
            await publish_until_confirmed(producer, envelope, deadline)
            run.ledger.expect(envelope.job_id, dead=i in dead)
            ids.append(envelope.job_id)
            ahead = started + (i + 1) / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
    return ids
