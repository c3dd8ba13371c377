"""HTTP layer of the FHIR R4 read-only adapter (docs/fhir.md): its routes, its typed
key and its ``setup(app)``.

The same bearer tokens, role table (vault/permissions.py), tenant checks and audit as
``/v1``: the handlers call :class:`~vault.fhir.service.FhirService`, which reads through
the media and patients services. Every error under ``/fhir/`` — including the 401/403 of
the authorisation middleware and the 404 of an unknown path — is answered as a FHIR
OperationOutcome by :func:`outcomes`, which ``setup`` places just inside the request
context (outside metrics and authorisation, so both still see the error first).
"""

from __future__ import annotations

import json
import logging
import re
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from vault import errors
from vault.appkeys import RUNTIME
from vault.fhir import responses
from vault.fhir.service import FhirService
from vault.http.conditional import if_none_match
from vault.http.context import PRINCIPAL, RESPONSE_STARTED, actor_of
from vault.http.downloads import serve_content
from vault.http.jsonio import read_capped
from vault.http.middleware import allow_header, request_context
from vault.http.routing import Endpoints, add_endpoints
from vault.media.upload import CONTENT_TYPES
from vault.permissions import allowed

log = logging.getLogger("vault.fhir")
routes = Endpoints("fhir")
FHIR = web.AppKey("fhir", FhirService)
PREFIX = "/fhir/"
_ID = re.compile(r"^[0-9a-f]{32}$")
_PATIENT_REF = re.compile(r"^(?:Patient/)?([0-9a-f]{32})$")
#: Binary as base64 inside application/fhir+json only up to this size; above it 406
BINARY_JSON_LIMIT = 1024 * 1024
MAX_COUNT, DEFAULT_COUNT = 200, 50
#: a search form body is a few hundred bytes
MAX_FORM_BYTES = 8 * 1024
#: where a role's right to read names and birth dates is decided (the /v1 patient read)
_PATIENT_READ = ("GET", "/v1/patients/{patient_id}")


def setup(app: web.Application) -> None:
    add_endpoints(app, routes)
    # Just inside request_context: metrics and the authorisation middleware see the error first.
    app.middlewares.insert(app.middlewares.index(request_context) + 1, outcomes)

    async def wire(app: web.Application) -> None:
        rt = app[RUNTIME]
        app[FHIR] = FhirService(rt.db, rt.media, rt.patients)

    app.on_startup.append(wire)


# -- responses and errors ------------------------------------------------------------
def fhir_response(data: dict[str, Any], *, status: int = 200) -> web.Response:
    body = json.dumps(data, separators=(",", ":"))
    response = web.Response(text=body, status=status, content_type=responses.FHIR_JSON)
    response.headers["Cache-Control"] = "private, no-store"
    return response


def outcome_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    response = fhir_response(responses.operation_outcome(status, code, message), status=status)
    response.headers.update(headers or {})
    return response


@web.middleware
async def outcomes(request: web.Request, handler):
    """Errors under /fhir/ as OperationOutcome with the same status a /v1 error gets."""
    if not request.path.startswith(PREFIX):
        return await handler(request)
    try:
        return await handler(request)
    except ConnectionError:
        raise  # the client went away: the request context drops the connection
    except errors.VaultError as exc:
        if request.get(RESPONSE_STARTED) or isinstance(exc, errors.RequestTimeout):
            raise  # the request context cuts a started response, closes a timed-out body
        if exc.status == 500:
            log.error("vault error", extra={"code": exc.code}, exc_info=exc)
        elif exc.status > 500:
            log.warning("vault error", extra={"code": exc.code})
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else {}
        if exc.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return outcome_response(exc.status, exc.code, exc.message, headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, "http_error")
        headers = allow_header(request, exc)
        return outcome_response(exc.status, code, exc.reason, headers)
    except Exception as exc:
        if request.get(RESPONSE_STARTED):
            raise
        # The type and frames go to the log; nothing of the exception reaches the client.
        log.error("unhandled error", exc_info=exc)
        return outcome_response(500, "internal", "internal error")


