"""The application factory, used by the CLI and the tests alike.

Every client (database, key store, blob store, audit writer) is opened and closed
in a ``cleanup_ctx`` generator, in dependency order.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from vault import appkeys
from vault.actor import Actor
from vault.audit import views as audit_views
from vault.audit.service import AuditEvent
from vault.config import Settings
from vault.consent import views as consent_views
from vault.http.context import REQUEST_ID
from vault.http.limits import UploadLimits
from vault.http.middleware import authorize_middleware, mark_started, request_context, route_template
from vault.http.routing import add_endpoints
from vault.lifecycle import views as lifecycle_views
from vault.metrics import Metrics, make_metrics_middleware
from vault.media import views as media_views
from vault.patients import views as patient_views
from vault.shredding import views as shredding_views
from vault.treatments import views as treatment_views
from vault.webhooks import views as webhook_views
from vault import system
from vault.runtime import runtime

log = logging.getLogger("vault")


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.max_json_bytes)
    # aiohttp's access log writes raw URLs (ids, query strings); ours logs route templates.
    logging.getLogger("aiohttp.access").disabled = True
    app[appkeys.SETTINGS] = settings
    app[appkeys.METRICS] = Metrics()
    app[appkeys.UPLOAD_LIMITS] = UploadLimits.from_settings(settings)

    async def authenticate(token: str):
        return await app[appkeys.TENANTS].authenticate(token)

    async def on_denied(request: web.Request, principal, exc) -> None:
        actor = Actor(principal.tenant_id, principal.token_id, principal.role, request[REQUEST_ID])
        targets = {k: v for k, v in request.match_info.items() if len(v) <= 64}
        await app[appkeys.AUDIT].record(
            AuditEvent.of(actor, f"{request.method} {route_template(request)}", outcome=exc.code, **targets)
        )

    # Metrics sit inside request_context: they see each refusal's error code before it becomes JSON.
    app.middlewares.extend([request_context, make_metrics_middleware(route_template),
                            authorize_middleware(authenticate, on_denied)])
    app.cleanup_ctx.append(_runtime)
    for routes in (system.routes, patient_views.routes, treatment_views.routes, media_views.routes, audit_views.routes,
                   shredding_views.routes):
        add_endpoints(app, routes)
    for routes in (consent_views.routes, webhook_views.routes, lifecycle_views.routes):
        add_endpoints(app, routes)
    app.on_response_prepare.append(_security_headers)
    app.on_response_prepare.append(mark_started)
    return app


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")


async def _runtime(app: web.Application) -> AsyncIterator[None]:
    async with runtime(app[appkeys.SETTINGS]) as rt:
        app[appkeys.RUNTIME] = rt
        app[appkeys.DB] = rt.db
        app[appkeys.AUDIT] = rt.audit
        app[appkeys.KEYS] = rt.keys
        app[appkeys.STORE] = rt.store
        app[appkeys.TENANTS] = rt.tenants
        app[appkeys.PATIENTS] = rt.patients
        app[appkeys.TREATMENTS] = rt.treatments
        app[appkeys.MEDIA] = rt.media
        app[appkeys.CONSENTS] = rt.consents
        app[appkeys.RELEASES] = rt.releases
        app[appkeys.WEBHOOKS] = rt.webhooks
        yield
