"""Middlewares: request id and access log, errors to RFC 9457 problem details
(:mod:`vault.http.problems`), authentication and the role check from :mod:`vault.permissions`."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time

from aiohttp import web

from vault import errors
from vault.http.context import PRINCIPAL, REQUEST_ID, RESPONSE_STARTED
from vault.http.jsonio import json_response
from vault.http.problems import PROBLEM_JSON, problem
from vault.logs import request_id_var
from vault.permissions import PUBLIC, allowed

log = logging.getLogger("vault.http")
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


def problem_response(request: web.Request, code: str, status: int, detail: str, *, details: dict | None = None,
                     headers: dict[str, str] | None = None) -> web.Response:
    headers = dict(headers or {})
    if status == 401:
        # RFC 6750 3.1: no error code when the request carried no credentials
        headers["WWW-Authenticate"] = 'Bearer error="invalid_token"' if request.headers.get("Authorization") else "Bearer"
    body = problem(code, status, detail, instance=request.get(REQUEST_ID, ""), details=details)
    return json_response(body, status=status, headers=headers, content_type=PROBLEM_JSON)


def allow_header(request: web.Request, exc: web.HTTPException) -> dict[str, str]:
    """``Allow`` of a 405. aiohttp lists the methods of every route whose template
    matches, so /v1/patients/search would also offer the GET and PATCH of
    /v1/patients/{patient_id}; a path that is a route of its own offers its own methods."""
    if "Allow" not in exc.headers:
        return {}
    own = {r.method for r in request.app.router.routes() if r.resource is not None and r.resource.canonical == request.path}
    return {"Allow": ",".join(sorted(own))} if own else {"Allow": exc.headers["Allow"]}


def route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "<unmatched>"


@web.middleware
async def request_context(request: web.Request, handler):
    incoming = request.headers.get("X-Request-ID", "")
    request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else secrets.token_hex(12)
    request[REQUEST_ID] = request_id
    token = request_id_var.set(request_id)
    started = time.perf_counter()
    status = 500
    try:
        response = await _to_json_errors(request, handler)
        status = response.status
        if not response.prepared:
            response.headers["X-Request-ID"] = request_id
        return response
    except (ConnectionError, asyncio.CancelledError):
        status = 499  # nginx's "client closed request", for the log only: nothing more is sent
        raise
    finally:
        if log.isEnabledFor(logging.INFO):  # the access line's fields cost nothing when it is off
            principal = request.get(PRINCIPAL)
            log.info(
                "request",
                extra={
                    "method": request.method,
                    "route": route_template(request),
                    "status": status,
                    "ms": round((time.perf_counter() - started) * 1000, 2),
                    "tenant_id": principal.tenant_id if principal else None,
                    "token_id": principal.token_id if principal else None,
                },
            )
        request_id_var.reset(token)


class ClientAbort(ConnectionResetError):
    """The client went away mid-request, or a response that had started could not be
    finished and its connection was cut. aiohttp drops the connection quietly on a
    ``ConnectionError`` from the handler (see :class:`vault.http.server.VaultRequestHandler`)."""


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` (one receiver: each one is a coroutine per response): the
    headers every answer carries, and from here on an error can no longer be a response of
    its own."""
    headers = response.headers
    if "X-Content-Type-Options" not in headers:
        headers["X-Content-Type-Options"] = "nosniff"
    if "Referrer-Policy" not in headers:
        headers["Referrer-Policy"] = "no-referrer"
    request[RESPONSE_STARTED] = True


async def _to_json_errors(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ConnectionError:
        log.info("client abort")
        raise ClientAbort() from None
    except Exception as exc:
        if request.get(RESPONSE_STARTED):
            # The status line and part of the body are out: answering now would write a
            # second response into this body. Cut the connection; the client sees a body
            # shorter than its Content-Length.
            log.error("response failed after it started", extra={"code": getattr(exc, "code", "internal")},
                      exc_info=not isinstance(exc, errors.VaultError) or exc.status == 500)
            request.protocol.force_close()
            raise ClientAbort() from None
        return await _error_response(request, exc)


async def _error_response(request: web.Request, exc: Exception) -> web.StreamResponse:
    if isinstance(exc, errors.RequestTimeout):
        # The rest of the body will not come (soon): answer, then close at once instead
        # of aiohttp's lingering read of what is left.
        log.info("request body timeout", extra={"timeout_s": exc.details.get("timeout_s")})
        response = problem_response(request, exc.code, exc.status, exc.message, details=exc.details)
        response.force_close()
        response.headers["X-Request-ID"] = request[REQUEST_ID]
        await response.prepare(request)
        await response.write_eof()
        request.protocol.force_close()
        return response
    if isinstance(exc, errors.VaultError):
        if exc.status == 500:
            log.error("vault error", extra={"code": exc.code}, exc_info=exc)
        elif exc.status > 500:  # shedding load or waiting on storage: expected under pressure, retryable
            log.warning("vault error", extra={"code": exc.code})
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return problem_response(request, exc.code, exc.status, exc.message, details=exc.details, headers=headers)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        code = {404: "not_found", 405: "method_not_allowed", 406: "not_acceptable", 413: "too_large"}.get(exc.status, "http_error")
        headers = allow_header(request, exc)
        return problem_response(request, code, exc.status, exc.reason.lower(), headers=headers)
    # The type and frames go to the log; nothing of the exception reaches the client.
    log.error("unhandled error", exc_info=exc)
    return problem_response(request, "internal", 500, "internal error")


def _refuse_nul_in_path(request: web.Request) -> None:
    """A path segment with a NUL (``%00``) names nothing: PostgreSQL text cannot even hold
    one (it was a 500). Query strings and JSON bodies: :func:`vault.http.jsonio.refuse_nul`."""
    if any("\x00" in value for value in request.match_info.values()):
        raise errors.NotFound()


def authorize_middleware(authenticate, on_denied, *, authenticate_session=None):
    """Build the auth middleware around ``authenticate(token) -> Principal``;
    ``on_denied(request, principal, error)`` audits refusals of known principals.
    ``authenticate_session(request) -> Principal | None`` (the staff web app's cookie,
    vault/web/session.py; None when the request carries none) is asked when there is no
    ``Authorization`` header: a logged-in person then takes the same path as a token."""

    @web.middleware
    async def authorize(request: web.Request, handler):
        route = request.match_info.route
        if route.resource is None or isinstance(request.match_info.http_exception, web.HTTPException):
            return await handler(request)  # unmatched: the 404/405 handler answers
        roles = allowed(request.method, route.resource.canonical)
        if roles == PUBLIC:
            _refuse_nul_in_path(request)
            return await handler(request)
        header = request.headers.get("Authorization", "")
        principal = None
        if not header and authenticate_session is not None:
            principal = await authenticate_session(request)
        if principal is None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise errors.Unauthorized()
            principal = await authenticate(token.strip())
        request[PRINCIPAL] = principal
        _refuse_nul_in_path(request)  # before a refusal's audit entry, which records the path's ids
        try:
            if roles is None or principal.role not in roles:
                raise errors.Forbidden()
            return await handler(request)
        except errors.VaultError as exc:
            if exc.status in (403, 404, 410):
                await on_denied(request, principal, exc)
            raise

    return authorize