def _check_accept(request: web.Request) -> None:
    """JSON only: an Accept that names only XML (or other non-JSON types) is 406."""
    accept = request.headers.get("Accept", "").lower()
    if accept and "json" not in accept and "*/*" not in accept and "application/*" not in accept:
        raise _NotAcceptable("only application/fhir+json is served")


class _NotAcceptable(errors.VaultError):
    status, code, default_message = 406, "not_acceptable", "not acceptable"


class _UnknownParameter(errors.BadRequest):
    code = "unknown_parameter"


def _params(pairs: list[tuple[str, str]], allowed_names: set[str]) -> dict[str, str]:
    """Search parameters, refusing unknown or repeated ones (FHIR's strict handling).
    Names only in messages, never values: a value may be an MRN."""
    params: dict[str, str] = {}
    for name, value in pairs:
        if name not in allowed_names:
            raise _UnknownParameter(f"unsupported search parameter {name[:64]!r}",
                                    details={"supported": sorted(allowed_names)})
        if name in params:
            raise errors.BadRequest(f"search parameter {name!r} given more than once")
        params[name] = value
    return params


def _count(params: dict[str, str]) -> int:
    raw = params.get("_count", str(DEFAULT_COUNT))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_COUNT:
        raise errors.BadRequest(f"_count must be an integer from 1 to {MAX_COUNT}")
    return int(raw)


def _cursor(params: dict[str, str]) -> str | None:
    cursor = params.get("_cursor")
    if cursor is not None and not _ID.match(cursor):
        raise errors.BadRequest("_cursor is not one this server gave")
    return cursor


def _patient(value: str) -> str:
    match = _PATIENT_REF.match(value)
    if match is None:
        raise errors.BadRequest("patient must be a Patient id (or Patient/id) of this server")
    return match.group(1)


