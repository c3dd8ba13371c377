"""Operator and scheduled actions on tenant KEKs and the shred ledger, each audited in
the tenant's chain: list versions, rotate, rewrap, destroy an old version, re-shred.

KEK epochs: the periodic job (:func:`rotate_and_expire`) rotates a tenant's KEK once
the current version is ``VAULT_KEK_ROTATION_DAYS`` old, and destroys every version
created more than ``VAULT_BACKUP_WINDOW`` days ago once no DEK uses it (rewrapping
first). The version that wrapped an erased patient's DEK was created before the
erasure, so it is gone by ``completed_at + backup window`` (plus one job period) —
the ``irrecoverable_after`` an erasure receipt states.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from keys.errors import KeyInUse, KeyNotFound
from keys.rotation import KekVersion, Progress
from keys.store import KeyStore
from vault.actor import Actor
from vault.audit.service import AuditEvent, AuditLog
from vault.db import utcnow
from vault.errors import Conflict, NotFound
from vault.patients.index import reindex_patients
from vault.sealed_fields import Resealer
from vault.webhooks.service import LEGACY_KEY_DERIVATIONS
from vault.shredding.service import ShredLedger

log = logging.getLogger("vault.keys")

DESTROYED = "destroyed"
# How often workers/jobs/keys.py runs: epochs are destroyed up to one period before their
# recorded date, so a receipt's date is a promise kept (not one period late).
JOB_PERIOD = timedelta(hours=1)


def scheduler(tenant_id: str, request_id: str) -> Actor:
    """The actor the periodic job's audit entries name."""
    return Actor(tenant_id=tenant_id, token_id="job:keys.rotate", role="system", request_id=request_id)


class KeyOperations:
    def __init__(self, *, keys: KeyStore, audit: AuditLog, ledger: ShredLedger) -> None:
        self.keys = keys
        self.audit = audit
        self.ledger = ledger

    async def versions(self, tenant_id: str, *, actor: Actor) -> list[KekVersion]:
        try:
            versions = await self.keys.kek_versions(tenant_id)
        except KeyNotFound:
            raise NotFound("the tenant has no key hierarchy") from None
        await self.audit.record(AuditEvent.of(actor, "keys.versions"))
        return versions

    async def rotate(self, tenant_id: str, *, actor: Actor, progress: Progress | None = None) -> tuple[int, int]:
        """New KEK version, every DEK rewrapped under it; returns (version, DEKs rewrapped).

        Patients marked for DEK renewal (an object shredded, a field corrected) first get
        a new DEK under the new version, their sealed fields resealed (keys/renewal.py)."""
        seen = _Seen(progress)
        try:
            version = await self.keys.rotate_kek(tenant_id, progress=seen,
                                                 reseal=Resealer(self.ledger.db, self.keys))
        except KeyNotFound:
            raise NotFound("the tenant has no key hierarchy") from None
        # Blind indexes follow the epoch: live patients move to the new index key.
        reindexed = await reindex_patients(self.ledger.db, self.keys, tenant_id)
        await self.audit.record(
            AuditEvent.of(actor, "keys.rotate", kek_version=str(version), rewrapped=str(seen.done),
                          reindexed=str(reindexed))
        )
        return version, seen.done

    async def rewrap(self, tenant_id: str, *, actor: Actor, progress: Progress | None = None) -> int:
        """Finish an interrupted rotation: rewrap DEKs still under older versions."""
        try:
            count = await self.keys.rewrap(tenant_id, progress=progress)
        except KeyNotFound:
            raise NotFound("the tenant has no key hierarchy") from None
        await self.audit.record(AuditEvent.of(actor, "keys.rewrap", rewrapped=str(count)))
        return count

    async def destroy_version(self, tenant_id: str, version: int, *, actor: Actor, now: datetime | None = None,
                              force: bool = False) -> datetime | None:
        """Shred one old KEK version and its root-key version (epoch) in the provider;
        ``Conflict`` while it is current or wraps any DEK, or — without ``force`` — while
        it is younger than its recorded destruction date: a backup made in that epoch is
        restorable only while the epoch lives (the restore horizon, docs/keys.md).
        Returns when the epoch is irrecoverable (KMS: end of the pending window)."""
        now = now or utcnow()
        try:
            versions = {v.version: v for v in await self.keys.kek_versions(tenant_id)}
        except KeyNotFound:
            raise NotFound("the tenant has no key hierarchy") from None
        target = versions.get(version)
        if target is None:
            raise NotFound(f"no KEK version {version} for this tenant")
        # In use or current: the key store refuses it below (and that refusal is audited).
        destroyable = target.state == "retired" and target.dek_count == 0
        early = destroyable and target.destroy_after is not None and now < target.destroy_after - JOB_PERIOD
        if early and not force:
            raise Conflict(
                f"KEK version {version} is younger than the backup window (due {target.destroy_after:%Y-%m-%d %H:%M} UTC): "
                "backups made in its epoch could no longer be restored. Pass --force to destroy it anyway."
            )
        # No live index may still need the epoch's index key (a rotation's re-index cut short).
        await reindex_patients(self.ledger.db, self.keys, tenant_id)
        try:
            irrecoverable = await self.keys.destroy_kek_version(tenant_id, version)
        except KeyInUse as exc:
            await self.audit.record(
                AuditEvent.of(actor, "keys.destroy_kek_version", outcome="key_in_use", kek_version=str(version))
            )
            raise Conflict(
                f"KEK version {version} cannot be destroyed: {exc}. "
                "Rewrap first (vault keys rewrap / vault keys rotate), then try again."
            ) from None
        except KeyNotFound:
            raise NotFound(f"no KEK version {version} for this tenant") from None
        await self.audit.record(AuditEvent.of(actor, "keys.destroy_kek_version", kek_version=str(version),
                                              **({"forced": "true"} if early and force else {})))
        # A tenant from before per-epoch index keys: its long-lived index key goes once no
        # live epoch indexes with it (the webhook secret's key is kept, made from it first).
        await self.keys.retire_legacy_index_key(tenant_id, keep=LEGACY_KEY_DERIVATIONS)
        return irrecoverable

    async def reshred(self, *, request_id: str, settle_seconds: float = 30.0) -> Reshredded:
        """Re-shred a restored key-store backup from the ledger; key rows removed per tenant.

        An operator runs this once, after a restore, and expects the old page images of
        the re-shredded keys to be gone when it returns: unlike an erasure (which must
        answer at once and leaves a busy checkpoint to the ``shred.checkpoint`` job), it
        retries the checkpoint for up to ``settle_seconds`` while readers finish."""
        removed = await self.ledger.reshred()
        for tenant_id, count in removed.items():
            await self.audit.record(AuditEvent.of(Actor.cli(tenant_id, request_id), "keys.reshred", removed=str(count)))
        settled = True
        if sum(removed.values()):
            settled = await _settle_shreds(self.keys, seconds=settle_seconds)
        return Reshredded(by_tenant=dict(removed), settled=settled)


