"""Signed checkpoints of each tenant's audit chain.

The hash chain alone detects an edited entry, but not someone with write access to
the database who truncates the log (and moves the head back) or recomputes every
hash after an edit: the result is a valid chain. A checkpoint signs the head
``(seq, hash)`` with the service's Ed25519 key, which lives wrapped by the root key
in the key store, so it cannot be forged from the metadata database. Verification
(:meth:`Checkpoints.verify`) then also requires that

- every checkpoint's signature is valid for the current service key,
- the chain entry at each checkpoint's ``seq`` has exactly the signed hash
  (a recomputed chain differs from the first edited entry on), and
- the chain reaches at least the newest checkpoint's ``seq`` (truncation).

The signed document is ``{"type": "audit_checkpoint", "version": 1, "tenant_id",
"seq", "hash", "signed_at", "key_fingerprint"}`` in canonical JSON
(:mod:`keys.signing`), so checkpoints exported elsewhere verify offline too.

Limit: whoever can delete rows can delete checkpoints with the log. Keep copies
outside the database (``vault audit checkpoint --json`` prints them) where that
matters. Taking a checkpoint is not itself audited: an entry for it would move
the head it has just signed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from collections.abc import Iterable
from typing import Any

from sqlalchemy import and_, select

from keys.signing import key_fingerprint, sign_document, verify_document
from keys.store import KeyStore
from vault.audit.models import AuditCheckpoint, AuditEntry
from vault.audit.service import AuditLog, Verification
from vault.db import Database, utcnow
from vault.errors import VaultError

log = logging.getLogger("vault.audit")

CHECKPOINT_TYPE = "audit_checkpoint"
CHECKPOINT_VERSION = 1


def checkpoint_document(cp: AuditCheckpoint) -> dict[str, Any]:
    """The exact document a checkpoint's signature covers."""
    return {
        "type": CHECKPOINT_TYPE,
        "version": CHECKPOINT_VERSION,
        "tenant_id": cp.tenant_id,
        "seq": int(cp.seq),
        "hash": cp.hash,
        "signed_at": cp.signed_at.isoformat(),
        "key_fingerprint": cp.key_fingerprint,
    }


@dataclass(frozen=True)
class CheckedChain:
    """The hash chain's verification plus the checkpoints' verdict."""

    chain: Verification
    checkpoints: int
    newest_checkpoint_seq: int | None
    problem: str | None = None
    bad_seq: int | None = None

    @property
    def ok(self) -> bool:
        return self.chain.ok and self.problem is None

    @property
    def checked(self) -> int:
        return self.chain.checked

    @property
    def first_bad_seq(self) -> int | None:
        return self.chain.first_bad_seq if not self.chain.ok else self.bad_seq

    @property
    def reason(self) -> str | None:
        return self.chain.reason if not self.chain.ok else self.problem

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.chain.as_dict(),
            "ok": self.ok,
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
            "checkpoints": {"checked": self.checkpoints, "newest_seq": self.newest_checkpoint_seq},
        }


class Checkpoints:
    def __init__(self, db: Database, audit: AuditLog, keys: KeyStore) -> None:
        self.db = db
        self.audit = audit
        self.keys = keys

    async def checkpoint(self, tenant_id: str) -> AuditCheckpoint | None:
        """Sign and store the tenant's current head; None for an empty chain.

        Idempotent: when the head is already checkpointed, that checkpoint is returned.
        """
        return (await self._checkpoint(tenant_id))[0]

    async def _checkpoint(self, tenant_id: str) -> tuple[AuditCheckpoint | None, bool]:
        seq, head_hash = await self.audit.head(tenant_id)
        if seq == 0:
            return None, False
        async with self.db.session() as s:
            existing = await s.get(AuditCheckpoint, (tenant_id, seq))
        if existing is not None:
            return existing, False
        private = await self.keys.signing_key()
        cp = AuditCheckpoint(
            tenant_id=tenant_id,
            seq=seq,
            hash=head_hash,
            signed_at=utcnow().replace(microsecond=0),
            key_fingerprint=key_fingerprint(await self.keys.public_key_pem()),
            signature="",
        )
        cp.signature = sign_document(checkpoint_document(cp), private_key=private)["signature"]
        async with self.db.transaction() as s:
            theirs = await s.get(AuditCheckpoint, (tenant_id, seq))  # a peer may have just signed it
            if theirs is not None:
                return theirs, False
            s.add(cp)
        return cp, True

    async def for_tenant(self, tenant_id: str) -> list[AuditCheckpoint]:
        async with self.db.session() as s:
            query = select(AuditCheckpoint).where(AuditCheckpoint.tenant_id == tenant_id).order_by(AuditCheckpoint.seq)
            return list((await s.execute(query)).scalars())

    async def verify(self, tenant_id: str) -> CheckedChain:
        """The chain's own verification, then every checkpoint against it."""
        chain = await self.audit.verify(tenant_id)
        async with self.db.session() as s:
            rows = (await s.execute(
                select(AuditCheckpoint, AuditEntry.hash)
                .outerjoin(AuditEntry, and_(AuditEntry.tenant_id == AuditCheckpoint.tenant_id,
                                            AuditEntry.seq == AuditCheckpoint.seq))
                .where(AuditCheckpoint.tenant_id == tenant_id)
                .order_by(AuditCheckpoint.seq)
            )).all()
        newest = int(rows[-1][0].seq) if rows else None
        result = lambda problem=None, bad=None: CheckedChain(chain, len(rows), newest, problem, bad)  # noqa: E731
        # The chain verified up to `reach`; when it is broken its own reason stands.
        reach = chain.checked
        pem = await self.keys.public_key_pem() if rows else ""
        fingerprint = key_fingerprint(pem) if rows else ""
        for cp, _ in rows:
            if cp.key_fingerprint != fingerprint:
                return result(f"checkpoint {cp.seq} was signed by an unknown key", cp.seq)
            if not verify_document(checkpoint_document(cp), cp.signature, pem):
                return result(f"checkpoint {cp.seq} has an invalid signature", cp.seq)
        for cp, entry_hash in rows:
            if cp.seq > reach:
                return result(f"the chain ends at entry {reach}, before signed checkpoint {cp.seq}", reach + 1)
            if entry_hash != cp.hash:
                return result(f"entry {cp.seq} differs from its signed checkpoint", cp.seq)
        return result()


async def checkpoint_all(checkpoints: Checkpoints, tenant_ids: Iterable[str]) -> int:
    """Checkpoint each tenant's chain head (the periodic job); return how many were new."""
    made, failed = 0, 0
    for tenant_id in tenant_ids:
        try:
            _, created = await checkpoints._checkpoint(tenant_id)
        except Exception:
            # One tenant's failure must not stop the others' checkpoints.
            log.exception("audit checkpoint failed", extra={"tenant_id": tenant_id})
            failed += 1
            continue
        made += created
    if failed:
        raise VaultError(f"{failed} tenant checkpoint(s) failed; see the log")
    return made
