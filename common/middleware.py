"""The middleware chain: cross-cutting behaviour as a finite, typed set of hooks.

Each middleware may wrap consuming (``consume(ctx, call_next)``) and publishing
(``publish(cmd, call_next)``), hear what settlement did (``settled``) and may act at start-up
and shutdown. The chain runs in the
order given: the first middleware is the outermost. Settlement (ack, retry, dead-letter)
is core and deliberately *not* a middleware, so no configuration can remove it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.common.jobs.command import PublishCommand
    from conveyor.common.jobs.context import JobContext
    from conveyor.common.jobs.outcome import Outcome, SettleAction
    from conveyor.common.jobs.registry import JobSpec
    from conveyor.schemas.envelope import Envelope

__all__ = ["ConsumeNext", "Middleware", "PublishNext", "build_consume_chain", "build_publish_chain"]

ConsumeNext = Callable[["JobContext"], Awaitable[Any]]
PublishNext = Callable[["PublishCommand"], Awaitable[None]]


class Middleware:
    """Override only the hooks you need; the defaults pass straight through."""

    #: Job options this middleware owns (validated at registration, see ``consumer.registry``).
    options: frozenset[str] = frozenset()

    async def startup(self) -> None:
        return None

    async def shutdown(self) -> None:
        return None

    async def succeeded_before(self, envelope: Envelope, spec: JobSpec) -> bool:
        """True if this very job already succeeded (a redelivery after a lost ack): the worker
        then acks it without fetching its claim-check payload or running it. Asked before the
        fetch because a succeeded job's stored payload may already be deleted."""
        return False

    async def consume(self, ctx: JobContext, call_next: ConsumeNext) -> Any:
        return await call_next(ctx)

    async def publish(self, cmd: PublishCommand, call_next: PublishNext) -> None:
        await call_next(cmd)

    def settled(self, outcome: Outcome, action: SettleAction) -> None:
        """After settlement carried out ``outcome`` (``action``: what it did). Synchronous and
        cheap: it runs on the hot path after every delivery (the job-state recorder buffers)."""
        return None


def build_consume_chain(middlewares: Sequence[Middleware], innermost: ConsumeNext) -> ConsumeNext:
    call = innermost
    for middleware in reversed(middlewares):
        if type(middleware).consume is not Middleware.consume:  # pass-through ones cost nothing
            call = _Link(middleware.consume, call)
    return call


def build_publish_chain(middlewares: Sequence[Middleware], innermost: PublishNext) -> PublishNext:
    call = innermost
    for middleware in reversed(middlewares):
        if type(middleware).publish is not Middleware.publish:
            call = _Link(middleware.publish, call)
    return call


class _Link:
    """``hook(x, call_next)`` as a one-argument callable. It returns the hook's coroutine
    itself rather than wrapping it in one more, which every job would pay per middleware."""

    __slots__ = ("_hook", "_call_next")

    def __init__(self, hook: Callable[[Any, Any], Awaitable[Any]], call_next: Callable[[Any], Awaitable[Any]]) -> None:
        self._hook = hook
        self._call_next = call_next

    def __call__(self, value: Any) -> Awaitable[Any]:
        return self._hook(value, self._call_next)
