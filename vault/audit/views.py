from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from vault.appkeys import AUDIT, DB, KEYS
from vault.audit.checkpoints import Checkpoints
from vault.audit.service import AuditEvent
from vault.http.context import actor_of
from vault.http.jsonio import json_response, parse_query
from vault.http.routing import Endpoints

routes = Endpoints("audit")
Id = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]


class AuditQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Annotated[str, StringConstraints(max_length=64)] | None = None
    target: Id | None = Field(default=None, description="an id the entry names (patient, media, ...)")
    since: datetime | None = None
    until: datetime | None = None
    cursor: int = Field(default=0, ge=0)
    limit: int = Field(default=100, ge=1, le=1000)


@routes.get("/v1/audit", summary="Read the tenant's audit log", query=AuditQuery, errors=(422,))
async def list_audit(request: web.Request) -> web.Response:
    q = parse_query(request, AuditQuery)
    actor = actor_of(request)
    rows = await request.app[AUDIT].entries(
        actor.tenant_id, after_seq=q.cursor, limit=q.limit, action=q.action, target=q.target, since=q.since, until=q.until
    )
    items = [
        {
            "seq": r.seq,
            "at": r.at.isoformat(),
            "actor": r.actor,
            "role": r.role,
            "action": r.action,
            "targets": json.loads(r.targets),
            "outcome": r.outcome,
            "request_id": r.request_id,
            "hash": r.hash,
        }
        for r in rows
    ]
    next_cursor = str(rows[-1].seq) if len(rows) == q.limit else None
    await request.app[AUDIT].record(AuditEvent.of(actor, "audit.read", count=str(len(items))))
    return json_response({"items": items, "next_cursor": next_cursor})


@routes.get("/v1/audit/verify", summary="Verify the tenant's audit hash chain and its signed checkpoints")
async def verify_audit(request: web.Request) -> web.Response:
    actor = actor_of(request)
    checkpoints = Checkpoints(request.app[DB], request.app[AUDIT], request.app[KEYS])
    result = await checkpoints.verify(actor.tenant_id)
    await request.app[AUDIT].record(AuditEvent.of(actor, "audit.verify", outcome="ok" if result.ok else "broken"))
    return json_response(result.as_dict())
