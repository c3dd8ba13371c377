"""The application factory, used by the CLI and the tests alike: the composition root.

It opens the runtime (every client and service, vault/runtime.py) in a ``cleanup_ctx``
and lists the domains; each domain's ``setup(app)`` registers its routes and copies its
service(s) from the runtime into its own typed key when the app starts. Handlers read
only their domain's key; nothing below this module sees the runtime.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from vault import system
from vault.actor import Actor, Principal
from vault.appkeys import READINESS, RUNTIME, SETTINGS, UPLOAD_LIMITS
from vault.audit import views as audit_views
from vault.audit.service import AuditEvent
from vault.config import Settings
from vault.consent import views as consent_views
from vault.dicom import views as dicom_views
from vault.errors import VaultError
from vault.fhir import views as fhir_views
from vault.http.context import REQUEST_ID
from vault.http.limits import UploadLimits
from vault.http import cors
from vault.http.middleware import authorize_middleware, on_prepare, request_context, route_template
from vault.lifecycle import views as lifecycle_views
from vault.media import views as media_views
from vault.metrics import METRICS, Metrics, make_metrics_middleware
from vault.patients import views as patient_views
from vault.redaction import views as redaction_views
from vault.runtime import runtime
from vault.shredding import views as shredding_views
from vault.tenants import views as token_views
from vault.treatments import views as treatment_views
from vault.webhooks import views as webhook_views
from vault.web import views as web_views
from vault.web.session import SessionAuth

log = logging.getLogger("vault")

# Every domain's HTTP module, in route-registration order (which is also the order of
# the OpenAPI document). A new domain joins here with its own ``setup(app)``.
DOMAINS = (system, patient_views, treatment_views, media_views, audit_views, shredding_views,
           consent_views, redaction_views, webhook_views, lifecycle_views, token_views, fhir_views, dicom_views,
           web_views)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.max_json_bytes)
    # aiohttp's access log writes raw URLs (ids, query strings); ours logs route templates.
    logging.getLogger("aiohttp.access").disabled = True
    app[SETTINGS] = settings
    app[METRICS] = Metrics(settings.metrics_dir)
    app[UPLOAD_LIMITS] = UploadLimits.from_settings(settings)

    async def authenticate(token: str) -> Principal:
        return await app[RUNTIME].tenants.authenticate(token)

    async def on_denied(request: web.Request, principal: Principal, exc: VaultError) -> None:
        actor = Actor(principal.tenant_id, principal.token_id, principal.role, request[REQUEST_ID])
        targets = {k: v for k, v in request.match_info.items() if len(v) <= 64}
        await app[RUNTIME].audit.record(
            AuditEvent.of(actor, f"{request.method} {route_template(request)}", outcome=exc.code, **targets)
        )

    # Metrics sit inside request_context: they see each refusal's error code before it becomes JSON.
    # The web app's pages turn refusals into pages (web_views.pages); a session cookie
    # resolves to the same Principal as a token (one decision path).
    app.middlewares.extend([request_context, *cors.setup(app, settings.cors_origins),
                            make_metrics_middleware(route_template), web_views.pages,
                            authorize_middleware(authenticate, on_denied,
                                                 authenticate_session=SessionAuth(app, settings.public_url))])
    # First of all startup work: the domains' hooks (appended by their setup below) run
    # after every cleanup context has entered, so the runtime is open when they copy from it.
    app.cleanup_ctx.append(_runtime)
    for domain in DOMAINS:
        domain.setup(app)
    app.on_response_prepare.append(on_prepare)
    return app


async def _runtime(app: web.Application) -> AsyncIterator[None]:
    async with runtime(app[SETTINGS]) as rt:
        app[RUNTIME] = rt
        app[READINESS] = rt.readiness
        app[METRICS].bind(rt)
        yield
