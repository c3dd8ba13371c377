"""HTTP handlers for consent records and release paths. Role checks happen in the
middleware (vault/permissions.py); tenant, ownership and the consent gate in the services;
the signed and download URLs are built here. ``setup`` wires the domain into the app."""

from __future__ import annotations

import base64
import binascii
from datetime import date
from typing import Annotated, Literal
from urllib.parse import urlencode

from aiohttp import web
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from vault import idempotent
from vault.appkeys import RUNTIME, SETTINGS
from vault.consent.composites import CompositeReleases
from vault.consent.evidence import EVIDENCE_TYPES, MAX_EVIDENCE_BYTES, sniff
from vault.consent.releases import Filters, Releasable, ReleaseService
from vault.consent.responses import (
    ConsentList,
    ConsentView,
    ReleasableItem,
    ReleasablePage,
    ReleaseMade,
    ReleasePage,
    ReleaseView,
    Withdrawal,
)
from vault.consent.service import ConsentService
from vault.errors import TooLarge, UnsupportedMedia, ValidationFailed
from vault.http.conditional import REVALIDATE, if_none_match, not_modified
from vault.http.context import REQUEST_ID, actor_of
from vault.http.downloads import send_once
from vault.http.jsonio import json_response, parse_query, read_json, whole_number
from vault.http.routing import Endpoints, add_endpoints
from vault.media.upload import CONTENT_TYPES
from vault.signedurls import SignedParams

routes = Endpoints("consent")
CONSENTS = web.AppKey("consents", ConsentService)
RELEASES = web.AppKey("releases", ReleaseService)
COMPOSITES = web.AppKey("composites", CompositeReleases)


def setup(app: web.Application) -> None:
    """Register the consent and release routes; set their keys once the runtime is open."""
    add_endpoints(app, routes)

    async def wire(app: web.Application) -> None:
        app[CONSENTS] = app[RUNTIME].consents
        app[RELEASES] = app[RUNTIME].releases
        app[COMPOSITES] = app[RUNTIME].composites

    app.on_startup.append(wire)  # after every cleanup_ctx has opened (aiohttp runs those first)


def _base(request: web.Request) -> str:
    """Where absolute links point (``VAULT_PUBLIC_URL``); empty: links are relative."""
    return (request.app[SETTINGS].public_url or "").rstrip("/")


def _releasable_item(base: str, item: Releasable) -> ReleasableItem:
    query = urlencode({"purpose": item.purpose, "rendition": item.rendition, **item.thumbnail.query()})
    common = {"purpose": item.purpose, "rendition": item.rendition, "kind": item.kind,
              "thumbnail_url": f"{base}/v1/releasable/{item.item}/thumbnail?{query}",
              "thumbnail_expires_at": item.thumbnail_expires_at.isoformat()}
    if item.deidentified:  # the handle, and nothing that names or groups the photo
        return ReleasableItem(handle=item.item, **common)
    return ReleasableItem(media_id=item.item, phase=item.phase, treatment_id=item.treatment_id, consent_id=item.consent_id,
                          **common)
Id = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
Purpose = Literal["education", "social_media", "marketing", "publication"]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]


class Evidence(BaseModel):
    model_config = ConfigDict(extra="forbid")
    content_type: Literal["application/pdf", "image/jpeg", "image/png"]
    data: str = Field(min_length=1, description="the signed consent form (PDF, JPEG or PNG, at most 8 MiB), base64")


class ConsentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    purposes: list[Purpose] = Field(min_length=1, max_length=4)
    identifiable: bool = Field(description="true: may show the person; false: de-identified use only")
    treatment_id: Id | None = Field(default=None, description="scope: this treatment's media")
    media_ids: list[Id] | None = Field(default=None, min_length=1, max_length=500, description="scope: these media")
    expires_at: AwareDatetime | None = None
    evidence: Evidence | None = None
    notes: Text | None = None


class WithdrawIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    purposes: list[Purpose] | None = Field(default=None, min_length=1, max_length=4, description="default: all of the consent's")
    notes: Text | None = None


Handle = Annotated[str, StringConstraints(pattern=r"^h_[0-9a-f]{32}$")]
Cursor = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{20,200}$")]


