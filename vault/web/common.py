"""What every page shares: the services it reads, rendering, and the role checks that
come from the one permission table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from vault.audit.reads import AuditReads
from vault.consent.composites import CompositeReleases
from vault.consent.releases import ReleaseService
from vault.consent.service import ConsentService
from vault.http.context import REQUEST_ID
from vault.lifecycle.service import Lifecycle
from vault.media.service import MediaService
from vault.patients.service import PatientService
from vault.permissions import PUBLIC, allowed
from vault.redaction.service import RedactionService
from vault.staff.service import StaffService
from vault.treatments.service import TreatmentService
from vault.webhooks.service import WebhookService
from vault.web.session import CURRENT, CSRF_FIELD


@dataclass(frozen=True)
class WebServices:
    """The domain services the pages call, as the runtime built them."""

    staff: StaffService
    patients: PatientService
    media: MediaService
    consents: ConsentService
    releases: ReleaseService
    lifecycle: Lifecycle
    audit: AuditReads
    webhooks: WebhookService
    redactions: RedactionService
    composites: CompositeReleases
    treatments: TreatmentService


SERVICES = web.AppKey("web_services", WebServices)

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def services(request: web.Request) -> WebServices:
    return request.app[SERVICES]


def can(request: web.Request, method: str, template: str) -> bool:
    """Whether the logged-in role may use a route, by the permission table (for what a
    page offers; the route itself is still decided by the middleware)."""
    current = request.get(CURRENT)
    roles = allowed(method, template)
    return current is not None and roles not in (None, PUBLIC) and current.role in roles  # type: ignore[operator]


def render(request: web.Request, template: str, context: dict[str, Any] | None = None, *,
           status: int = 200) -> web.Response:
    current = request.get(CURRENT)
    ctx = {"me": current, "csrf_field": CSRF_FIELD, "csrf": current.csrf if current else None,
           "can": lambda method, template: can(request, method, template), "request_id": request.get(REQUEST_ID)}
    ctx.update(context or {})
    response = aiohttp_jinja2.render_template(template, request, ctx, status=status)
    response.headers.update(NO_STORE)
    return response


def see_other(location: str) -> web.Response:
    """303 to a page of ours (Post/Redirect/Get), as a plain response so cookies can be set on it."""
    return web.Response(status=303, headers={"Location": location, **NO_STORE})


async def form(request: web.Request) -> dict[str, str]:
    """A URL-encoded form's fields (the vault's pages post nothing else)."""
    if request.content_type != "application/x-www-form-urlencoded":
        raise web.HTTPUnsupportedMediaType(text="forms are sent URL-encoded")
    data = await request.post()
    return {k: str(v) for k, v in data.items() if isinstance(v, str)}


def fields(data: dict[str, str], *names: str) -> list[str]:
    return [data.get(n, "").strip() for n in names]
