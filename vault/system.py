"""Health, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from vault.appkeys import DB, METRICS
from vault.http.jsonio import json_response
from vault.http.openapi import build
from vault.http.routing import ENDPOINTS, Endpoints

routes = Endpoints("system")


@routes.get("/healthz", summary="Liveness")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/readyz", summary="Readiness: the database answers", errors=(503,))
async def readyz(request: web.Request) -> web.Response:
    try:
        await request.app[DB].ping()
    except Exception:
        return json_response({"status": "unavailable", "checks": {"database": "down"}}, status=503)
    return json_response({"status": "ok", "checks": {"database": "ok"}})


@routes.get("/metrics", summary="Prometheus metrics", response_media="text/plain")
async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@routes.get("/v1/openapi.json", summary="This API's OpenAPI 3.1 document")
async def openapi(request: web.Request) -> web.Response:
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("clinical-photo-vault")
    except PackageNotFoundError:
        v = "0"
    return json_response(build(request.app[ENDPOINTS], version=v))
