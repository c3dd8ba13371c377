"""The worker loop: claim jobs, run their handlers in N slots, keep their leases alive.

Each claimed job runs as a task beside a heartbeat that extends its lease every
third of the lease. If an extension finds the job claimed by someone else (this
worker stalled past its lease), the handler is cancelled: its result could not
commit anyway. A handler running past its kind's time limit is cancelled and the
attempt fails with ``JobTimeout``. On stop (SIGTERM/SIGINT, or the stop event) the
worker claims nothing more, lets running jobs finish for a grace period, then
cancels them and hands them back to the queue; a second signal skips the grace.

    vault worker --concurrency 4                     # its own process
    await run_in_process(settings, concurrency=2, stop_event=stop)   # inside `vault serve`
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any, TypeVar

from vault.config import Settings
from vault.db import utcnow
from vault.jobs.heartbeat import keep_beating
from vault.jobs.queue import ClaimedJob, LeaseLost, claim, complete, describe_error, extend_lease, fail, release
from vault.jobs.schedule import enqueue_due
from vault.runtime import Runtime, runtime as open_runtime
from workers.context import DeadJobContext, JobContext
from workers.jobs import load
from workers.registry import JobSpec, NothingToUndo, Registry

log = logging.getLogger("vault.worker")
T = TypeVar("T")


class JobTimeout(Exception):
    """The handler ran past its kind's time limit and was cancelled."""


