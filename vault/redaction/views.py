"""HTTP handlers for the release policy and the redaction review. Role checks happen in
the middleware (vault/permissions.py); tenant, ownership and state in the service."""

from __future__ import annotations

from typing import Annotated, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from vault.appkeys import RUNTIME, SETTINGS
from vault.http.context import actor_of
from vault.http.downloads import write_pieces
from vault.http.jsonio import json_response, parse_query, read_json
from vault.http.routing import Endpoints, add_endpoints
from vault.redaction.responses import ApprovalView, PolicyView, RedactionView, ReviewPage
from vault.redaction.service import RedactionService

routes = Endpoints("redaction")
REDACTIONS = web.AppKey("redactions", RedactionService)
Id = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
Digest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Coordinate = Annotated[int, Field(ge=0, le=1_000_000)]


def setup(app: web.Application) -> None:
    """Register the routes; set :data:`REDACTIONS` once the runtime is open."""
    add_endpoints(app, routes)

    async def wire(app: web.Application) -> None:
        app[REDACTIONS] = app[RUNTIME].redactions

    app.on_startup.append(wire)


class PolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    deidentified: Literal["review", "auto"] = Field(
        description="review (default): a person approves the redaction of every photo before its de-identified "
                    "release; auto: the detector's boxes go out unreviewed (see docs/consent.md for its measured miss rate)")


class ReviewsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state: Literal["pending", "approved"] = "pending"
    cursor: Id | None = None
    limit: int = Field(default=50, ge=1, le=200)


class RedactionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    boxes: list[Annotated[list[Coordinate], Field(min_length=4, max_length=4)]] | None = Field(
        default=None, max_length=500, description="[[x, y, w, h], ...] in displayed pixels of the original; filled as drawn")
    identifiable: bool | None = Field(
        default=None, description="true: identifiable, cannot be de-identified (blocks de-identified release); "
                                  "false: clear that mark (dpo only)")

    @model_validator(mode="after")
    def _something(self) -> RedactionIn:
        if self.boxes is None and self.identifiable is None:
            raise ValueError("give boxes, identifiable, or both")
        return self


class ApproveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    digest: Digest = Field(description="the digest of the redaction the reviewer saw (GET .../redaction)")


class PreviewQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    digest: Digest | None = None


def _absolute(request: web.Request, view: RedactionView) -> RedactionView:
    base = (request.app[SETTINGS].public_url or "").rstrip("/")
    return view.model_copy(update={"preview_url": base + view.preview_url})


@routes.get("/v1/release-policy", summary="The tenant's release policy for de-identified releases", response=PolicyView)
async def get_policy(request: web.Request) -> web.Response:
    return json_response(await request.app[REDACTIONS].policy(actor_of(request)))


@routes.put("/v1/release-policy", summary="Set the release policy: review (default) or auto", body=PolicyIn,
            response=PolicyView, errors=(422,))
async def put_policy(request: web.Request) -> web.Response:
    body = await read_json(request, PolicyIn, limit=request.app[SETTINGS].max_json_bytes)
    return json_response(await request.app[REDACTIONS].set_policy(actor_of(request), body.deidentified))


@routes.get("/v1/redaction-reviews", summary="Photos whose redaction awaits (or has) a person's approval", query=ReviewsQuery,
            response=ReviewPage, errors=(422,))
async def list_reviews(request: web.Request) -> web.Response:
    q = parse_query(request, ReviewsQuery)
    return json_response(await request.app[REDACTIONS].reviews(actor_of(request), state=q.state, cursor=q.cursor, limit=q.limit))


@routes.get("/v1/media/{media_id}/redaction", summary="The redaction as it would be released: boxes, digest, full-resolution preview",
            response=RedactionView, errors=(404, 409, 410, 422))
async def get_redaction(request: web.Request) -> web.Response:
    view = await request.app[REDACTIONS].view(actor_of(request), request.match_info["media_id"])
    return json_response(_absolute(request, view))


@routes.put("/v1/media/{media_id}/redaction", summary="Replace the boxes, or mark the photo identifiable; voids the approval",
            body=RedactionIn, response=RedactionView, errors=(403, 404, 409, 410, 422))
async def put_redaction(request: web.Request) -> web.Response:
    body = await read_json(request, RedactionIn, limit=request.app[SETTINGS].max_json_bytes)
    view = await request.app[REDACTIONS].update(actor_of(request), request.match_info["media_id"],
                                                boxes=[list(b) for b in body.boxes] if body.boxes is not None else None,
                                                identifiable=body.identifiable)
    return json_response(_absolute(request, view))


@routes.post("/v1/media/{media_id}/redaction/approve", summary="Approve the redaction the reviewer saw (409 when it changed)",
             body=ApproveIn, status=201, response=ApprovalView, errors=(404, 409, 410, 422))
async def approve_redaction(request: web.Request) -> web.Response:
    body = await read_json(request, ApproveIn, limit=request.app[SETTINGS].max_json_bytes)
    approval = await request.app[REDACTIONS].approve(actor_of(request), request.match_info["media_id"], digest=body.digest)
    return json_response(approval, status=201, headers={"Location": f"/v1/media/{request.match_info['media_id']}/redaction"})


@routes.get("/v1/media/{media_id}/redaction/preview", summary="The full-resolution redacted JPEG exactly as a release carries it",
            query=PreviewQuery, response_media="image/jpeg", errors=(404, 409, 410, 422))
async def preview_redaction(request: web.Request) -> web.StreamResponse:
    q = parse_query(request, PreviewQuery)
    service = request.app[REDACTIONS]
    done = await service.preview(actor_of(request), request.match_info["media_id"], digest=q.digest)
    pieces = await service.stream(done) if request.method != "HEAD" else None
    response = web.StreamResponse()
    response.content_type = "image/jpeg"
    response.content_length = done.full.plain_size
    response.headers["Cache-Control"] = "private, no-store"
    response.headers["X-Redaction-Digest"] = done.digest
    return await write_pieces(request, response, pieces)
