"""Schema registry: (job_type, version) → pydantic model, plus upcasters between versions.

A handler declares the version it accepts; a message of an older version is upcast step
by step (v1 → v2 → … ) before validation, so the handler only ever sees its own version.
A message *newer* than anything registered is reported as such so the worker can defer it
for a newer worker during a rolling deploy instead of failing it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from conveyor.common.errors import (
    ConfigurationError,
    InvalidPayload,
    UnknownJobType,
    UnknownSchemaVersion,
)

__all__ = ["SchemaRegistry", "SchemaTooNew", "Upcaster", "describe_validation_error"]

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class SchemaTooNew(UnknownSchemaVersion):
    """The message was written by a newer producer than this worker knows."""

    reason = "version_too_new"


def describe_validation_error(error: ValidationError) -> str:
    """Field locations and error kinds only: values can hold secrets, so never echo them."""
    parts = []
    for item in error.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in item["loc"]) or "<root>"
        parts.append(f"{loc}: {item['type']}")
    return "; ".join(parts[:10])


@dataclass
class _JobSchemas:
    models: dict[int, type[BaseModel]] = field(default_factory=dict)
    upcasters: dict[int, Upcaster] = field(default_factory=dict)  # from_version → fn

    @property
    def latest(self) -> int:
        return max(self.models)


class SchemaRegistry:
    """Holds every known job schema; one instance per application, passed explicitly."""

    def __init__(self) -> None:
        self._jobs: dict[str, _JobSchemas] = {}
        # job type → its latest version and model, kept by ``register``: a producer asks for it
        # on every publish, where ``max`` over the versions and two look-ups were a microsecond.
        self._latest: dict[str, tuple[int, type[BaseModel]]] = {}

    def register(self, job_type: str, version: int, model: type[BaseModel]) -> None:
        schemas = self._jobs.setdefault(job_type, _JobSchemas())
        existing = schemas.models.get(version)
        if existing is not None and existing is not model:
            raise ConfigurationError(f"{job_type} v{version} is already registered")
        schemas.models[version] = model
        self._latest[job_type] = (schemas.latest, schemas.models[schemas.latest])

    def upcaster(self, job_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator: ``@registry.upcaster("email.send", 1)`` turns a v1 dict into v2."""

        def decorate(fn: Upcaster) -> Upcaster:
            self._jobs.setdefault(job_type, _JobSchemas()).upcasters[from_version] = fn
            return fn

        return decorate

    def job_types(self) -> list[str]:
        return sorted(self._jobs)

    def versions(self, job_type: str) -> list[int]:
        return sorted(self._require(job_type).models)

    def latest_version(self, job_type: str) -> int:
        return self._require(job_type).latest

    def model(self, job_type: str, version: int) -> type[BaseModel]:
        try:
            return self._require(job_type).models[version]
        except KeyError:
            raise UnknownSchemaVersion(f"{job_type} has no schema version {version}") from None

    def knows(self, job_type: str) -> bool:
        return job_type in self._jobs

    def latest(self, job_type: str) -> tuple[int, type[BaseModel]] | None:
        """The latest version of ``job_type`` and its model; None for a type without a model."""
        return self._latest.get(job_type)

    def validate(self, job_type: str, version: int, data: dict[str, Any]) -> BaseModel:
        """Validate ``data`` written at ``version`` exactly as that version's model."""
        return self.validate_as(self.model(job_type, version), job_type, version, data)

    @staticmethod
    def validate_as(model: type[BaseModel], job_type: str, version: int, data: dict[str, Any]) -> BaseModel:
        """``validate`` with the model already looked up (``latest``)."""
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise InvalidPayload(
                f"{job_type} v{version} payload invalid: {describe_validation_error(exc)}"
            ) from None

    def resolve(
        self, job_type: str, version: int, data: dict[str, Any], *, target: int | None = None
    ) -> BaseModel:
        """Upcast ``data`` from ``version`` to ``target`` (default: latest) and validate it."""
        schemas = self._require(job_type)
        target = schemas.latest if target is None else target
        if version > target:
            raise SchemaTooNew(f"{job_type} v{version} is newer than v{target} known here")
        current = version
        while current < target:
            step = schemas.upcasters.get(current)
            if step is None:
                raise UnknownSchemaVersion(f"{job_type} has no upcaster from v{current}")
            data = step(dict(data))
            current += 1
        return self.validate(job_type, target, data)

    def check(self) -> None:
        """Start-up check: every version below the latest must be upcastable."""
        for job_type, schemas in self._jobs.items():
            if not schemas.models:
                raise ConfigurationError(f"{job_type} has upcasters but no model")
            for version in range(min(schemas.models), schemas.latest):
                if version not in schemas.upcasters:
                    raise ConfigurationError(f"{job_type}: missing upcaster v{version}→v{version + 1}")

    def _require(self, job_type: str) -> _JobSchemas:
        schemas = self._jobs.get(job_type)
        if schemas is None or not schemas.models:
            raise UnknownJobType(f"unknown job type {job_type!r}")
        return schemas