class Worker:
    def __init__(
        self,
        runtime: Runtime,
        registry: Registry,
        *,
        concurrency: int = 4,
        lease: timedelta = timedelta(seconds=60),
        poll_interval: float = 1.0,
        schedule_interval: float = 10.0,
        shutdown_grace: float = 30.0,
        name: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if lease < timedelta(seconds=1):
            raise ValueError("a lease is at least one second")
        self.runtime = runtime
        self.db = runtime.db
        self.registry = registry
        self.concurrency = concurrency
        self.lease = lease
        self.heartbeat_interval = lease.total_seconds() / 3
        self.poll_interval = poll_interval
        self.schedule_interval = schedule_interval
        self.shutdown_grace = shutdown_grace
        self.name = name or f"{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(3)}"
        self._force = asyncio.Event()

    def force_stop(self) -> None:
        """Skip the shutdown grace: cancel running jobs now (they are handed back)."""
        self._force.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set, then drain and return."""
        loop = asyncio.get_running_loop()
        kinds = self.registry.kinds
        log.info("worker started", extra={"worker": self.name, "concurrency": self.concurrency, "kinds": list(kinds)})
        stopping = asyncio.ensure_future(stop.wait())
        beating = asyncio.Event()
        heart = asyncio.create_task(keep_beating(self.db, self.name, kinds=len(kinds), stop=beating), name="heartbeat")
        tasks: set[asyncio.Task[None]] = set()
        next_tick = 0.0
        backlog = False
        schedule = self.registry.schedule_for(self.runtime.settings)
        try:
            while not stop.is_set():
                if schedule and loop.time() >= next_tick:
                    next_tick = loop.time() + self.schedule_interval
                    await self._guard(enqueue_due(self.db, schedule), "schedule")
                free = self.concurrency - len(tasks)
                if free > 0:
                    claimed: list[ClaimedJob] = await self._guard(
                        claim(self.db, kinds=kinds, limit=free, lease=self.lease, worker=self.name, peek=not backlog),
                        "claim",
                    ) or []
                    backlog = len(claimed) == free
                    for job in claimed:
                        task = asyncio.create_task(self._execute(job), name=f"job-{job.id}")
                        task.add_done_callback(self._reap)
                        tasks.add(task)
                # Slots full: wake when one frees. Slots left over: the queue ran dry, poll.
                await asyncio.wait({stopping, *tasks}, timeout=self.poll_interval, return_when=asyncio.FIRST_COMPLETED)
                tasks = {task for task in tasks if not task.done()}
        finally:
            stopping.cancel()
            await self._drain(tasks)
            beating.set()
            await heart
            log.info("worker stopped", extra={"worker": self.name})

    def _reap(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("job runner error", extra={"worker": self.name}, exc_info=task.exception())

    async def _drain(self, tasks: set[asyncio.Task[None]]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.shutdown_grace
        pending: set[asyncio.Future[Any]] = {task for task in tasks if not task.done()}
        forced: asyncio.Future[Any] = asyncio.ensure_future(self._force.wait())
        try:
            while pending and not self._force.is_set() and (remaining := deadline - loop.time()) > 0:
                _, pending = await asyncio.wait(pending | {forced}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                pending.discard(forced)
        finally:
            forced.cancel()
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _execute(self, job: ClaimedJob) -> None:
        spec = self.registry.get(job.kind)
        max_attempts = job.max_attempts or spec.max_attempts
        fields = {"job_id": job.id, "kind": job.kind, "attempt": job.attempts, "worker": self.name}
        if job.attempts > max_attempts:
            # Claimed again after its worker vanished on the last allowed attempt.
            error = "WorkerLost: the lease of the last attempt expired"
            dead = await self._guard(fail(self.db, job.id, job.fence, error=error, retry_at=None), "fail")
            log.error("job dead: its worker was lost", extra=fields)
            if dead:
                await self._undo(spec, job, error, fields)
            return
        ctx = JobContext(
            job_id=job.id, kind=job.kind, attempt=job.attempts, max_attempts=max_attempts,
            fence=job.fence, runtime=self.runtime,
        )
        started = time.perf_counter()
        handler = asyncio.create_task(self._call(spec, ctx, job.payload))
        try:
            lost = await self._supervise(handler, ctx, job)
        except asyncio.CancelledError:
            handler.cancel()
            await asyncio.gather(handler, return_exceptions=True)
            if not ctx.completed:
                await self._guard(release(self.db, job.id, job.fence), "release")
                log.info("job handed back at shutdown", extra=fields)
            raise
        fields["seconds"] = round(time.perf_counter() - started, 3)
        if lost:
            log.warning("job lease lost to another worker; handler cancelled", extra=fields)
            return
        await self._settle(handler, ctx, job, spec, max_attempts, fields)

    async def _call(self, spec: JobSpec, ctx: JobContext, payload: dict[str, Any]) -> None:
        limit = spec.time_limit.total_seconds()
        timeout = asyncio.timeout(limit)
        try:
            async with timeout:
                await spec.handler(ctx, payload)
        except TimeoutError:
            if timeout.expired():
                raise JobTimeout(f"exceeded its time limit of {limit:g}s") from None
            raise

    async def _supervise(self, handler: asyncio.Task[None], ctx: JobContext, job: ClaimedJob) -> bool:
        """Heartbeat until the handler ends; True when the lease was lost (handler cancelled)."""
        while True:
            done, _ = await asyncio.wait({handler}, timeout=self.heartbeat_interval)
            if done:
                return False
            if ctx.finishing:
                continue
            held = await self._guard(extend_lease(self.db, job.id, job.fence, lease=self.lease), "heartbeat")
            if held is False and not handler.done() and not ctx.finishing:
                handler.cancel()
                await asyncio.gather(handler, return_exceptions=True)
                return True

    async def _settle(
        self, handler: asyncio.Task[None], ctx: JobContext, job: ClaimedJob, spec: JobSpec, max_attempts: int,
        fields: dict[str, Any],
    ) -> None:
        exc: BaseException | None = asyncio.CancelledError() if handler.cancelled() else handler.exception()
        if exc is None:
            if not ctx.completed:
                try:
                    async with self.db.transaction() as session:
                        await complete(session, job.id, job.fence)
                except LeaseLost:
                    log.warning("job finished after its lease was lost; not recorded", extra=fields)
                    return
                except Exception:
                    # The lease will expire and the (idempotent) job run again.
                    log.exception("could not record a finished job", extra=fields)
                    return
            log.info("job done", extra=fields)
            return
        if isinstance(exc, LeaseLost):
            log.warning("job lease lost to another worker; its result was rolled back", extra=fields)
            return
        retry = job.attempts < max_attempts and not isinstance(exc, spec.no_retry)
        retry_at = utcnow() + spec.backoff.delay(job.attempts) if retry else None
        error = describe_error(exc)
        recorded = await self._guard(fail(self.db, job.id, job.fence, error=error, retry_at=retry_at), "fail")
        fields.update(exc_type=type(exc).__name__, retry=retry, recorded=bool(recorded))
        # The formatter logs the exception type and frames, not its message.
        log.warning("job failed" if retry else "job dead", extra=fields, exc_info=exc)
        if recorded and not retry:
            await self._undo(spec, job, error, fields)

    async def _undo(self, spec: JobSpec, job: ClaimedJob, error: str, fields: dict[str, Any]) -> None:
        """Run the kind's dead path once the job is recorded dead. A failure here is
        logged, not retried: the reconcile jobs find what it would have repaired (a
        video stuck in ``processing``, an export stuck ``running``) and repair it."""
        if isinstance(spec.on_dead, NothingToUndo):
            return
        ctx = DeadJobContext(job_id=job.id, kind=job.kind, error=error, runtime=self.runtime)
        try:
            async with asyncio.timeout(spec.time_limit.total_seconds()):
                await spec.on_dead(ctx, job.payload)
        except Exception:
            log.exception("dead path of a job failed; reconcile will repair", extra=fields)
        else:
            log.info("dead path of a job ran", extra=fields)

    async def _guard(self, awaitable: Awaitable[T], what: str) -> T | None:
        """Run a queue call; a database hiccup is logged and retried on the next turn."""
        try:
            return await awaitable
        except Exception as exc:
            log.warning("job queue %s failed", what, extra={"worker": self.name, "exc_type": type(exc).__name__})
            return None


def worker_for(rt: Runtime, registry: Registry, *, concurrency: int) -> Worker:
    settings = rt.settings
    return Worker(
        rt,
        registry,
        concurrency=concurrency,
        lease=timedelta(seconds=settings.job_lease_seconds),
        poll_interval=settings.job_poll_ms / 1000,
    )


async def run_in_process(
    settings: Settings, *, concurrency: int, stop_event: asyncio.Event, runtime: Runtime | None = None
) -> None:
    """Run a worker until ``stop_event`` is set (``vault serve`` in the embedded
    default). Pass the app's open ``runtime`` to share its engines; on SQLite that
    keeps a single write connection per process."""
    registry = load(settings.worker_imports)
    if runtime is not None:
        await worker_for(runtime, registry, concurrency=concurrency).run(stop_event)
        return
    async with open_runtime(settings) as rt:
        await worker_for(rt, registry, concurrency=concurrency).run(stop_event)


async def _serve(settings: Settings, concurrency: int) -> None:
    registry = load(settings.worker_imports)
    stop = asyncio.Event()
    async with open_runtime(settings) as rt:
        worker = worker_for(rt, registry, concurrency=concurrency)

        def on_signal() -> None:
            if stop.is_set():
                worker.force_stop()
            stop.set()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        await worker.run(stop)


def main(settings: Settings, *, concurrency: int) -> int:
    """``vault worker``: run until SIGTERM or SIGINT."""
    from vault.logs import configure

    configure(settings.log_level)
    asyncio.run(_serve(settings, concurrency))
    return 0