class ReleasableQuery(BaseModel):
    """The listing's filters. A de-identified item is filtered only by the tenant's
    treatment-type vocabulary and by year; phase and dates need ``rendition=original``."""

    model_config = ConfigDict(extra="forbid")
    purpose: Purpose | None = Field(default=None, description="default: every purpose")
    cursor: Cursor | None = None
    limit: int = Field(default=50, ge=1, le=200)
    rendition: Literal["original", "deidentified"] | None = Field(
        default=None, description="only identifiable (original) or only de-identified items")
    treatment_type: Id | None = Field(default=None, description="a type of GET /v1/treatment-types")
    year: int | None = Field(default=None, ge=1900, le=2200, description="taken in (received) in this year")
    phase: Literal["before", "after", "progress", "adverse", "other"] | None = Field(
        default=None, description="identifiable items only (rendition=original)")
    taken_from: date | None = Field(default=None, description="identifiable only: taken in on or after this day (UTC)")
    taken_to: date | None = Field(default=None, description="identifiable only: taken in on or before this day (UTC)")

    @model_validator(mode="after")
    def _identifiable_only(self) -> ReleasableQuery:
        if self.rendition != "original" and any(v is not None for v in self._identifiable_filters()):
            raise ValueError("phase, dates and treatment filter identifiable items only: add rendition=original")
        return self

    def _identifiable_filters(self) -> tuple[object, ...]:
        return self.phase, self.taken_from, self.taken_to

    def filters(self) -> Filters:
        return Filters(rendition=self.rendition, treatment_type=self.treatment_type, year=self.year, phase=self.phase,
                       taken_from=self.taken_from, taken_to=self.taken_to)


_IDENTIFIABLE_ONLY = ("phase", "taken_from", "taken_to", "treatment")


