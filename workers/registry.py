"""Job kinds and their handlers, in an explicit registry.

A handler is a plain ``async def handler(ctx, payload)`` that is idempotent (a job
may run again after a crash) and commits its effect through ``ctx.transaction()``
(see :class:`workers.context.JobContext`). Its options are typed and checked at
import::

    @job("media.finish_video", time_limit=timedelta(hours=2), max_attempts=4, on_dead=fail_video)
    async def finish_video(ctx: JobContext, payload: dict) -> None: ...

    @periodic("retention.sweep", every=timedelta(hours=1), time_limit=timedelta(minutes=10),
              on_dead=nothing_to_undo("the next period sweeps again"))
    async def sweep_retention(ctx: JobContext, payload: dict) -> None: ...

Every kind says what happens when it goes dead (``on_dead``, required): either an
async ``undo(ctx, payload)`` that puts the domain back in a final state (a video that
can no longer be finished becomes ``failed`` and its original is shredded), run by the
runner whenever a job goes dead — attempts exhausted, a ``no_retry`` error, or its
worker lost on the last attempt — and again by reconcile jobs, so it must be
idempotent; or :func:`nothing_to_undo` with the reason, so nobody forgets to think
about it. A dead handler gets a :class:`workers.context.DeadJobContext`.

The worker loads jobs with :func:`workers.jobs.load`: it imports the modules listed in
:data:`workers.jobs.MODULES` — the explicit list of job modules — plus
``Settings.worker_imports`` (``VAULT_WORKER_IMPORTS``), a hook for tests and extensions.
Imports run one way: job modules import this module for ``job``/``periodic``, and this
module imports no job module.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vault.config import Settings
    from workers.context import DeadJobContext, JobContext

Handler = Callable[["JobContext", dict[str, Any]], Awaitable[None]]
DeadHandler = Callable[["DeadJobContext", dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class NothingToUndo:
    """A kind whose dead jobs leave nothing to repair, and why (read in reviews)."""

    reason: str

    def __post_init__(self) -> None:
        if not isinstance(self.reason, str) or len(self.reason.strip()) < 10:
            raise ValueError("nothing_to_undo needs the reason why a dead job leaves nothing to repair")


def nothing_to_undo(reason: str) -> NothingToUndo:
    return NothingToUndo(reason)


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Exponential backoff with jitter: attempt n waits between half and all of
    ``min(cap, base * 2**(n-1))``, so retries of a shared failure spread out."""

    base: timedelta = timedelta(seconds=10)
    cap: timedelta = timedelta(hours=1)

    def __post_init__(self) -> None:
        if self.base <= timedelta(0) or self.cap < self.base:
            raise ValueError("backoff needs 0 < base <= cap")

    def delay(self, attempt: int, *, rng: Callable[[], float] = random.random) -> timedelta:
        ceiling = min(self.cap, self.base * 2 ** min(max(attempt - 1, 0), 32))
        return ceiling / 2 + ceiling / 2 * rng()


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    name: str
    handler: Handler
    # Required: what a dead job of this kind leaves to repair (see the module docstring).
    on_dead: DeadHandler | NothingToUndo
    time_limit: timedelta = timedelta(minutes=5)
    max_attempts: int = 5
    backoff: Backoff = field(default_factory=Backoff)
    # Exceptions that no retry can cure (a corrupt upload): the job goes dead at once.
    no_retry: tuple[type[BaseException], ...] = ()
    # Periodic when set: a period, or a function of the settings for a configurable one.
    every: timedelta | Callable[[Settings], timedelta] | None = None

    def __post_init__(self) -> None:
        if not inspect.iscoroutinefunction(self.handler):
            raise TypeError(f"the handler of job {self.name!r} must be an async function")
        if not isinstance(self.on_dead, NothingToUndo) and not inspect.iscoroutinefunction(self.on_dead):
            raise TypeError(f"job {self.name!r}: on_dead is an async function or nothing_to_undo(reason)")
        if self.time_limit <= timedelta(0):
            raise ValueError(f"job {self.name!r}: time_limit must be positive")
        if self.max_attempts < 1:
            raise ValueError(f"job {self.name!r}: max_attempts must be at least 1")
        if isinstance(self.every, timedelta) and self.every < timedelta(seconds=1):
            raise ValueError(f"job {self.name!r}: a period is at least one second")

    def period(self, settings: Settings) -> timedelta | None:
        every = self.every(settings) if callable(self.every) else self.every
        if every is not None and every < timedelta(seconds=1):
            raise ValueError(f"job {self.name!r}: a period is at least one second")
        return every


class Registry:
    def __init__(self) -> None:
        self._specs: dict[str, JobSpec] = {}

    def register(self, spec: JobSpec) -> JobSpec:
        existing = self._specs.get(spec.name)
        if existing is not None and existing.handler is not spec.handler:
            raise ValueError(f"job kind {spec.name!r} is registered twice")
        self._specs[spec.name] = spec
        return spec

    def job(
        self,
        name: str,
        *,
        on_dead: DeadHandler | NothingToUndo,
        time_limit: timedelta = timedelta(minutes=5),
        max_attempts: int = 5,
        backoff: Backoff | None = None,
        no_retry: tuple[type[BaseException], ...] = (),
    ) -> Callable[[Handler], Handler]:
        def decorate(handler: Handler) -> Handler:
            self.register(
                JobSpec(
                    name=name, handler=handler, on_dead=on_dead, time_limit=time_limit, max_attempts=max_attempts,
                    backoff=backoff or Backoff(), no_retry=no_retry,
                )
            )
            return handler

        return decorate

    def periodic(
        self,
        name: str,
        *,
        every: timedelta | Callable[[Settings], timedelta],
        on_dead: DeadHandler | NothingToUndo,
        time_limit: timedelta = timedelta(minutes=5),
        max_attempts: int = 3,
        backoff: Backoff | None = None,
    ) -> Callable[[Handler], Handler]:
        def decorate(handler: Handler) -> Handler:
            self.register(
                JobSpec(
                    name=name, handler=handler, on_dead=on_dead, time_limit=time_limit, max_attempts=max_attempts,
                    backoff=backoff or Backoff(), every=every,
                )
            )
            return handler

        return decorate

    def get(self, name: str) -> JobSpec:
        return self._specs[name]

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(sorted(self._specs))

    @property
    def schedule(self) -> dict[str, timedelta]:
        """Periodic kinds with a fixed period, and their periods."""
        return {name: spec.every for name, spec in self._specs.items() if isinstance(spec.every, timedelta)}

    def schedule_for(self, settings: Settings) -> dict[str, timedelta]:
        """Every periodic kind and its period under these settings."""
        periods = {}
        for name, spec in self._specs.items():
            period = spec.period(settings)
            if period is not None:
                periods[name] = period
        return periods


registry = Registry()
job = registry.job
periodic = registry.periodic
