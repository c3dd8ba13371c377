"""HTTP handlers for erasure, legal hold, restriction, retention and exports. Role checks
happen in the middleware (vault/permissions.py); tenant and ownership in the services.
Reasons are accepted, sealed and never echoed back. ``setup`` wires the domain into the app."""

from __future__ import annotations

from typing import Annotated, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from vault import idempotent
from vault.appkeys import RUNTIME, SETTINGS
from vault.errors import ValidationFailed
from vault.http.context import actor_of
from vault.http.downloads import send_once
from vault.http.jsonio import json_response, read_json
from vault.http.routing import Endpoints, add_endpoints
from vault.lifecycle.responses import (
    ErasureReceiptOut,
    ExportOut,
    LegalHoldOut,
    MediaDeletedOut,
    RestrictionOut,
    RetentionPolicyOut,
    SweepOut,
    SweepProgressOut,
)
from vault.lifecycle.service import Lifecycle

routes = Endpoints("lifecycle")
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
Id = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]


class ReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Reason = Field(description="stored encrypted; never returned, logged or audited")


class RuleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    clock: Literal["last_treatment", "last_activity", "last_contact"]
    erase_after: Annotated[str, StringConstraints(max_length=32, pattern=r"^P([0-9]{1,4}Y)?([0-9]{1,5}M)?([0-9]{1,6}D)?$")] = Field(
        description="ISO 8601 duration of years, months and days: P7Y, P24M, P3Y6M, P90D")


class PolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rules: list[RuleIn] = Field(max_length=10, description="a patient is due when EVERY rule says so; no rules: nobody")


class SweepIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dry_run: bool = True
    review_id: Id | None = Field(default=None, description="a reviewed dry run: lifts the limits, erases only whom it listed")


def setup(app: web.Application) -> None:
    """Register the lifecycle routes; set :data:`LIFECYCLE` once the runtime is open."""
    add_endpoints(app, routes)

    async def wire(app: web.Application) -> None:
        app[LIFECYCLE] = app[RUNTIME].lifecycle

    app.on_startup.append(wire)  # after every cleanup_ctx has opened (aiohttp runs those first)


def _lifecycle(request: web.Request) -> Lifecycle:
    return request.app[LIFECYCLE]


async def _body(request: web.Request, model: type[SweepIn]) -> SweepIn | None:
    if not request.can_read_body:
        return None
    return await read_json(request, model, limit=request.app[SETTINGS].max_json_bytes)


# -- erasure -----------------------------------------------------------------------------------
@routes.post("/v1/patients/{patient_id}/erasure", summary="Erase a patient by crypto-shredding; returns the signed receipt",
             body=ReasonIn, response=ErasureReceiptOut, errors=(404, 409, 422))
async def erase_patient(request: web.Request) -> web.Response:
    body = await read_json(request, ReasonIn, limit=request.app[SETTINGS].max_json_bytes)
    signed = await _lifecycle(request).erasure.erase(actor_of(request), request.match_info["patient_id"], reason=body.reason)
    return json_response(signed)


@routes.delete("/v1/media/{media_id}", summary="Shred one photo or video (all its renditions); returns the recall list",
               response=MediaDeletedOut, errors=(404, 409, 410))
async def delete_media(request: web.Request) -> web.Response:
    deleted = await _lifecycle(request).erasure.delete_media(actor_of(request), request.match_info["media_id"])
    return json_response(deleted)


# -- legal hold and restriction ------------------------------------------------------------------
@routes.put("/v1/patients/{patient_id}/legal-hold", summary="Place a legal hold (blocks erasure); the reason is sealed",
            body=ReasonIn, response=LegalHoldOut, errors=(404, 409, 410, 422))
async def place_hold(request: web.Request) -> web.Response:
    body = await read_json(request, ReasonIn, limit=request.app[SETTINGS].max_json_bytes)
    hold = await _lifecycle(request).holds.place_hold(actor_of(request), request.match_info["patient_id"], reason=body.reason)
    return json_response(hold)