def _path_id(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not _ID.match(value):
        raise errors.NotFound("no such resource")
    return value


# -- endpoints -------------------------------------------------------------------------
@routes.get("/fhir/R4/metadata", summary="FHIR CapabilityStatement (no token needed: it says nothing about any clinic)",
            response_media=responses.FHIR_JSON)
async def metadata(request: web.Request) -> web.Response:
    try:
        v = version("clinical-photo-vault")
    except PackageNotFoundError:
        v = "0"
    return fhir_response(responses.capability_statement(software_version=v, binary_json_limit=BINARY_JSON_LIMIT))


_SEARCH_GET = {"patient", "_count", "_cursor"}
_SEARCH_POST = _SEARCH_GET | {"subject:Patient.identifier"}


@routes.get("/fhir/R4/Media", summary="FHIR Media search by the vault's patient id (searchset Bundle); never by identifier in a URL",
            response_media=responses.FHIR_JSON, errors=(400, 404, 406, 410))
async def search_media_get(request: web.Request) -> web.Response:
    _check_accept(request)
    pairs = list(request.query.items())
    if any(name.startswith("subject") or "identifier" in name for name, _ in pairs):
        raise errors.BadRequest("search by identifier only with POST Media/_search (form body): an MRN never goes in a URL")
    return await _search(request, _params(pairs, _SEARCH_GET))


@routes.post("/fhir/R4/Media/_search", summary="FHIR Media search, parameters in an application/x-www-form-urlencoded body (subject:Patient.identifier=SYSTEM|MRN, or patient)",
             request_media=("application/x-www-form-urlencoded",), response_media=responses.FHIR_JSON,
             errors=(400, 404, 406, 410, 413, 415))
async def search_media_post(request: web.Request) -> web.Response:
    _check_accept(request)
    if request.query:
        raise errors.BadRequest("POST Media/_search takes its parameters in the form body only")
    if request.content_type != "application/x-www-form-urlencoded":
        raise errors.UnsupportedMedia("the body must be application/x-www-form-urlencoded")
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        raise errors.TooLarge(details={"limit": MAX_FORM_BYTES})
    raw = await read_capped(request, MAX_FORM_BYTES)
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(raw), max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        raise errors.BadRequest("the form body is not application/x-www-form-urlencoded") from None
    return await _search(request, _params(pairs, _SEARCH_POST))


async def _search(request: web.Request, params: dict[str, str]) -> web.Response:
    count = _count(params)
    cursor = _cursor(params)
    service = request.app[FHIR]
    identifier = params.get("subject:Patient.identifier")
    if identifier is not None and "patient" in params:
        raise errors.BadRequest("give patient or subject:Patient.identifier, not both")
    if identifier is not None:
        if cursor is not None:
            raise errors.BadRequest("follow the Bundle's next link to page an identifier search")
        system, bar, value = identifier.rpartition("|")
        if not bar:
            system, value = "", identifier  # a value alone: any system
        elif system != responses.IDENTIFIER_SYSTEM:
            raise errors.BadRequest(f"the identifier system must be {responses.IDENTIFIER_SYSTEM} (or leave it out)")
        value = value.strip()
        if not value or len(value) > 128:
            raise errors.BadRequest("the identifier value must be 1-128 characters")
        hits = await service.media_by_identifier(actor_of(request), value, limit=count)
    elif "patient" in params:
        hits = await service.media_of_patient(actor_of(request), _patient(params["patient"]), cursor=cursor, limit=count)
    else:
        raise errors.BadRequest("a Media search needs patient or subject:Patient.identifier")
    return fhir_response(responses.searchset(hits, count=count))


@routes.get("/fhir/R4/Media/{media_id}", summary="FHIR Media read", response_media=responses.FHIR_JSON, errors=(404, 406, 410))
async def read_media(request: web.Request) -> web.Response:
    _check_accept(request)
    if request.query:
        raise _UnknownParameter("a read takes no parameters")
    item = await request.app[FHIR].read_media(actor_of(request), _path_id(request, "media_id"))
    return fhir_response(responses.media_resource(item))


@routes.get("/fhir/R4/Patient/{patient_id}", summary="FHIR Patient read: the minimum the clinic holds", response_media=responses.FHIR_JSON,
            errors=(404, 406, 410))
async def read_patient(request: web.Request) -> web.Response:
    _check_accept(request)
    if request.query:
        raise _UnknownParameter("a read takes no parameters")
    view = await request.app[FHIR].read_patient(actor_of(request), _path_id(request, "patient_id"))
    names = allowed(*_PATIENT_READ)
    with_names = isinstance(names, frozenset) and request[PRINCIPAL].role in names
    return fhir_response(responses.patient_resource(view, with_names=with_names))


def _wants_fhir_json(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "").lower()
    return "fhir+json" in accept or "json+fhir" in accept


@routes.get("/fhir/R4/Binary/{media_id}", summary="FHIR Binary read: the stripped original in its own content type, streamed (Range and HEAD supported); as application/fhir+json only for photos up to 1 MiB",
            response_media=(*CONTENT_TYPES, responses.FHIR_JSON), headers=("Range", "If-None-Match"), errors=(404, 406, 409, 410, 416))
async def read_binary(request: web.Request) -> web.StreamResponse:
    if request.query:
        raise _UnknownParameter("a read takes no parameters")
    media_id = _path_id(request, "media_id")
    service = request.app[FHIR]
    as_json = _wants_fhir_json(request)
    # Tenant check and audit as /v1/media/{id}/content; a tag the client holds is of the
    # raw bytes (the FHIR JSON form carries no ETag), so it is only asked about for those.
    content = await service.binary(actor_of(request), media_id, if_none_match=None if as_json else if_none_match(request))
    size = content.ref.plain_size
    if as_json:
        if size > BINARY_JSON_LIMIT or content.mime.startswith("video/"):
            raise _NotAcceptable(f"Binary as application/fhir+json only for photos up to {BINARY_JSON_LIMIT} bytes: "
                                 f"ask for {content.mime} (streamed, with Range)", details={"limit": BINARY_JSON_LIMIT})
        return fhir_response(responses.binary_resource(media_id, content.mime, await service.read_all(content)))
    return await serve_content(request, content, name=media_id, stream=service.stream)
