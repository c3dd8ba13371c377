"""Health, readiness, metrics and the OpenAPI document: the composition root's own routes.
They read the root's keys (readiness, metrics, settings), never the runtime."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict

from vault.appkeys import READINESS, SETTINGS
from vault.http.jsonio import json_response
from vault.http import reference
from vault.http.openapi import build
from vault.http.routing import ENDPOINTS, Endpoints, add_endpoints
from vault.metrics import METRICS, authorized

routes = Endpoints("system")


def setup(app: web.Application) -> None:
    # READINESS and METRICS are filled by vault/app.py itself: nothing to copy here.
    add_endpoints(app, routes)
    add_endpoints(app, reference.routes)


class HealthStatus(BaseModel):
    status: str


class ReadinessReport(BaseModel):
    status: str
    checks: dict[str, str]


class OpenApiDocument(BaseModel):
    # The document is generated (vault/http/openapi.py); only its top is declared here.
    model_config = ConfigDict(extra="allow")
    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]


@routes.get("/healthz", summary="Liveness", response=HealthStatus)
async def healthz(request: web.Request) -> web.Response:
    return json_response(HealthStatus(status="ok"))


@routes.get(
    "/readyz",
    summary="Readiness: database, schema, key store and blob store answer (503 naming the failing check); "
    "a missing worker heartbeat is reported as degraded, not as 503",
    response=ReadinessReport,
    also={503: ReadinessReport},  # the same report, naming the failing check
)
async def readyz(request: web.Request) -> web.Response:
    report = await request.app[READINESS].report()
    request.app[METRICS].observe_readiness(report)
    body = ReadinessReport(status=report.status, checks={check.name: check.code for check in report.checks})
    return json_response(body, status=200 if report.ready else 503)


@routes.get(
    "/metrics",
    summary="Prometheus metrics, for a scraper holding VAULT_METRICS_TOKEN as its bearer token "
    "(404 when no metrics token is configured)",
    response_media="text/plain",
    errors=(401, 404),
)
async def metrics(request: web.Request) -> web.Response:
    authorized(request, request.app[SETTINGS].metrics_token)
    body = await request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})


@routes.get("/v1/openapi.json", summary="This API's OpenAPI 3.1 document", response=OpenApiDocument)
async def openapi(request: web.Request) -> web.Response:
    try:
        v = version("clinical-photo-vault")
    except PackageNotFoundError:
        v = "0"
    return json_response(OpenApiDocument.model_validate(build(request.app[ENDPOINTS], version=v)))
