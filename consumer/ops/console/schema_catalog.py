"""The job types' JSON Schemas, for validating a payload an operator edited before it is replayed.

From the files ``python -m conveyor.schemas.export`` wrote (``index.json`` names them: the
contract publishers in any language use), or generated the same way from a job registry. The
check is the JSON Schema itself (draft 2020-12, ``jsonschema``), so the console needs no
handler code to refuse a payload no worker would accept.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from conveyor.common.errors import ConfigurationError
from conveyor.schemas.export import render
from conveyor.schemas.registry import SchemaRegistry

__all__ = ["SchemaCatalog"]


class SchemaCatalog:
    def __init__(self, documents: dict[tuple[str, int], dict[str, Any]] | None = None) -> None:
        self._validators = {key: Draft202012Validator(doc) for key, doc in (documents or {}).items()}
        self.documents = dict(documents or {})

    @classmethod
    def from_registry(cls, registry: SchemaRegistry) -> SchemaCatalog:
        files = render(registry)
        return cls._from_files(json.loads(files["index.json"]), lambda path: json.loads(files[path]))

    @classmethod
    def from_directory(cls, directory: Path) -> SchemaCatalog:
        try:
            index = json.loads((directory / "index.json").read_text(encoding="utf-8"))
            return cls._from_files(index, lambda path: json.loads((directory / path).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigurationError(f"cannot read the exported schemas in {str(directory)!r}: "
                                     f"{type(exc).__name__}: {exc}") from None

    @classmethod
    def _from_files(cls, index: dict[str, Any], load: Any) -> SchemaCatalog:
        documents = {}
        for job_type, entry in index.get("jobs", {}).items():
            for version, path in entry["versions"].items():
                documents[(job_type, int(version))] = load(path)
        return cls(documents)

    def merged(self, other: SchemaCatalog) -> SchemaCatalog:
        return SchemaCatalog({**self.documents, **other.documents})

    def knows(self, job_type: str, version: int) -> bool:
        return (job_type, version) in self._validators

    def errors(self, job_type: str, version: int, data: Any) -> list[str]:
        """Each way ``data`` breaks the schema, as ``path: message``; empty when it is valid."""
        validator = self._validators.get((job_type, version))
        if validator is None:
            raise ConfigurationError(f"no JSON Schema for {job_type} v{version}: start the console with --app "
                                     "(the job registry) or --schemas (the exported directory)")
        found = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
        return [f"{'.'.join(str(p) for p in error.absolute_path) or '(payload)'}: {error.message}"
                for error in found[:20]]