@dataclass(frozen=True)
class Reshredded:
    """What :meth:`KeyOperations.reshred` removed: key rows per tenant id."""

    by_tenant: dict[str, int] = field(default_factory=dict)
    settled: bool = True  # the old page images are gone too (False: the shred.checkpoint job finishes)

    @property
    def total(self) -> int:
        return sum(self.by_tenant.values())


@dataclass(frozen=True)
class KekUpkeep:
    """What one run of :func:`rotate_and_expire` did for a tenant."""

    rotated_to: int | None = None
    rewrapped: int = 0
    destroyed: tuple[int, ...] = ()
    kept: tuple[int, ...] = field(default=())  # old enough, but still wrapping DEKs


async def rotate_and_expire(ops: KeyOperations, tenant_id: str, *, now: datetime, rotate_after: timedelta,
                            backup_window: timedelta, request_id: str = "job") -> KekUpkeep:
    """Rotate the tenant's KEK once its current version is ``rotate_after`` old
    (``VAULT_KEK_ROTATION_DAYS``), then destroy versions older than ``backup_window``
    (``VAULT_BACKUP_WINDOW``, for legacy versions without a recorded date)."""
    actor = scheduler(tenant_id, request_id)
    versions = await ops.keys.kek_versions(tenant_id)
    current = _current(versions)
    rotated_to, rewrapped = None, 0
    if now - current.created_at >= rotate_after:
        rotated_to, rewrapped = await ops.rotate(tenant_id, actor=actor)
    elif any(v.dek_count for v in versions if v.version != current.version):
        rewrapped = await ops.rewrap(tenant_id, actor=actor)  # an interrupted rotation
    versions = await ops.keys.kek_versions(tenant_id)
    current = _current(versions)
    destroyed: list[int] = []
    kept: list[int] = []
    for v in versions:
        # Each epoch's date was fixed when it was created (legacy versions: the window);
        # one job period early, so that the date a receipt signed is kept.
        due = (v.destroy_after or v.created_at + backup_window) - JOB_PERIOD
        if v.state == DESTROYED or v.version == current.version or now < due:
            continue
        try:
            await ops.destroy_version(tenant_id, v.version, actor=actor, now=now)
        except Conflict:
            # A DEK still under it after the rewrap above: a rewrap lost a race with a
            # peer's rotation. The next run tries again; nothing is lost by waiting.
            kept.append(v.version)
            continue
        destroyed.append(v.version)
    return KekUpkeep(rotated_to=rotated_to, rewrapped=rewrapped, destroyed=tuple(destroyed), kept=tuple(kept))


async def finish_epochs(keys: KeyStore, *, now: datetime) -> list[str]:
    """Destroy root-key versions nothing live refers to any more: the legacy key once its
    date has passed, and any epoch whose destruction a crash interrupted."""
    return await keys.finish_root_destructions(at=now + JOB_PERIOD)


def _current(versions: list[KekVersion]) -> KekVersion:
    active = [v for v in versions if v.state == "active"]
    return active[-1] if active else max((v for v in versions if v.state != DESTROYED), key=lambda v: v.version)


class _Seen:
    """Passes progress on and remembers how many DEKs were rewrapped."""

    def __init__(self, inner: Progress | None) -> None:
        self.inner = inner
        self.done = 0

    def __call__(self, done: int, total: int) -> None:
        self.done = done
        if self.inner is not None:
            self.inner(done, total)


async def _settle_shreds(keys: KeyStore, *, seconds: float) -> bool:
    """Retry the key store's checkpoint/VACUUM until it completes or ``seconds`` pass."""
    deadline = asyncio.get_running_loop().time() + seconds
    delay = 0.1
    while not await keys.finish_shreds():
        if not keys.waits_for_readers or asyncio.get_running_loop().time() + delay > deadline:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)
    return True
