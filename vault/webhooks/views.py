"""Webhook configuration (tenant admins). Deliveries are jobs (workers/jobs/webhooks.py).
``setup`` wires the domain into the app: its routes and its typed service key."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from vault.appkeys import RUNTIME, SETTINGS
from vault.http.context import actor_of
from vault.http.jsonio import json_response, read_json
from vault.http.routing import Endpoints, add_endpoints
from vault.webhooks.delivery import MAX_URL
from vault.webhooks.responses import WebhookConfig
from vault.webhooks.service import MAX_ENDPOINTS, WebhookService

routes = Endpoints("webhooks")
WEBHOOKS = web.AppKey("webhooks", WebhookService)
Url = Annotated[str, StringConstraints(min_length=8, max_length=MAX_URL)]


def setup(app: web.Application) -> None:
    """Register the webhook routes; set :data:`WEBHOOKS` once the runtime is open."""
    add_endpoints(app, routes)

    async def wire(app: web.Application) -> None:
        app[WEBHOOKS] = app[RUNTIME].webhooks

    app.on_startup.append(wire)  # after every cleanup_ctx has opened (aiohttp runs those first)


class WebhooksIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    urls: list[Url] = Field(max_length=MAX_ENDPOINTS, description="https endpoints with public addresses; replaces the list")
    rotate_secret: bool = Field(default=False, description="make a new signing secret (returned once)")


@routes.get("/v1/webhooks", summary="The tenant's webhook endpoints and delivery counts", response=WebhookConfig)
async def get_webhooks(request: web.Request) -> web.Response:
    return json_response(await request.app[WEBHOOKS].config(actor_of(request)))


@routes.put("/v1/webhooks", summary="Set the webhook endpoints; the signing secret is returned once, when made",
            body=WebhooksIn, response=WebhookConfig, errors=(422,))
async def put_webhooks(request: web.Request) -> web.Response:
    body = await read_json(request, WebhooksIn, limit=request.app[SETTINGS].max_json_bytes)
    return json_response(await request.app[WEBHOOKS].configure(actor_of(request), list(body.urls), rotate_secret=body.rotate_secret))
