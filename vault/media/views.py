"""HTTP handlers for photos and videos. Role checks happen in the middleware
(vault/permissions.py); tenant, ownership and state in the service. ``setup`` wires
the domain into the app: its routes and its typed service key."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Literal
from urllib.parse import urlencode

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, field_validator
from pydantic.json_schema import JsonDict

from vault.appkeys import RUNTIME, SETTINGS, UPLOAD_LIMITS
from vault.errors import Forbidden, UnsupportedMedia, ValidationFailed
from vault.http.conditional import if_none_match, not_modified, private
from vault.http.context import REQUEST_ID, actor_of
from vault.http.downloads import serve_content
from vault.http.jsonio import json_response, parse_query, read_json
from vault.http.routing import Endpoints, add_endpoints
from vault.media.models import ORIGINAL, THUMBNAILS
from vault.media.responses import MediaPage, MediaView, PlaybackLink
from vault.media.service import Content, MediaService
from vault.media.upload import CONTENT_TYPES, PHOTO_TYPES, VIDEO_TYPES, check_matches, open_upload
from vault.permissions import allowed
from vault.pipeline.sniff import SNIFF_BYTES, sniff

routes = Endpoints("media")
MEDIA = web.AppKey("media", MediaService)
#: a signed playback link serves what this route serves, to the roles it allows
CONTENT_ROUTE = ("GET", "/v1/media/{media_id}/content")
Id = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
Phase = Literal["before", "after", "progress", "adverse", "other"]
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


class UploadQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    phase: Phase = "other"
    treatment_id: Id | None = None


class MediaQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cursor: Annotated[str, StringConstraints(pattern=r"^([0-9a-f]{32}|[0-9]{1,20}-[0-9a-f]{32})$")] | None = Field(
        default=None, description="next_cursor of the previous page (with `since`: the same `since` again)")
    limit: int = Field(default=50, ge=1, le=200)
    phase: Phase | None = None
    treatment_id: Id | None = None
    since: AwareDatetime | None = Field(
        default=None, description="only media created or changed at or after this instant (ISO 8601 with offset), "
                                  "oldest change first; pages keyset on (updated_at, id)")

    @field_validator("since")
    @classmethod
    def _in_utc(cls, value: datetime | None) -> datetime | None:
        try:
            return None if value is None else value.astimezone(UTC)
        except (OverflowError, ValueError):
            raise ValueError("out of range") from None


def _left_out_never_null(schema: JsonDict) -> None:
    # patch_media refuses an explicit null (422); the document says so
    options = schema.pop("anyOf", [])
    branches = [b for b in options if isinstance(b, dict) and b.get("type") != "null"] if isinstance(options, list) else []
    schema.update(branches[0] if branches else {})
    schema.pop("default", None)


class MediaPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    phase: Phase | None = Field(default=None, json_schema_extra=_left_out_never_null)
    treatment_id: Id | None = None
    identifiable: bool | None = Field(default=None, description="a person's review of the face flag; overrides the detector")


class PlaybackQuery(BaseModel):
    """The signed link's parameters (vault/signedurls.py); a link that is not valid is 403."""

    model_config = ConfigDict(extra="forbid")
    token: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")] = Field(description="the id of the token that asked for the link")
    expires: int = Field(ge=0, le=2**40, description="Unix seconds")
    signature: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class ThumbnailQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    size: Literal["256", "1024"] = "256"


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _IDEMPOTENCY_KEY.match(key):
        raise ValidationFailed("Idempotency-Key must be 1-255 visible ASCII characters")
    return key


def _looks_like_video(head: bytes) -> str | None:
    # Imported on first use: vault.pipeline.video pulls in PyAV, which the server process
    # needs only if a video's first bytes are not plain ftyp (start-up memory, issue 15).
    from vault.pipeline.video import looks_like_video

    return looks_like_video(head)


def setup(app: web.Application) -> None:
    """Register the media routes; set :data:`MEDIA` once the runtime is open."""
    add_endpoints(app, routes)

    async def wire(app: web.Application) -> None:
        app[MEDIA] = app[RUNTIME].media

    app.on_startup.append(wire)  # after every cleanup_ctx has opened (aiohttp runs those first)


@routes.post(
    "/v1/patients/{patient_id}/media",
    summary="Upload a photo or video (raw body with its media type, or multipart field 'file'); a video is `processing` until its finishing job is done",
    query=UploadQuery,
    request_media=tuple(sorted(PHOTO_TYPES | VIDEO_TYPES)) + ("multipart/form-data",),
    status=201,
    response=MediaView,
    also={200: MediaView},  # a replayed Idempotency-Key: the first upload's media
    headers=("Idempotency-Key",),
    errors=(404, 408, 409, 410, 413, 415, 422, 429, 503),
)
async def upload_media(request: web.Request) -> web.Response:
    query = parse_query(request, UploadQuery)
    key = _idempotency_key(request)
    actor = actor_of(request)
    service = request.app[MEDIA]
    patient_id = request.match_info["patient_id"]
    target = await service.check_target(actor, patient_id, query.treatment_id)  # 404 before reading any body
    settings = request.app[SETTINGS]
    limits = request.app[UPLOAD_LIMITS]
    with limits.admit(actor.token_id):  # 429/503 at once when this token or this node is at its limit
        stream = await open_upload(request, photo_limit=settings.max_photo_bytes, video_limit=settings.max_video_bytes,
                                   body_timeout=settings.http_body_timeout)
        head = await stream.head(SNIFF_BYTES)
        sniffed = sniff(head) or _looks_like_video(head)  # old QuickTime files start without ftyp
        if sniffed is None:
            raise UnsupportedMedia("not a supported photo or video type", details={"accepted": sorted(PHOTO_TYPES | VIDEO_TYPES)})
        check_matches(stream.declared, sniffed)
        if sniffed in VIDEO_TYPES:
            stream.check_length(settings.max_video_bytes)
            view, created = await service.upload_video(
                actor, patient_id, stream.chunks(limit=settings.max_video_bytes),
                phase=query.phase, treatment_id=query.treatment_id, idempotency_key=key,
            )
            return json_response(view, status=201 if created else 200, headers={"Location": f"/v1/media/{view.id}"})
        stream.check_length(settings.max_photo_bytes)  # 413 before reading on
        with limits.memory.lease() as lease:  # held until the photo is processed and stored
            data = await stream.read_all(limit=settings.max_photo_bytes, lease=lease)
            view, created = await service.upload_photo(actor, target, data, phase=query.phase, idempotency_key=key)
    return json_response(view, status=201 if created else 200, headers={"Location": f"/v1/media/{view.id}"})


