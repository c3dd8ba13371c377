"""HTTP layer of the audit domain: its routes, its typed key and its ``setup(app)``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from vault.appkeys import RUNTIME
from vault.audit.checkpoints import CheckedChain
from vault.audit.reads import AuditReads, EntryView
from vault.http.context import actor_of
from vault.http.jsonio import json_response, parse_query
from vault.http.routing import Endpoints, add_endpoints

routes = Endpoints("audit")
AUDIT_READS = web.AppKey("audit_reads", AuditReads)
Id = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]


def setup(app: web.Application) -> None:
    add_endpoints(app, routes)
    app.on_startup.append(_bind)


async def _bind(app: web.Application) -> None:
    app[AUDIT_READS] = app[RUNTIME].audit_reads


class AuditQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Annotated[str, StringConstraints(max_length=64)] | None = None
    target: Id | None = Field(default=None, description="an id the entry names (patient, media, ...)")
    since: datetime | None = None
    until: datetime | None = None
    cursor: int = Field(default=0, ge=0)
    limit: int = Field(default=100, ge=1, le=1000)


class AuditEntryOut(BaseModel):
    seq: int
    at: str
    actor: str
    actor_label: str | None = Field(default=None, description="the label of the token that acted (the system "
                                                              "or person it was issued to); null for the command line")
    role: str
    action: str
    targets: dict[str, Any]
    outcome: str
    request_id: str
    hash: str

    @classmethod
    def of(cls, e: EntryView) -> AuditEntryOut:
        return cls(seq=e.seq, at=e.at.isoformat(), actor=e.actor, actor_label=e.actor_label, role=e.role,
                   action=e.action, targets=e.targets, outcome=e.outcome, request_id=e.request_id, hash=e.hash)


class AuditPage(BaseModel):
    items: list[AuditEntryOut]
    next_cursor: str | None


class CheckpointsChecked(BaseModel):
    checked: int
    newest_seq: int | None


class AuditVerificationOut(BaseModel):
    ok: bool
    checked: int
    head_seq: int
    first_bad_seq: int | None
    reason: str | None
    checkpoints: CheckpointsChecked

    @classmethod
    def of(cls, r: CheckedChain) -> AuditVerificationOut:
        return cls(ok=r.ok, checked=r.checked, head_seq=r.chain.head_seq, first_bad_seq=r.first_bad_seq, reason=r.reason,
                   checkpoints=CheckpointsChecked(checked=r.checkpoints, newest_seq=r.newest_checkpoint_seq))


@routes.get("/v1/audit", summary="Read the tenant's audit log", query=AuditQuery, response=AuditPage, errors=(422,))
async def list_audit(request: web.Request) -> web.Response:
    q = parse_query(request, AuditQuery)
    page = await request.app[AUDIT_READS].entries(actor_of(request), after_seq=q.cursor, limit=q.limit, action=q.action,
                                                  target=q.target, since=q.since, until=q.until)
    return json_response(AuditPage(items=[AuditEntryOut.of(e) for e in page.items], next_cursor=page.next_cursor))


@routes.get("/v1/audit/verify", summary="Verify the tenant's audit hash chain and its signed checkpoints",
            response=AuditVerificationOut)
async def verify_audit(request: web.Request) -> web.Response:
    return json_response(AuditVerificationOut.of(await request.app[AUDIT_READS].verify(actor_of(request))))
