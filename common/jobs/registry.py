"""Job registry: job type → handler, its schema version and its options.

    jobs = JobRegistry()

    @jobs.job("email.send", version=2, queue="emails", timeout=30, breaker="smtp")
    async def send_email(payload: SendEmailV2, ctx: JobContext) -> None: ...

The payload model is taken from the first parameter's annotation (or ``model=``) and
registered in the registry's ``SchemaRegistry``, which producers share to validate.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from conveyor.common.backoff import RetryPolicy
from conveyor.common.errors import ConfigurationError, UnknownJobType
from conveyor.common.queue_names import check_portable_queue_name
from conveyor.schemas.envelope import JOB_TYPE_PATTERN, MAX_SCHEMA_VERSION
from conveyor.schemas.registry import SchemaRegistry

__all__ = ["DEFAULT_QUEUE", "Handler", "JobRegistry", "JobSpec"]

DEFAULT_QUEUE = "conveyor.default"
_JOB_TYPE = re.compile(JOB_TYPE_PATTERN)
Handler = Callable[..., Any]


@dataclass(frozen=True)
class JobSpec:
    job_type: str
    version: int
    handler: Handler
    model: type[BaseModel]
    queue: str
    timeout: float
    retry: RetryPolicy
    breaker: str | None
    is_async: bool
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        _check_wire_names(self.job_type, self.version)
        _check_timeout(self.job_type, self.timeout)
        check_portable_queue_name(self.queue, what=f"{self.job_type}: queue")
        if not (isinstance(self.model, type) and issubclass(self.model, BaseModel)):
            raise ConfigurationError(f"{self.job_type}: the payload model must be a pydantic model class")

    def option(self, name: str, default: Any = None) -> Any:
        return dict(self.options).get(name, default)


def _check_wire_names(job_type: str, version: int) -> None:
    # What every envelope carries (schemas.envelope): a handler for a type or version outside
    # them was registered, and every publish of it then refused as malformed.
    if not (type(job_type) is str and _JOB_TYPE.fullmatch(job_type)):
        raise ConfigurationError(f"job type {job_type!r}: use 1 to 128 of a-z 0-9 _ . - starting with a letter")
    if not (type(version) is int and 1 <= version <= MAX_SCHEMA_VERSION):
        raise ConfigurationError(f"{job_type}: version must be a whole number from 1 to {MAX_SCHEMA_VERSION}, "
                                 f"not {version!r}")


def _check_handler(job_type: str, handler: Handler) -> None:
    # A generator's body runs only when it is iterated: its job was acked as a success unrun.
    if inspect.isgeneratorfunction(handler) or inspect.isasyncgenfunction(handler):
        raise ConfigurationError(f"{job_type}: the handler is a generator (it yields); a handler returns")
    # Every job calls handler(payload, ctx): one that cannot take them failed each attempt with
    # a TypeError, retried to the DLQ, instead of once here.
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):  # no signature to read (a builtin): the first job will tell
        return
    try:
        signature.bind(None, None)
    except TypeError as exc:
        raise ConfigurationError(f"{job_type}: the handler must take (payload, ctx): {exc}") from None


def _is_async(handler: Handler) -> bool:
    # An object whose __call__ is an async def is called like one: run in a thread, its coroutine
    # was never awaited, and the job acked as a success unrun.
    if inspect.iscoroutinefunction(handler):
        return True
    while isinstance(handler, functools.partial):
        handler = handler.func
    call = None if inspect.isroutine(handler) else inspect.getattr_static(type(handler), "__call__", None)
    return inspect.iscoroutinefunction(call)


def _check_timeout(job_type: str, timeout: float) -> None:
    # inf or NaN would be no time limit at all: a hung handler would hold its message forever.
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
        raise ConfigurationError(f"{job_type}: timeout must be a positive number of seconds, not {timeout}")


class JobRegistry:
    """The handlers one application provides; pass it to a Worker (and its schemas to a Producer)."""

    def __init__(self, schemas: SchemaRegistry | None = None) -> None:
        self.schemas = schemas or SchemaRegistry()
        self._specs: dict[str, JobSpec] = {}

    def job(
        self,
        job_type: str,
        *,
        version: int = 1,
        model: type[BaseModel] | None = None,
        queue: str = DEFAULT_QUEUE,
        timeout: float = 300.0,
        retry: RetryPolicy | None = None,
        breaker: str | None = None,
        **options: Any,
    ) -> Callable[[Handler], Handler]:
        _check_wire_names(job_type, version)  # at once, not when the handler is decorated
        _check_timeout(job_type, timeout)
        check_portable_queue_name(queue, what=f"{job_type}: queue")

        def decorate(handler: Handler) -> Handler:
            _check_handler(job_type, handler)
            resolved = model or _model_from_annotation(handler)
            if resolved is None:
                raise ConfigurationError(
                    f"{job_type}: annotate the handler's first parameter with a pydantic model or pass model="
                )
            self.add(
                JobSpec(
                    job_type=job_type,
                    version=version,
                    handler=handler,
                    model=resolved,
                    queue=queue,
                    timeout=timeout,
                    retry=retry or RetryPolicy(),
                    breaker=breaker,
                    is_async=_is_async(handler),
                    options=tuple(sorted(options.items())),
                )
            )
            return handler

        return decorate

    def add(self, spec: JobSpec) -> None:
        if spec.job_type in self._specs:
            raise ConfigurationError(f"job type {spec.job_type!r} already has a handler")
        self.schemas.register(spec.job_type, spec.version, spec.model)
        self._specs[spec.job_type] = spec

    def get(self, job_type: str) -> JobSpec:
        try:
            return self._specs[job_type]
        except KeyError:
            raise UnknownJobType(f"no handler for job type {job_type!r}") from None

    def specs(self) -> list[JobSpec]:
        return [self._specs[name] for name in sorted(self._specs)]

    def queues(self) -> list[str]:
        return sorted({spec.queue for spec in self._specs.values()})

    def check_options(self, owned: Iterable[str]) -> None:
        """Every job option must belong to a configured middleware; name the culprit."""
        known = set(owned)
        for spec in self._specs.values():
            for name, _ in spec.options:
                if name not in known:
                    raise ConfigurationError(
                        f"{spec.job_type}: unknown job option {name!r}; no configured middleware owns it"
                    )
        self.schemas.check()


def _model_from_annotation(handler: Handler) -> type[BaseModel] | None:
    params = list(inspect.signature(handler).parameters.values())
    if not params:
        return None
    try:
        hints = typing.get_type_hints(handler)
    except Exception:  # unresolvable forward refs: fall back to model=
        return None
    annotation = hints.get(params[0].name)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None