@routes.get("/v1/patients/{patient_id}/media", summary="List a patient's media (keyset pages, before/after groups)",
            query=MediaQuery, response=MediaPage, errors=(404, 410, 422))
async def list_media(request: web.Request) -> web.Response:
    q = parse_query(request, MediaQuery)
    actor = actor_of(request)
    page = await request.app[MEDIA].page(
        actor, request.match_info["patient_id"], cursor=q.cursor, limit=q.limit, phase=q.phase, treatment_id=q.treatment_id,
        since=q.since,
        # capture dates are patient data: inline only for roles that may read the media's metadata
        captured_at=actor.role in (allowed("GET", "/v1/media/{media_id}") or ()),
    )
    return json_response(page)


# The hot read first: aiohttp tries the routes under /v1/media in the order they were added
# (a regex each), so a thumbnail GET no longer tries three others before its own.
@routes.get("/v1/media/{media_id}/thumbnail", summary="A JPEG thumbnail, 256 or 1024 px (If-None-Match supported)", query=ThumbnailQuery, response_media="image/jpeg",
            headers=("If-None-Match",), errors=(404, 409, 410, 422))
async def media_thumbnail(request: web.Request) -> web.Response:
    q = parse_query(request, ThumbnailQuery)
    service = request.app[MEDIA]
    content = await service.content(actor_of(request), request.match_info["media_id"], rendition=THUMBNAILS[int(q.size)],
                                    action="media.thumbnail", if_none_match=if_none_match(request))
    if content.not_modified:
        return not_modified(content.etag)
    body = await service.read_all(content)
    response = web.Response(body=body, content_type="image/jpeg")
    private(response, content.etag)
    return response


@routes.get("/v1/media/{media_id}", summary="Media metadata", response=MediaView, errors=(404, 410))
async def get_media(request: web.Request) -> web.Response:
    return json_response(await request.app[MEDIA].get(actor_of(request), request.match_info["media_id"]))


@routes.patch("/v1/media/{media_id}", summary="Change phase or treatment, or record a face review", body=MediaPatch,
               response=MediaView, errors=(404, 410, 422))
async def patch_media(request: web.Request) -> web.Response:
    body = await read_json(request, MediaPatch, limit=request.app[SETTINGS].max_json_bytes)
    changes = body.model_dump(exclude_unset=True)
    if changes.get("phase", "") is None:
        raise ValidationFailed(details={"errors": [{"field": "phase", "problem": "null"}]})
    view = await request.app[MEDIA].update(actor_of(request), request.match_info["media_id"], changes)
    return json_response(view)


@routes.get("/v1/media/{media_id}/content", summary="The stripped original (Range, HEAD and If-None-Match supported)", response_media=CONTENT_TYPES,
            headers=("Range", "If-None-Match"), errors=(404, 409, 410, 416))
async def media_content(request: web.Request) -> web.StreamResponse:
    service = request.app[MEDIA]
    content = await service.content(actor_of(request), request.match_info["media_id"], rendition=ORIGINAL, action="media.content",
                                    if_none_match=if_none_match(request))
    return await _serve(request, service, content)


async def _serve(request: web.Request, service: MediaService, content: Content) -> web.StreamResponse:
    return await serve_content(request, content, name=request.match_info["media_id"], stream=service.stream)


@routes.post("/v1/media/{media_id}/playback", summary="A short-lived signed playback URL for a <video> element, bound to this media and this token", response=PlaybackLink, errors=(404, 409, 410))
async def create_playback(request: web.Request) -> web.Response:
    signed = await request.app[MEDIA].playback_link(actor_of(request), request.match_info["media_id"])
    url = f"/v1/playback/{signed.media_id}?{urlencode(signed.params.query())}"
    return json_response(PlaybackLink(url=url, expires_at=signed.expires_at.isoformat()))


@routes.get("/v1/playback/{media_id}", summary="Play media through a signed link (Range and HEAD supported; no bearer header)", query=PlaybackQuery,
            response_media=CONTENT_TYPES,
            headers=("Range", "If-None-Match"), errors=(403, 404, 409, 410, 416))
async def playback(request: web.Request) -> web.StreamResponse:
    service = request.app[MEDIA]
    actor = await service.playback_actor(request.match_info["media_id"], dict(request.query), request_id=request[REQUEST_ID])
    roles = allowed(*CONTENT_ROUTE)  # the token's role may have changed since the link was made
    if not isinstance(roles, frozenset) or actor.role not in roles:
        raise Forbidden("the link is not valid")
    content = await service.content(actor, request.match_info["media_id"], rendition=ORIGINAL, action="media.playback",
                                    if_none_match=if_none_match(request))
    return await _serve(request, service, content)
