"""Health, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from vault.appkeys import METRICS, RUNTIME, SETTINGS
from vault.http.jsonio import json_response
from vault.http.openapi import build
from vault.http.routing import ENDPOINTS, Endpoints
from vault.metrics import authorized

routes = Endpoints("system")


@routes.get("/healthz", summary="Liveness")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get(
    "/readyz",
    summary="Readiness: database, schema, key store and blob store answer (503 naming the failing check); "
    "a missing worker heartbeat is reported as degraded, not as 503",
    errors=(503,),
)
async def readyz(request: web.Request) -> web.Response:
    report = await request.app[RUNTIME].readiness.report()
    request.app[METRICS].observe_readiness(report)
    return json_response(report.as_json(), status=200 if report.ready else 503)


@routes.get(
    "/metrics",
    summary="Prometheus metrics, for a scraper holding VAULT_METRICS_TOKEN as its bearer token "
    "(404 when no metrics token is configured)",
    response_media="text/plain",
    errors=(401, 404),
)
async def metrics(request: web.Request) -> web.Response:
    authorized(request, request.app[SETTINGS].metrics_token)
    body = await request.app[METRICS].render(request.app.get(RUNTIME))
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})


@routes.get("/v1/openapi.json", summary="This API's OpenAPI 3.1 document")
async def openapi(request: web.Request) -> web.Response:
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("clinical-photo-vault")
    except PackageNotFoundError:
        v = "0"
    return json_response(build(request.app[ENDPOINTS], version=v))
