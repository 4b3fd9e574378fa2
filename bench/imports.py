"""What a worker's memory is made of, before its first job: ``python -m bench.imports``.

Imports what a worker process imports, one step at a time, and prints the resident set size
(``VmRSS``) each step adds. Each broker's steps run in a fresh interpreter of their own, so
nothing one imported is counted in the other. It answers "what would ≤ 45 MiB on Pulsar cost?"
(issue 18, goal 7) with the bytes of each part instead of a guess: the rows up to the client
library are what the raw loop pays too; pydantic's row is the envelope and payload validation.

    python -m bench.imports [--broker rabbitmq|pulsar|all]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

STEPS = {
    "rabbitmq": ["asyncio", "aiormq", "orjson", "pydantic (imported)", "pydantic (one model built)",
                 "prometheus_client", "h11", "conveyor.common.transport.rabbitmq", "conveyor.consumer.worker",
                 "conveyor.common.settings", "conveyor.consumer.cli.worker"],
    "pulsar": ["asyncio", "pulsar", "pulsar.asyncio", "orjson", "pydantic (imported)", "pydantic (one model built)",
               "prometheus_client", "h11", "conveyor.common.transport.pulsar", "conveyor.consumer.worker",
               "conveyor.common.settings", "conveyor.consumer.cli.worker"],
}

_CHILD = r"""
import importlib, json, sys

def rss_kib():
    with open("/proc/self/status") as status:
        return int(status.read().split("VmRSS:")[1].split()[0])

rows = []
for step in json.loads(sys.argv[1]):
    before, modules = rss_kib(), len(sys.modules)
    if step == "pydantic (imported)":
        import pydantic
    elif step == "pydantic (one model built)":
        class One(pydantic.BaseModel):  # the first model builds pydantic's machinery
            n: int
    else:
        importlib.import_module(step)
    after = rss_kib()
    rows.append([step, after - before, after, len(sys.modules) - modules])
print(json.dumps(rows))
"""


def measure(broker: str) -> list[tuple[str, int, int, int]]:
    """(step, KiB it added, total KiB after it, modules it added) for a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(STEPS[broker])],
                         capture_output=True, text=True, check=True, timeout=120)
    return [(str(a), int(b), int(c), int(d)) for a, b, c, d in json.loads(out.stdout)]


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.imports", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--broker", choices=("rabbitmq", "pulsar", "all"), default="all")
    args = p.parse_args()
    for broker in STEPS if args.broker == "all" else [args.broker]:
        base = measure(broker)
        print(f"\n{broker}: RSS a worker process adds, step by step (fresh interpreter)")
        print(f"{'step':<38} {'+MiB':>6} {'total MiB':>10} {'+modules':>9}")
        start = base[0][2] - base[0][1]
        print(f"{'(interpreter)':<38} {start / 1024:6.1f} {start / 1024:10.1f}")
        for step, added, total, modules in base:
            print(f"{step:<38} {added / 1024:+6.1f} {total / 1024:10.1f} {modules:9d}")


if __name__ == "__main__":
    main()
