"""The audit log: per-tenant hash chains, written durably before any response.

Changes append their entry inside their own transaction (:meth:`AuditLog.append`).
Reads call :meth:`AuditLog.record`, which waits until the entry is committed; the
writer task groups every entry that arrives while a commit is in flight into the
next commit (group commit, :mod:`vault.audit.groupcommit`), so load raises throughput
instead of skipping entries.

Each entry's hash is ``sha256(prev_hash || "\\n" || canonical JSON of the entry)``;
the head row per tenant holds the newest seq and hash, and its row lock orders
appends on PostgreSQL (SQLite writers are serialised by ``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import false, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from vault.actor import Actor
from vault.audit.groupcommit import GroupCommit
from vault.audit.models import AuditEntry, AuditHead
from vault.audit.writer import BatchWriter, build_rows, open_batch_writer
from vault.db import Database, utcnow
from vault.instruments import observe_audit_append, observe_audit_commit

log = logging.getLogger("vault.audit")


def genesis_hash(tenant_id: str) -> str:
    return hashlib.sha256(f"vault-audit-genesis:{tenant_id}".encode()).hexdigest()


@dataclass(frozen=True, kw_only=True)
class AuditEvent:
    tenant_id: str
    actor: str
    role: str
    action: str
    request_id: str
    outcome: str = "ok"
    targets: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, actor: Actor, action: str, *, outcome: str = "ok", **targets: str | None) -> AuditEvent:
        return cls(
            tenant_id=actor.tenant_id,
            actor=actor.token_id,
            role=actor.role,
            action=action,
            request_id=actor.request_id,
            outcome=outcome,
            targets={k: v for k, v in targets.items() if v is not None},
        )


#: the canonical encoding: what ``json.dumps(..., sort_keys=True, separators=(",", ":"))``
#: gives, without building an encoder per call (the general case of :func:`canonical_targets`)
CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
#: a JSON string literal exactly as that encoder writes one (``ensure_ascii``: C-accelerated)
_string = json.encoder.encode_basestring_ascii


def canonical_targets(targets: dict[str, str]) -> str:
    if all(type(key) is str and type(value) is str for key, value in targets.items()):
        # the encoder's own output for a flat dict of strings, without its generic walk
        return "{" + ",".join(_string(key) + ":" + _string(value) for key, value in sorted(targets.items())) + "}"
    return CANONICAL_JSON.encode(targets)


_ENTRY = ('{"action":%s,"actor":%s,"at":%s,"outcome":%s,"request_id":%s,"role":%s,"seq":%d,"targets":%s,'
          '"tenant_id":%s}')
_last_at: tuple[datetime | None, str] = (None, "")  # a group commit's entries share one timestamp


def canonical(
    *, tenant_id: str, seq: int, at: datetime, actor: str, role: str, action: str, targets: str, outcome: str, request_id: str
) -> bytes:
    """An entry's hashed bytes: the sorted compact JSON of its fields, byte for byte what
    ``json.dumps(sort_keys=True, separators=(",", ":"))`` gives (chains written before
    verify; ``tests/audit``), written key by key in sorted order: every value is a string
    but ``seq``, a plain int, so the generic encoder's walk was most of an entry's cost."""
    global _last_at
    when, iso = _last_at
    if when is not at:
        iso = _string(at.isoformat())
        _last_at = (at, iso)
    return (_ENTRY % (_string(action), _string(actor), iso, _string(outcome), _string(request_id), _string(role),
                      seq, _string(targets), _string(tenant_id))).encode()


def chain_hash(prev_hash: str, body: bytes) -> str:
    return hashlib.sha256(prev_hash.encode() + b"\n" + body).hexdigest()


@dataclass(frozen=True)
class Verification:
    ok: bool
    checked: int
    head_seq: int
    first_bad_seq: int | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "head_seq": self.head_seq,
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
        }


class AuditLog:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._group: GroupCommit[AuditEvent, None] | None = None  # the writer task's, once started
        self._batches: BatchWriter | None = None  # the writer task's own connection
        self.commits = 0  # group commits done, for the metrics endpoint and the benchmark

    # -- writing ---------------------------------------------------------------
    async def append(self, session: AsyncSession, *events: AuditEvent) -> None:
        """Append entries inside the caller's write transaction."""
        by_tenant: dict[str, list[AuditEvent]] = defaultdict(list)
        for event in events:
            by_tenant[event.tenant_id].append(event)
        for tenant_id in sorted(by_tenant):  # fixed lock order: no deadlocks across tenants
            await self._append_tenant(session, tenant_id, by_tenant[tenant_id])

    async def record(self, event: AuditEvent) -> None:
        """Write one entry durably, sharing a commit with concurrent callers."""
        group = self._group
        if group is None:
            async with self.db.transaction() as session:
                await self.append(session, event)
            return
        future = group.submit(event)
        started = time.perf_counter()
        # Not shielded: a caller cancelled meanwhile cancels only its own future; its entry
        # is pending and is written all the same (the writer skips futures already done).
        await future
        observe_audit_append(time.perf_counter() - started)

    async def start(self, *, node_writer: Path | None = None) -> None:
        """``node_writer``: the socket of the node's audit writer process (``vault serve
        --processes N``, vault.audit.node), which then commits this process's batches."""
        if node_writer is not None:
            from vault.audit.node import RemoteBatchWriter

            self._batches = RemoteBatchWriter(node_writer)
        else:
            self._batches = open_batch_writer(self.db)
        self._group = GroupCommit(self._commit)
        self._group.start(name="audit-group-commit")

    async def stop(self) -> None:
        group, self._group = self._group, None  # from here on, record() commits on its own
        if group is not None:
            await group.abort()  # and commits what was pending: never drop an entry on shutdown
        batches, self._batches = self._batches, None
        if batches is not None:
            await batches.close()

    async def _commit(self, events: list[AuditEvent]) -> None:
        """One group commit (:class:`GroupCommit` fails its waiting requests if it raises)."""
        try:
            if self._batches is not None:
                await self._batches.write(events)
            else:
                async with self.db.transaction() as session:
                    await self.append(session, *events)
            self.commits += 1
            if not getattr(self._batches, "remote", False):  # else the node's writer counts its own commits
                observe_audit_commit(len(events))
        except Exception:  # the waiting requests fail; nothing is claimed written
            log.exception("audit group commit failed", extra={"entries": len(events)})
            raise

    async def _append_tenant(self, session: AsyncSession, tenant_id: str, events: list[AuditEvent]) -> None:
        head = (
            await session.execute(select(AuditHead).where(AuditHead.tenant_id == tenant_id).with_for_update())
        ).scalar_one()
        now = utcnow()
        rows, heads = build_rows(events, {tenant_id: (head.seq, head.hash)}, now)
        await session.execute(insert(AuditEntry), rows)
        (head.seq, head.hash), head.updated_at = heads[tenant_id], now

    # -- reading ---------------------------------------------------------------
    async def head(self, tenant_id: str) -> tuple[int, str]:
        async with self.db.session() as session:
            head = await session.get(AuditHead, tenant_id)
            return (head.seq, head.hash) if head else (0, genesis_hash(tenant_id))

    async def verify(self, tenant_id: str, *, batch: int = 2000) -> Verification:
        prev, expected, checked = genesis_hash(tenant_id), 1, 0
        async with self.db.session() as session:
            head = await session.get(AuditHead, tenant_id)
            head_seq = head.seq if head else 0
            while True:
                rows = (
                    await session.execute(
                        select(AuditEntry)
                        .where(AuditEntry.tenant_id == tenant_id, AuditEntry.seq > expected - 1)
                        .order_by(AuditEntry.seq)
                        .limit(batch)
                    )
                ).scalars().all()
                if not rows:
                    break
                for row in rows:
                    problem = _check(row, expected, prev)
                    if problem:
                        return Verification(False, checked, head_seq, row.seq if row.seq == expected else expected, problem)
                    prev, expected, checked = row.hash, expected + 1, checked + 1
            if head is not None and (head.seq != checked or head.hash != prev):
                return Verification(False, checked, head_seq, checked + 1, "the chain ends before its recorded head")
        return Verification(True, checked, head_seq)

    async def entries(
        self,
        tenant_id: str,
        *,
        after_seq: int = 0,
        limit: int = 100,
        action: str | None = None,
        target: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        actors: Collection[str] | None = None,
    ) -> list[AuditEntry]:
        """``actors``: only these actor ids (None: anyone; empty: no one)."""
        query = select(AuditEntry).where(AuditEntry.tenant_id == tenant_id, AuditEntry.seq > after_seq)
        if actors is not None:
            query = query.where(AuditEntry.actor.in_(sorted(actors)) if actors else false())
        if action:
            query = query.where(AuditEntry.action == action)
        if target:
            query = query.where(AuditEntry.targets.contains(json.dumps(target)))
        if since:
            query = query.where(AuditEntry.at >= since)
        if until:
            query = query.where(AuditEntry.at < until)
        async with self.db.session() as session:
            return list((await session.execute(query.order_by(AuditEntry.seq).limit(limit))).scalars())


def _check(row: AuditEntry, expected_seq: int, prev: str) -> str | None:
    if row.seq != expected_seq:
        return f"entry {expected_seq} is missing"
    if row.prev_hash != prev:
        return "the entry does not link to its predecessor"
    body = canonical(
        tenant_id=row.tenant_id,
        seq=row.seq,
        at=row.at,
        actor=row.actor,
        role=row.role,
        action=row.action,
        targets=row.targets,
        outcome=row.outcome,
        request_id=row.request_id,
    )
    if chain_hash(prev, body) != row.hash:
        return "the entry was altered"
    return None
