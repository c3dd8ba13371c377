"""What a tenant's staff read of their own audit log: entries (a filtered page) and the
chain's verification with its signed checkpoints. Each read is itself audited."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from vault.actor import Actor
from vault.audit.checkpoints import CheckedChain, Checkpoints
from vault.audit.service import AuditEvent, AuditLog


@dataclass(frozen=True)
class EntryView:
    seq: int
    at: datetime
    actor: str
    role: str
    action: str
    targets: dict[str, Any]
    outcome: str
    request_id: str
    hash: str
    actor_label: str | None = None  # the acting token's label


@dataclass(frozen=True)
class EntryPage:
    items: list[EntryView]
    next_cursor: str | None


class AuditReads:
    def __init__(self, audit: AuditLog, checkpoints: Checkpoints,
                 labels: Callable[[str, set[str]], Awaitable[dict[str, str]]] | None = None) -> None:
        self.audit = audit
        self.checkpoints = checkpoints
        self.labels = labels  # (tenant, token ids) -> labels: the chain keeps ids, readers see labels

    async def entries(self, actor: Actor, *, after_seq: int, limit: int, action: str | None = None,
                      target: str | None = None, since: datetime | None = None,
                      until: datetime | None = None, actors: Collection[str] | None = None) -> EntryPage:
        """``actors`` narrows the page to these actor ids in the query itself (a staff
        filter applied per page would leave pages short or empty)."""
        rows = await self.audit.entries(actor.tenant_id, after_seq=after_seq, limit=limit, action=action, target=target,
                                        since=since, until=until, actors=actors)
        names = await self.labels(actor.tenant_id, {r.actor for r in rows}) if self.labels else {}
        items = [EntryView(seq=r.seq, at=r.at, actor=r.actor, role=r.role, action=r.action,
                           targets=json.loads(r.targets), outcome=r.outcome, request_id=r.request_id, hash=r.hash,
                           actor_label=names.get(r.actor))
                 for r in rows]
        await self.audit.record(AuditEvent.of(actor, "audit.read", count=str(len(items))))
        return EntryPage(items=items, next_cursor=str(rows[-1].seq) if len(rows) == limit else None)

    async def verify(self, actor: Actor) -> CheckedChain:
        result = await self.checkpoints.verify(actor.tenant_id)
        await self.audit.record(AuditEvent.of(actor, "audit.verify", outcome="ok" if result.ok else "broken"))
        return result
