"""Export the wire contract as JSON Schema files for publishers in any language.

    python -m conveyor.schemas.export --app conveyor.consumer.ops.demo:demo_jobs --out schemas/json/
    python -m conveyor.schemas.export --app conveyor.consumer.ops.demo:demo_jobs --out schemas/json/ --check

Writes, generated from the pydantic models (draft 2020-12):

    envelope.v1.json              the job envelope (inline payload or payload reference)
    dead_letter.v1.json           the dead-letter record
    jobs/<job_type>/v<N>.json     one file per registered (job type, version)
    index.json                    what is where

A published file is a contract: writing refuses a schema that is incompatible with the file
already there (see ``schemas.compat``; ``--allow-breaking`` overrides, for versions that were
never deployed). ``--check`` changes nothing and exits 1 when the files differ from the
models or a change is breaking; the unit tests run the same check.

``--app`` is ``module[:attr]`` (attr defaults to ``jobs``): a ``SchemaRegistry``, anything with a
``schemas`` attribute holding one (a ``JobRegistry``), or a function returning either.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from conveyor.schemas.compat import breaking_changes
from conveyor.schemas.dead_letter import DeadLetterRecord
from conveyor.schemas.envelope import ENVELOPE_VERSION, Envelope
from conveyor.schemas.registry import SchemaRegistry

__all__ = ["ExportReport", "check", "load_schemas", "main", "render", "write"]

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _dump(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _document(model: type[BaseModel], schema_id: str, **extra: Any) -> dict[str, Any]:
    schema = model.model_json_schema(mode="validation")
    return {"$schema": DRAFT, "$id": schema_id, **extra, **schema}


def render(registry: SchemaRegistry) -> dict[str, str]:
    """Relative path → file text, for every schema the contract publishes."""
    files = {
        f"envelope.v{ENVELOPE_VERSION}.json": _dump(_document(Envelope, f"urn:conveyor:envelope:v{ENVELOPE_VERSION}")),
        "dead_letter.v1.json": _dump(_document(DeadLetterRecord, "urn:conveyor:dead-letter:v1")),
    }
    index: dict[str, Any] = {
        "envelope": f"envelope.v{ENVELOPE_VERSION}.json",
        "dead_letter": "dead_letter.v1.json",
        "jobs": {},
    }
    for job_type in registry.job_types():
        versions = {}
        for version in registry.versions(job_type):
            path = f"jobs/{job_type}/v{version}.json"
            document = _document(
                registry.model(job_type, version),
                f"urn:conveyor:job:{job_type}:v{version}",
                **{"x-conveyor-job-type": job_type, "x-conveyor-schema-version": version},
            )
            files[path] = _dump(document)
            versions[str(version)] = path
        index["jobs"][job_type] = {"latest": registry.latest_version(job_type), "versions": versions}
    files["index.json"] = _dump(index)
    return files


@dataclass
class ExportReport:
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    differs: list[str] = field(default_factory=list)  # committed file ≠ models (check mode)
    missing: list[str] = field(default_factory=list)  # not committed yet
    stale: list[str] = field(default_factory=list)  # committed, no longer generated
    breaking: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.differs or self.missing or self.stale or self.breaking)

    def describe(self) -> str:
        lines = []
        for path, problems in sorted(self.breaking.items()):
            lines.append(f"BREAKING {path}: " + "; ".join(problems) + " — publish a new version with an upcaster")
        lines += [f"differs from the models: {p}" for p in self.differs]
        lines += [f"not generated yet: {p}" for p in self.missing]
        lines += [f"stale (no longer registered; delete it only if no producer sends it): {p}" for p in self.stale]
        lines += [f"wrote {p}" for p in self.written]
        return "\n".join(lines)


def _committed(out: Path) -> dict[str, str]:
    if not out.is_dir():
        return {}
    return {p.relative_to(out).as_posix(): p.read_text(encoding="utf-8") for p in sorted(out.rglob("*.json"))}


def _compare(files: dict[str, str], out: Path) -> ExportReport:
    report = ExportReport()
    existing = _committed(out)
    for path, text in files.items():
        old = existing.get(path)
        if old is None:
            report.missing.append(path)
        elif old == text:
            report.unchanged.append(path)
        else:
            report.differs.append(path)
            if path != "index.json":
                problems = breaking_changes(json.loads(old), json.loads(text))
                if problems:
                    report.breaking[path] = problems
    report.stale = sorted(set(existing) - set(files))
    return report


def check(registry: SchemaRegistry, out: Path) -> ExportReport:
    """Compare without writing: what differs, what is missing or stale, what is breaking."""
    return _compare(render(registry), out)


def write(registry: SchemaRegistry, out: Path, *, allow_breaking: bool = False) -> ExportReport:
    """Write new and changed files; refuse (write nothing) if a change is breaking."""
    files = render(registry)
    report = _compare(files, out)
    if report.breaking and not allow_breaking:
        return report
    for path in report.missing + report.differs:
        target = out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(files[path], encoding="utf-8")
        report.written.append(path)
    report.missing, report.differs = [], []
    if allow_breaking:
        report.breaking = {}
    return report


def load_schemas(target: str) -> SchemaRegistry:
    module_name, _, attr = target.partition(":")
    sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:  # a one-line error, like `conveyor worker`'s, not a traceback
        raise SystemExit(f"--app {target!r}: no module named {exc.name!r} (is it on PYTHONPATH?)") from None
    value: Any = getattr(module, attr or "jobs", None)
    if value is None:
        raise SystemExit(f"--app {target!r}: module {module_name!r} has no attribute {attr or 'jobs'!r}")
    if callable(value) and not isinstance(value, SchemaRegistry) and not hasattr(value, "schemas"):
        value = value()
    value = getattr(value, "schemas", value)
    if not isinstance(value, SchemaRegistry):
        raise SystemExit(f"{target} is neither a SchemaRegistry nor holds one in .schemas")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conveyor.schemas.export", description=__doc__.split("\n")[0])
    parser.add_argument("--app", required=True, help="module[:attr] of a JobRegistry or SchemaRegistry")
    parser.add_argument("--out", required=True, type=Path, help="directory of the JSON Schema files")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if files differ or break")
    parser.add_argument("--allow-breaking", action="store_true", help="overwrite published versions anyway")
    args = parser.parse_args(argv)
    registry = load_schemas(args.app)
    if args.check:
        report = check(registry, args.out)
    else:
        report = write(registry, args.out, allow_breaking=args.allow_breaking)
        for path in report.stale:  # reported, not fatal when writing
            print(f"stale (no longer registered): {path}", file=sys.stderr)
        report.stale = []
    text = report.describe()
    if text:
        print(text, file=sys.stderr if not report.ok else sys.stdout)
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
