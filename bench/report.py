"""Render results as rich tables (the JSON holds the same numbers)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["render"]


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if unit == "jobs/s":
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:,.2f}"
    return f"{value:,.1f}"


def _verdict(row: dict[str, Any]) -> str:
    ok = row["meets_target"]
    if ok is None:
        return ""
    return "[green]meets[/green]" if ok else "[red]below[/red]"


def _target(row: dict[str, Any]) -> str:
    target = row.get("target", row.get("target_ratio"))
    if target is None:
        return ""
    sign = "≤" if row["better"] == "lower" else "≥"
    return f"{sign} {target:g} {row['unit']}" if row.get("target_is_absolute") else f"{sign} {target:.2f}×"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _cpu(row: dict[str, Any]) -> str:
    cpu = row.get("detail", {}).get("cpu_us_per_job")
    if not cpu or cpu.get("conveyor") is None:
        return ""
    return " · ".join("—" if cpu.get(side) is None else f"{cpu[side]:.0f}" for side in ("aiormq", "raw", "conveyor") if side in cpu)


def render(results: dict[str, Any], console: Console) -> None:
    m = results["machine"]
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items())
    console.rule("Conveyor benchmark")
    console.print(
        f"{m['date']}  ·  {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM  ·  {m['os']}\n"
        f"Python {m['python']}  ·  RabbitMQ {m['rabbitmq']}"
        + (f"  ·  Pulsar {m['pulsar']}" if m.get("pulsar") else "")
        + f"  ·  {libs}\n"
        f"command: {results['command']}  ·  wall time {results['wall_seconds']} s  ·  "
        f"load average before {m.get('load_average_before')}, after {m.get('load_average_after')}"
    )
    cfg = results["config"]
    console.print(
        f"jobs {cfg['jobs']:,}  ·  retry jobs {cfg['retry_jobs']:,}  ·  window {cfg['window']}  ·  "
        f"{cfg['repeat']} sample(s) per side, order reversed each time, median shown  ·  "
        f"prefetch = concurrency {', '.join(str(p) for p in cfg['prefetches'])}  ·  "
        f"latency {cfg['latency_rate']:g}/s × {cfg['latency_seconds']:g} s"
    )

    table = Table(
        title="Conveyor beside raw aiormq (the bound) and raw aio-pika; raw pulsar-client on the Pulsar rows; same broker, same run",
        show_lines=False,
    )
    for name, justify in (
        ("scenario", "left"),
        ("metric", "left"),
        ("unit", "left"),
        ("raw aiormq", "right"),
        ("raw aio-pika / pulsar", "right"),
        ("Conveyor", "right"),
        ("÷ bound", "right"),
        ("÷ aio-pika", "right"),
        ("target", "right"),
        ("", "left"),
        ("CPU µs/job aiormq · aio-pika · Conveyor", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in results["rows"]:
        bound_ratio = row.get("ratio_conveyor_over_bound", row["ratio_conveyor_over_raw"])
        table.add_row(
            row["scenario"],
            row["metric"],
            row["unit"] + (" ↓" if row["better"] == "lower" else ""),
            _num(row.get("aiormq"), row["unit"]),
            _num(row["raw"], row["unit"]),
            _num(row["conveyor"], row["unit"]),
            _ratio(bound_ratio),
            _ratio(row["ratio_conveyor_over_raw"]) if row.get("aiormq") is not None else "",
            _target(row),
            _verdict(row),
            _cpu(row),
        )
    console.print(table)
    console.print(
        "↓ lower is better. Ratios are Conveyor ÷ bound (raw aiormq; raw pulsar-client on the Pulsar rows) and ÷ raw aio-pika:\n"
        "above 1 is faster for rates, slower for latency/RSS/CPU. Latency and RSS targets are absolute (ms, MiB).\n"
        "CPU µs/job: CPU time of the publishing process (publish rows) or of the worker process (drain, retry)\n"
        "over the timed span, divided by the jobs: the client-side cost per job, independent of broker speed."
    )

    if results["others"]:
        other = Table(title="Other libraries, same jobs and broker (publish sequential with confirms)")
        for name in ("library", "publish jobs/s", "drain jobs/s", "peak RSS MiB", "status"):
            other.add_column(name, justify="left" if name in ("library", "status") else "right")
        for entry in results["others"]:
            other.add_row(
                entry["library"],
                _num(entry.get("publish_jobs_per_s"), "jobs/s"),
                _num(entry.get("drain_jobs_per_s"), "jobs/s"),
                _num(entry.get("peak_rss_mib")),
                entry.get("status", ""),
            )
        console.print(other)
    if results.get("broker_interruptions"):
        console.print(
            f"[yellow]the broker was unreachable {results['broker_interruptions']} time(s) between steps "
            "(someone restarted it); the harness waited for it, but treat nearby numbers with care[/yellow]"
        )
    if results.get("error"):
        console.print(f"[red]run failed:[/red] {results['error']}")