class ReleasableSearch(ReleasableQuery):
    """The GET's filters in a body, with the treatment's name (never in a URL). The schema
    says what ``_identifiable_only`` checks: those filters only with ``rendition: original``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": [
        {"required": ["rendition"], "properties": {"rendition": {"const": "original"}}},
        {"properties": {name: {"type": "null"} for name in _IDENTIFIABLE_ONLY}},
    ]})

    treatment: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)] | None = Field(
        default=None, description="identifiable items only: a part of the treatment's name")

    def _identifiable_filters(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in _IDENTIFIABLE_ONLY)

    _whole_numbers = field_validator("limit", "year", mode="before")(whole_number)

    def filters(self) -> Filters:
        return Filters(rendition=self.rendition, treatment_type=self.treatment_type, year=self.year, phase=self.phase,
                       taken_from=self.taken_from, taken_to=self.taken_to, treatment=self.treatment)


class SignedThumbnailQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    purpose: Purpose
    rendition: Literal["original", "deidentified"]
    # a token's id, or "staff:" and a staff account's id for a link a web session asked for
    token: Annotated[str, StringConstraints(pattern=r"^(staff:)?[0-9a-f]{32}$")]
    expires: int = Field(ge=0, le=2**40)
    signature: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class ReleaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    purpose: Purpose
    recipient: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)] = Field(
        description="who receives it, or the channel"
    )


class CompositeIn(ReleaseIn):
    before: Id = Field(description="the before photo's media id (identifiable, releasable for the purpose)")
    after: Id = Field(description="the after photo's media id, of the same patient")


class CompositeMade(BaseModel):
    id: str
    before: str
    after: str
    purpose: str
    rendition: Literal["original"]
    download_url: str
    expires_at: str


class ReleasesQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    media_id: Id | None = Field(default=None, description="releases of this media (marketing: its identifiable releases only)")
    handle: Handle | None = Field(default=None, description="the de-identified releases of this handle")
    patient_id: Id | None = None
    state: Literal["recalled", "taken_down"] | None = Field(
        default=None, description="recalled: open recalls (not yet taken down); taken_down: recorded as removed")
    cursor: Id | None = None
    limit: int = Field(default=50, ge=1, le=200)


def _evidence(evidence: Evidence) -> tuple[bytes, str]:
    try:
        data = base64.b64decode(evidence.data, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationFailed(details={"errors": [{"field": "evidence.data", "problem": "base64"}]}) from None
    if not data or len(data) > MAX_EVIDENCE_BYTES:
        raise TooLarge("evidence is at most 8 MiB", details={"limit": MAX_EVIDENCE_BYTES})
    sniffed = sniff(data)
    if sniffed != evidence.content_type:
        raise UnsupportedMedia("the evidence is not the PDF, JPEG or PNG it claims to be", details={"accepted": sorted(set(EVIDENCE_TYPES.values()))})
    return data, sniffed


# -- consents ------------------------------------------------------------------------------
@routes.post("/v1/patients/{patient_id}/consents", summary="Record a consent (append-only); evidence as base64",
             body=ConsentIn, status=201, response=ConsentView, headers=("Idempotency-Key",),
             errors=(400, 404, 409, 410, 413, 415, 422))
async def record_consent(request: web.Request) -> web.Response:
    limit = request.app[SETTINGS].max_json_bytes + (MAX_EVIDENCE_BYTES * 4) // 3 + 4
    body = await read_json(request, ConsentIn, limit=limit)
    view = await request.app[CONSENTS].record(
        actor_of(request), request.match_info["patient_id"], purposes=list(body.purposes), identifiable=body.identifiable,
        treatment_id=body.treatment_id, media_ids=body.media_ids, expires_at=body.expires_at,
        evidence=_evidence(body.evidence) if body.evidence else None, notes=body.notes,
        idempotency_key=idempotent.header_value(request.headers.get("Idempotency-Key")),
    )
    return json_response(view, status=201, headers={"Location": f"/v1/patients/{view.patient_id}/consents"})


@routes.get("/v1/patients/{patient_id}/consents", summary="A patient's consent history, oldest first", response=ConsentList,
             errors=(404, 410))
async def list_consents(request: web.Request) -> web.Response:
    items = await request.app[CONSENTS].history(actor_of(request), request.match_info["patient_id"])
    return json_response(ConsentList(items=items))


@routes.get("/v1/consents/{consent_id}/evidence", summary="The signed consent form", response_media=tuple(sorted(set(EVIDENCE_TYPES.values()))),
            errors=(404, 410))
async def consent_evidence(request: web.Request) -> web.Response:
    data, mime = await request.app[CONSENTS].evidence(actor_of(request), request.match_info["consent_id"])
    response = web.Response(body=data, content_type=mime)
    response.headers["Cache-Control"] = "private, no-store"
    response.headers["Content-Disposition"] = "attachment"
    return response


@routes.post("/v1/consents/{consent_id}/withdraw", summary="Withdraw a consent (all or some purposes); returns the recall list",
             body=WithdrawIn, body_required=False, status=201, response=Withdrawal, errors=(400, 404, 409, 410, 422))
async def withdraw_consent(request: web.Request) -> web.Response:
    if request.can_read_body:
        body = await read_json(request, WithdrawIn, limit=request.app[SETTINGS].max_json_bytes)
    else:
        body = WithdrawIn()
    result = await request.app[CONSENTS].withdraw(actor_of(request), request.match_info["consent_id"],
                                                  purposes=list(body.purposes) if body.purposes else None, notes=body.notes)
    return json_response(result, status=201, headers={"Location": f"/v1/patients/{result.withdrawal.patient_id}/consents"})


# -- release paths --------------------------------------------------------------------------
@routes.get("/v1/releasable", summary="What the consent gate allows now, with signed thumbnail URLs", query=ReleasableQuery,
            response=ReleasablePage, errors=(422,))
async def list_releasable(request: web.Request) -> web.Response:
    return await _releasable_page(request, parse_query(request, ReleasableQuery))


@routes.post("/v1/releasable/search", summary="The releasable listing with its filters in the body (a treatment's name "
             "never goes into a URL)", body=ReleasableSearch, response=ReleasablePage, errors=(404, 422))
async def search_releasable(request: web.Request) -> web.Response:
    return await _releasable_page(request, await read_json(request, ReleasableSearch, limit=request.app[SETTINGS].max_json_bytes))


async def _releasable_page(request: web.Request, q: ReleasableQuery) -> web.Response:
    items, next_cursor = await request.app[RELEASES].releasable(actor_of(request), purpose=q.purpose, cursor=q.cursor,
                                                                limit=q.limit, filters=q.filters())
    base = _base(request)
    return json_response(ReleasablePage(items=[_releasable_item(base, item) for item in items], next_cursor=next_cursor))


@routes.get("/v1/releasable/{media_id}/thumbnail", summary="Signed thumbnail of the rendition that would be released (no bearer); "
            "the path names a media id (identifiable) or a handle (de-identified)",
            query=SignedThumbnailQuery, response_media="image/jpeg", headers=("If-None-Match",), errors=(403, 404, 410, 422))
async def releasable_thumbnail(request: web.Request) -> web.Response:
    q = parse_query(request, SignedThumbnailQuery)
    thumb = await request.app[RELEASES].thumbnail(
        item=request.match_info["media_id"], purpose=q.purpose, rendition=q.rendition,
        params=SignedParams(token_id=q.token, expires=q.expires, signature=q.signature), request_id=request[REQUEST_ID],
        if_none_match=if_none_match(request),
    )
    if thumb.data is None:
        return not_modified(thumb.etag)
    response = web.Response(body=thumb.data, content_type="image/jpeg")
    response.headers["Cache-Control"] = REVALIDATE  # a 304 passes the gate first
    response.headers["ETag"] = thumb.etag
    return response


@routes.post("/v1/media/{media_id}/releases", summary="Release one photo or video for a purpose: by media id the stripped "
             "original (identifiable consent), by handle the de-identified rendition",
             body=ReleaseIn, status=201, response=ReleaseMade, headers=("Idempotency-Key",), errors=(404, 409, 422))
async def create_release(request: web.Request) -> web.Response:
    body = await read_json(request, ReleaseIn, limit=request.app[SETTINGS].max_json_bytes)
    made = await request.app[RELEASES].release(actor_of(request), request.match_info["media_id"], purpose=body.purpose,
                                               recipient=body.recipient,
                                               idempotency_key=idempotent.header_value(request.headers.get("Idempotency-Key")))
    named = {"handle": made.item} if made.rendition == "deidentified" else {"media_id": made.item, "consent_id": made.consent_id}
    return json_response(ReleaseMade(
        id=made.id, purpose=made.purpose, rendition=made.rendition, **named,
        download_url=f"{_base(request)}/v1/releases/{made.id}/download", expires_at=made.expires_at.isoformat(),
    ), status=201, headers={"Location": f"/v1/releases/{made.id}/download"})


@routes.post("/v1/releases/composites", summary="Release one image of two photos of a patient side by side at the same "
             "height, labelled (a fresh JPEG, no metadata); 403 consent_required when either photo is not releasable",
             body=CompositeIn, status=201, response=CompositeMade, headers=("Idempotency-Key",), errors=(403, 404, 409, 422))
async def create_composite(request: web.Request) -> web.Response:
    body = await read_json(request, CompositeIn, limit=request.app[SETTINGS].max_json_bytes)
    made = await request.app[COMPOSITES].release(actor_of(request), body.before, body.after, purpose=body.purpose,
                                                 recipient=body.recipient,
                                                 idempotency_key=idempotent.header_value(request.headers.get("Idempotency-Key")))
    return json_response(CompositeMade(id=made.id, before=body.before, after=body.after, purpose=made.purpose, rendition="original",
                                       download_url=f"{_base(request)}/v1/releases/{made.id}/download",
                                       expires_at=made.expires_at.isoformat()),
                         status=201, headers={"Location": f"/v1/releases/{made.id}/download"})


@routes.get("/v1/releases/{release_id}/download", summary="The released file, once, before the link expires (gate re-checked)",
            response_media=CONTENT_TYPES, errors=(404, 410))
async def download_release(request: web.Request) -> web.StreamResponse:
    service = request.app[RELEASES]
    # HEAD checks everything but must not spend the one download.
    download = await service.open_download(actor_of(request), request.match_info["release_id"], claim=request.method != "HEAD")
    return await send_once(request, service, download, content_type=download.mime)


@routes.get("/v1/releases", summary="Releases made (the recall list), filtered by media or patient", query=ReleasesQuery,
            response=ReleasePage, errors=(404, 422))
async def list_releases(request: web.Request) -> web.Response:
    q = parse_query(request, ReleasesQuery)
    page = await request.app[RELEASES].page(actor_of(request), media_id=q.media_id, patient_id=q.patient_id, handle=q.handle,
                                            cursor=q.cursor, limit=q.limit, state=q.state)
    return json_response(page)


@routes.post("/v1/releases/{release_id}/takedown", summary="Record that a recalled release's image was taken down (who, when)",
             status=201, response=ReleaseView, errors=(404, 409))
async def takedown_release(request: web.Request) -> web.Response:
    view = await request.app[RELEASES].takedown(actor_of(request), request.match_info["release_id"])
    return json_response(view, status=201, headers={"Location": "/v1/releases?state=taken_down"})
