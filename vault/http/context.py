"""Typed per-request storage and the actor of a request."""

from __future__ import annotations

from aiohttp import web

from vault.actor import Actor, Principal

REQUEST_ID = web.RequestKey("request_id", str)
PRINCIPAL = web.RequestKey("principal", Principal)
RESPONSE_STARTED = web.RequestKey("response_started", bool)  # set by vault.http.middleware.on_prepare


def actor_of(request: web.Request) -> Actor:
    principal = request[PRINCIPAL]
    return Actor(
        tenant_id=principal.tenant_id, token_id=principal.token_id, role=principal.role, request_id=request[REQUEST_ID]
    )
