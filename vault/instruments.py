"""Per-process instruments, observed where the work happens: pipeline stage seconds,
root-key provider calls and audit group commits. Services import this module (never
:mod:`vault.metrics`, which belongs to the HTTP layer); ``GET /metrics`` renders
:data:`PROCESS` beside the application's own registry.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

# -- per process -----------------------------------------------------------------------
PROCESS = CollectorRegistry()
STAGE_SECONDS = Histogram(
    "vault_pipeline_stage_seconds", "Seconds per media pipeline stage (decoder work, sealing)", ["stage"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300), registry=PROCESS,
)
ROOT_KEY_SECONDS = Histogram(
    "vault_root_key_call_seconds", "Root-key provider call latency (KMS, HSM or key file)", ["provider", "operation"],
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=PROCESS,
)
ROOT_KEY_ERRORS = Counter(
    "vault_root_key_errors", "Root-key provider calls that raised", ["provider", "operation"], registry=PROCESS,
)
AUDIT_APPEND_SECONDS = Histogram(
    "vault_audit_append_seconds", "Seconds a request waits for its audit entry to be durable (group commit)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5), registry=PROCESS,
)
AUDIT_BATCH = Histogram(
    "vault_audit_commit_entries", "Audit entries written per group commit",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=PROCESS,
)


@contextmanager
def stage(name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        STAGE_SECONDS.labels(name).observe(time.perf_counter() - started)


def timed_stage(name: str):
    """Decorator form of :func:`stage` for coroutine functions (one line at the hook)."""

    def decorate(fn):
        @functools.wraps(fn)
        async def wrapper(*args, **kwargs):
            with stage(name):
                return await fn(*args, **kwargs)

        return wrapper

    return decorate


def observe_audit_append(seconds: float) -> None:
    AUDIT_APPEND_SECONDS.observe(seconds)


def observe_audit_commit(entries: int) -> None:
    AUDIT_BATCH.observe(entries)


class MeteredRootKey:
    """Wraps a root-key provider (any of keys.providers') and times every coroutine
    method it has — wrap, unwrap and whatever epochs/HSM add — without keys/ knowing
    about Prometheus. Everything else passes through unchanged."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._provider = type(inner).__name__
        for operation in ("wrap", "unwrap"):  # zero series from the start, so rate() and alerts see them
            ROOT_KEY_ERRORS.labels(self._provider, operation)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name.startswith("_") or not inspect.iscoroutinefunction(value):
            return value
        provider = self._provider

        @functools.wraps(value)
        async def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return await value(*args, **kwargs)
            except Exception:
                ROOT_KEY_ERRORS.labels(provider, name).inc()
                raise
            finally:
                ROOT_KEY_SECONDS.labels(provider, name).observe(time.perf_counter() - started)

        return timed
