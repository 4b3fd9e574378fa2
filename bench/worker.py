"""Worker subprocess: ``python -m bench.worker '<json spec>'`` (started by the harness).

Imports only the side it runs, so the peak RSS it reports is that side's own.
"""

from __future__ import annotations

import asyncio
import json
import sys


def main() -> None:
    spec = json.loads(sys.argv[1])
    if spec["side"] == "aiormq":
        from bench.aiormq_raw import worker_main
    elif spec["side"] == "raw":
        from bench.raw import worker_main
    elif spec["side"] == "conveyor":
        from bench.conveyor import worker_main
    elif spec["side"] == "conveyor-ablated":
        from bench.ablation import worker_main
    elif spec["side"] == "pulsar-raw":
        from bench.pulsar_raw import worker_main
    elif spec["side"] == "pulsar-conveyor":
        from bench.pulsar_conveyor import worker_main
    else:
        raise SystemExit(f"unknown side {spec['side']!r}")
    asyncio.run(worker_main(spec))


if __name__ == "__main__":
    main()
