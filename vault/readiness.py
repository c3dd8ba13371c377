"""Readiness: would a request to this node succeed right now?

``/readyz`` answers 503 naming the failing check when the metadata database, the key
store (its schema, and whether the configured root key opens it) or the blob store
(a write-and-read canary) fails, or the schema is older than this code needs — a
newer one is fine, so a rolling upgrade that migrated first keeps old nodes in. A
missing worker heartbeat is reported as *degraded*: jobs wait, requests still work,
so it never takes a node (or every node at once) out of the load balancer.
``vault doctor`` runs the same checks for an operator.

Each check is bounded in time and answers with a code, never an exception message
(``/readyz`` is unauthenticated). One run is shared by concurrent callers and kept
for a moment, so a load balancer polling every node costs little.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from keys.errors import IntegrityError, ProviderError, RootKeyMissing
from keys.store import KeyStore
from keys.versions import CURRENT, NEWER
from vault.db import Database
from vault.db.versions import metadata_status
from vault.jobs.heartbeat import live_workers

log = logging.getLogger("vault.readiness")

OK, FAILED, DEGRADED = "ok", "failed", "degraded"
CANARY_PREFIX = "readyz-"  # canary blobs: never a media key (those are plain hex)


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | failed | degraded
    code: str  # a short machine-readable reason, "ok" when fine

    @property
    def failed(self) -> bool:
        return self.status == FAILED


@dataclass(frozen=True)
class Report:
    checks: tuple[Check, ...]

    @property
    def ready(self) -> bool:
        return not any(check.failed for check in self.checks)

    @property
    def status(self) -> str:
        if not self.ready:
            return "unavailable"
        return DEGRADED if any(check.status == DEGRADED for check in self.checks) else OK


class Readiness:
    def __init__(
        self, *, db: Database, keys: KeyStore, store, timeout: float = 5.0, keep_for: float = 1.0,
    ) -> None:
        self.db, self.keys, self.store = db, keys, store
        self.timeout, self.keep_for = timeout, keep_for
        self._last: tuple[float, Report] | None = None
        self._running: asyncio.Task[Report] | None = None
        self._seen: dict[str, str] = {}

    async def report(self, *, fresh: bool = False) -> Report:
        now = time.monotonic()
        if not fresh and self._last is not None and now - self._last[0] < self.keep_for:
            return self._last[1]
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._run())
        # shield: one caller giving up must not cancel the run the others wait for
        report = await asyncio.shield(self._running)
        self._last = (time.monotonic(), report)
        if not fresh:  # the serving node's view; an operator's `vault doctor` prints its own
            self._log_changes(report)
        return report

    async def _run(self) -> Report:
        checks = await asyncio.gather(
            self._bounded("database", self._database),
            self._bounded("schema", self._schema),
            self._bounded("keystore", self._keystore),
            self._bounded("storage", self._storage),
            self._bounded("workers", self._workers),
        )
        return Report(tuple(checks))

    async def _bounded(self, name: str, check: Callable[[], Awaitable[tuple[str, str]]]) -> Check:
        try:
            async with asyncio.timeout(self.timeout):
                status, code = await check()
        except TimeoutError:
            status, code = FAILED, "timeout"
        except Exception as exc:  # noqa: BLE001 - every failure is a named check, never a 500
            status, code = FAILED, _code(name, exc)
            log.debug("readiness check failed", extra={"check": name, "error": type(exc).__name__})
        return Check(name, status, code)

    async def _database(self) -> tuple[str, str]:
        await self.db.ping()
        return OK, "ok"

    async def _schema(self) -> tuple[str, str]:
        async with self.db.read_engine.connect() as conn:
            metadata = await conn.run_sync(metadata_status)
        keystore = await self.keys.schema_status()
        for part, state in (("metadata", metadata), ("keystore", keystore)):
            if state not in (CURRENT, NEWER):
                return FAILED, f"{part}_schema_{state}"  # older or absent: run `vault migrate`
        return OK, "ok"

    async def _keystore(self) -> tuple[str, str]:
        await self.keys.check_root_key()
        return OK, "ok"

    async def _storage(self) -> tuple[str, str]:
        key = CANARY_PREFIX + secrets.token_hex(8)
        payload = secrets.token_bytes(64)

        async def body():
            yield payload

        try:
            await self.store.put(key, body(), size_hint=len(payload))
            if await self.store.read(key) != payload:
                return FAILED, "storage_mismatch"
        finally:
            await self.store.delete(key)
        return OK, "ok"

    async def _workers(self) -> tuple[str, str]:
        if await live_workers(self.db) == 0:
            return DEGRADED, "no_worker_heartbeat"
        return OK, "ok"

    def _log_changes(self, report: Report) -> None:
        for check in report.checks:
            before = self._seen.get(check.name, "ok")
            if check.code != before:
                if check.status == OK:
                    log.info("readiness check recovered", extra={"check": check.name, "was": before})
                else:
                    log.warning("readiness check %s", check.status, extra={"check": check.name, "code": check.code})
            self._seen[check.name] = check.code


# What an operator should do about each code (printed by `vault doctor` and `vault serve`).
HINTS = {
    "wrong_root_key": "the configured root key (VAULT_ROOT_KEY_URL) does not open the key store",
    "root_key_missing": "the key store holds keys but the root key (VAULT_ROOT_KEY_URL) is missing; restore it",
    "metadata_schema_older": "the metadata database is older than this version: run `vault migrate`",
    "metadata_schema_absent": "the metadata database is not migrated: run `vault migrate`",
    "keystore_schema_older": "the key store is older than this version: run `vault migrate`",
    "keystore_schema_absent": "the key store is not migrated: run `vault migrate`",
    "storage_mismatch": "the blob store (VAULT_STORAGE_URL) returned other bytes than were written",
    "no_worker_heartbeat": "no worker heartbeat: start `vault worker` (exports, erasure clean-up, key rotation wait)",
    "root_key_unreachable": "the root key provider (VAULT_ROOT_KEY_URL: KMS, HSM) did not answer or refused the call",
    "timeout": "no answer in time",
    "database_failed": "the metadata database (VAULT_DATABASE_URL) does not answer",
    "schema_failed": "the schema versions could not be read (VAULT_DATABASE_URL, VAULT_KEYSTORE_URL)",
    "keystore_failed": "the key store or its root key provider failed (VAULT_KEYSTORE_URL, VAULT_ROOT_KEY_URL)",
    "storage_failed": "the blob store (VAULT_STORAGE_URL) failed a write-and-read canary (permissions, space, reachability)",
    "workers_failed": "worker heartbeats could not be read",
}


def _code(name: str, exc: BaseException) -> str:
    if isinstance(exc, RootKeyMissing):
        return "root_key_missing"
    if isinstance(exc, ProviderError):
        return "root_key_unreachable"  # KMS / HSM did not answer (or refused our credentials)
    if isinstance(exc, IntegrityError):
        return "wrong_root_key"  # the configured root key does not open this key store
    return f"{name}_failed"  # the exception's text may name paths or hosts: the log has the type