@routes.delete("/v1/patients/{patient_id}/legal-hold", summary="Lift the legal hold", response=LegalHoldOut, errors=(404, 410))
async def lift_hold(request: web.Request) -> web.Response:
    hold = await _lifecycle(request).holds.lift_hold(actor_of(request), request.match_info["patient_id"])
    return json_response(hold)


@routes.put("/v1/patients/{patient_id}/restriction", summary="Restrict processing: no release, no third-party export",
            response=RestrictionOut, errors=(404, 410))
async def restrict(request: web.Request) -> web.Response:
    state = await _lifecycle(request).holds.restrict(actor_of(request), request.match_info["patient_id"], restricted=True)
    return json_response(state)


@routes.delete("/v1/patients/{patient_id}/restriction", summary="Lift the restriction", response=RestrictionOut, errors=(404, 410))
async def unrestrict(request: web.Request) -> web.Response:
    state = await _lifecycle(request).holds.restrict(actor_of(request), request.match_info["patient_id"], restricted=False)
    return json_response(state)


# -- retention --------------------------------------------------------------------------------------
@routes.get("/v1/retention-policy", summary="The tenant's retention rules", response=RetentionPolicyOut)
async def get_policy(request: web.Request) -> web.Response:
    return json_response(await _lifecycle(request).retention.policy(actor_of(request)))


@routes.put("/v1/retention-policy", summary="Replace the retention rules (real sweeps wait 24 h after a change)",
            body=PolicyIn, response=RetentionPolicyOut, errors=(422,))
async def put_policy(request: web.Request) -> web.Response:
    body = await read_json(request, PolicyIn, limit=request.app[SETTINGS].max_json_bytes)
    rules = [r.model_dump() for r in body.rules]
    return json_response(await _lifecycle(request).retention.set_policy(actor_of(request), rules))


@routes.post("/v1/retention/sweep", summary="Who is due for erasure and why (dry run by default); a real sweep erases them",
             body=SweepIn, body_required=False, response=SweepOut, errors=(404, 409, 422))
async def sweep(request: web.Request) -> web.Response:
    body = await _body(request, SweepIn) or SweepIn()
    if body.dry_run and body.review_id is not None:
        raise ValidationFailed(details={"errors": [{"field": "review_id", "problem": "only_for_a_real_sweep"}]})
    result = await _lifecycle(request).retention.sweep(actor_of(request), dry_run=body.dry_run, review_id=body.review_id)
    return json_response(SweepOut(result))


@routes.get("/v1/retention/sweeps/{sweep_id}", summary="How far a real sweep has got: erasures, then their clean-up jobs",
            response=SweepProgressOut, errors=(404,))
async def sweep_progress(request: web.Request) -> web.Response:
    return json_response(await _lifecycle(request).retention.progress(actor_of(request), request.match_info["sweep_id"]))


# -- exports ----------------------------------------------------------------------------------------
@routes.post("/v1/patients/{patient_id}/exports", summary="Start a subject-access export (a ZIP built by a job)",
             status=202, response=ExportOut, headers=("Idempotency-Key",), errors=(404, 409, 410, 422))
async def request_export(request: web.Request) -> web.Response:
    export = await _lifecycle(request).exports.request(
        actor_of(request), request.match_info["patient_id"],
        idempotency_key=idempotent.header_value(request.headers.get("Idempotency-Key")))
    return json_response(export, status=202, headers={"Location": f"/v1/exports/{export.id}"})


@routes.get("/v1/exports/{export_id}", summary="An export's status and progress", response=ExportOut, errors=(404, 410))
async def export_status(request: web.Request) -> web.Response:
    export = await _lifecycle(request).exports.status(actor_of(request), request.match_info["export_id"])
    return json_response(export)


@routes.get("/v1/exports/{export_id}/download", summary="The export ZIP, once; then it is shredded",
            response_media="application/zip", errors=(404, 409, 410))
async def export_download(request: web.Request) -> web.StreamResponse:
    exports = _lifecycle(request).exports
    # HEAD checks everything but must not spend the one download.
    download = await exports.open_download(actor_of(request), request.match_info["export_id"], claim=request.method != "HEAD")
    return await send_once(request, exports, download, content_type="application/zip")

