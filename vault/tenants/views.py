"""Tokens over HTTP: a tenant's admin revokes a token (``DELETE /v1/tokens/{token_id}``).
Tokens are created on the command line (``vault token create``), where they are shown once."""

from __future__ import annotations

from aiohttp import web

from vault.appkeys import RUNTIME
from vault.http.context import actor_of
from vault.http.routing import Endpoints, add_endpoints
from vault.tenants.service import TenantService

routes = Endpoints("tokens")
TENANTS = web.AppKey("tenants", TenantService)


def setup(app: web.Application) -> None:
    """Register the token routes; set :data:`TENANTS` once the runtime is open."""
    add_endpoints(app, routes)

    async def wire(app: web.Application) -> None:
        app[TENANTS] = app[RUNTIME].tenants

    app.on_startup.append(wire)


@routes.delete("/v1/tokens/{token_id}",
               summary="Revoke a token of this tenant: every node refuses it (401) within a second, "
                       "usually at once; revoking it again is a no-op",
               status=204, errors=(404,))
async def revoke_token(request: web.Request) -> web.Response:
    actor = actor_of(request)
    await request.app[TENANTS].revoke_token(request.match_info["token_id"], request_id=actor.request_id, actor=actor)
    return web.Response(status=204)
