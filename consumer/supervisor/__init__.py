"""``conveyor worker --processes N``: one supervisor process, N worker processes.

The supervisor runs no jobs. It starts each worker as a fresh ``python -m conveyor worker …``
process with the same arguments (a fresh interpreter: no inherited event loop, threads or
connections) marked as a child by the environment (``beacon.CHILD_ENV``), forwards SIGTERM,
SIGINT and SIGHUP to all of them as SIGTERM for a graceful drain, restarts one that dies unexpectedly with a capped
exponential backoff and gives up on a crash loop (``policy``), and serves one /metrics, /readyz
and /healthz for all of them (``http``). Each worker keeps everything a single worker has: its
own stall watchdog, its own crash journal (named by its pid), its own broker connections.
"""

from typing import TYPE_CHECKING

from conveyor.common.lazy import lazy_exports

if TYPE_CHECKING:
    from conveyor.consumer.supervisor.beacon import CHILD_ENV, STOP_SIGNALS, Beacon, child_index
    from conveyor.consumer.supervisor.policy import RestartPolicy
    from conveyor.consumer.supervisor.supervisor import Supervisor

__all__ = ["CHILD_ENV", "STOP_SIGNALS", "Beacon", "RestartPolicy", "Supervisor", "child_index"]

# Lazy: every worker process asks for child_index and the Beacon; only the supervisor process
# needs the Supervisor and its multiprocess /metrics (issue 18, worker RSS).
__getattr__ = lazy_exports(__name__, {
    ".beacon": ("CHILD_ENV", "STOP_SIGNALS", "Beacon", "child_index"),
    ".policy": ("RestartPolicy",),
    ".supervisor": ("Supervisor",),
})
