"""Tenant pages: retention (policy, dry run, sweep), the audit log viewer, staff (admin)."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

from aiohttp import web

from vault import errors
from vault.http.context import REQUEST_ID, actor_of
from vault.lifecycle.retention import CLOCKS
from vault.permissions import ROLES
from vault.web.common import form, render, see_other, services
from vault.web.session import SESSION_COOKIE

RULE_ROWS = 3


def routes(r: web.UrlDispatcher) -> None:
    r.add_get("/app/retention", retention_page)
    r.add_post("/app/retention", save_policy)
    r.add_post("/app/retention/dry-run", dry_run)
    r.add_post("/app/retention/sweep", sweep)
    r.add_get("/app/retention/sweeps/{sweep_id}", sweep_page)
    r.add_get("/app/audit", audit_page)
    r.add_post("/app/audit/verify", verify_audit)
    r.add_get("/app/webhooks", webhooks_page)
    r.add_post("/app/webhooks", save_webhooks)
    r.add_get("/app/staff", staff_page)
    r.add_post("/app/staff", create_staff)
    r.add_post("/app/staff/{staff_id}/disable", disable_staff)
    r.add_post("/app/staff/{staff_id}/reset", reset_staff)


# -- retention ----------------------------------------------------------------------------------
async def retention_page(request: web.Request, *, extra: dict | None = None, status: int = 200) -> web.StreamResponse:
    policy = await services(request).lifecycle.retention.policy(actor_of(request))
    rules = [r.model_dump() for r in policy.rules]
    rows = rules + [{"clock": "", "erase_after": ""}] * max(0, RULE_ROWS - len(rules))
    return render(request, "retention.html", {"policy": policy, "rows": rows, "clocks": CLOCKS, "run": None, "saved": False,
                                              "error": None, **(extra or {})}, status=status)


async def save_policy(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    rules = []
    for i in range(RULE_ROWS + 5):
        clock, after = data.get(f"clock_{i}", "").strip(), data.get(f"erase_after_{i}", "").strip()
        if clock or after:
            rules.append({"clock": clock, "erase_after": after})
    await services(request).lifecycle.retention.set_policy(actor_of(request), rules)
    return await retention_page(request, extra={"saved": True})


async def dry_run(request: web.Request) -> web.StreamResponse:
    await form(request)
    run = await services(request).lifecycle.retention.sweep(actor_of(request), dry_run=True)
    return await retention_page(request, extra={"run": run.model_dump(mode="json")})


async def sweep(request: web.Request) -> web.StreamResponse:
    """A real sweep names the dry run the DPO reviewed and needs a fresh authenticator code."""
    data = await form(request)
    review_id = data.get("review_id", "").strip()
    if not review_id:
        raise errors.ValidationFailed("a sweep names the dry run you reviewed")
    try:
        await services(request).staff.fresh_step(request.cookies.get(SESSION_COOKIE, ""), data.get("code", ""),
                                                 request_id=request[REQUEST_ID])
    except errors.Unauthorized as exc:
        return await retention_page(request, extra={"error": exc.message}, status=401)
    result = await services(request).lifecycle.retention.sweep(actor_of(request), dry_run=False, review_id=review_id)
    assert result.id is not None, "a sweep asked for in the app is always recorded"
    return see_other(f"/app/retention/sweeps/{result.id}")


async def sweep_page(request: web.Request) -> web.StreamResponse:
    """A sweep's outcome and the progress of its clean-up jobs (``/static/app.js`` polls
    ``GET /v1/retention/sweeps/{id}`` while they run)."""
    progress = await services(request).lifecycle.retention.progress(actor_of(request), request.match_info["sweep_id"])
    return render(request, "sweep.html", {"sweep": progress})


# -- audit --------------------------------------------------------------------------------------
def _when(value: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise errors.ValidationFailed("times are written YYYY-MM-DDTHH:MM") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)  # the page shows and asks for UTC


async def audit_page(request: web.Request, *, verification=None) -> web.StreamResponse:
    q = request.query
    after = q.get("after", "0")
    if not after.isdigit():
        raise errors.ValidationFailed("after is a sequence number")
    action, target, who = q.get("action", "").strip() or None, q.get("target", "").strip() or None, q.get("who", "").strip()
    svc, actor = services(request), actor_of(request)
    names = {**await svc.staff.token_labels(actor.tenant_id), **await svc.staff.names(actor.tenant_id)}
    # The staff filter is part of the query: the ids of everyone whose e-mail or token
    # label contains the text (or whose id it is), so every page is full and none is
    # empty because the matches were on another one.
    actors = {a for a, name in names.items() if who.lower() in name.lower()} | {who} if who else None
    page = await svc.audit.entries(actor, after_seq=int(after), limit=100, action=action, target=target,
                                   since=_when(q.get("since", "")), until=_when(q.get("until", "")), actors=actors)
    rows = [(e, names.get(e.actor) or e.actor) for e in page.items]
    older = urlencode({**{k: v for k, v in q.items() if k != "after" and v}, "after": page.next_cursor}) \
        if page.next_cursor else None
    return render(request, "audit.html", {"rows": rows, "older": older, "filters": dict(q),
                                          "verification": verification})


async def verify_audit(request: web.Request) -> web.StreamResponse:
    await form(request)
    result = await services(request).audit.verify(actor_of(request))
    return await audit_page(request, verification=result)


# -- webhooks (admin) -----------------------------------------------------------------------------
async def webhooks_page(request: web.Request, *, config=None) -> web.StreamResponse:
    config = config or await services(request).webhooks.config(actor_of(request))
    return render(request, "webhooks.html", {"config": config})


async def save_webhooks(request: web.Request) -> web.StreamResponse:
    """The endpoint list, one URL a line; the signing secret is shown once, when it is made."""
    data = await form(request)
    urls = [line.strip() for line in data.get("urls", "").splitlines() if line.strip()]
    config = await services(request).webhooks.configure(actor_of(request), urls, rotate_secret=data.get("rotate") == "1")
    return await webhooks_page(request, config=config)


# -- staff (admin) --------------------------------------------------------------------------------
def _link(request: web.Request, token: str) -> str:
    return f"{request.scheme}://{request.host}/enrol/{token}"


async def staff_page(request: web.Request, *, issued=None) -> web.StreamResponse:
    accounts = await services(request).staff.accounts_for(actor_of(request))
    return render(request, "staff.html", {"accounts": accounts, "roles": ROLES, "issued": issued,
                                          "link": _link(request, issued.token) if issued else None})


async def create_staff(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    svc = services(request).staff
    actor = actor_of(request)
    slug = await svc.tenant_slug(actor.tenant_id)
    issued = await svc.create(slug, data.get("email", ""), data.get("role", ""), request_id=request[REQUEST_ID], actor=actor)
    return await staff_page(request, issued=issued)


async def disable_staff(request: web.Request) -> web.StreamResponse:
    await form(request)
    await services(request).staff.disable(request.match_info["staff_id"], request_id=request[REQUEST_ID],
                                          actor=actor_of(request))
    return await staff_page(request)


async def reset_staff(request: web.Request) -> web.StreamResponse:
    await form(request)
    issued = await services(request).staff.reset(request.match_info["staff_id"], request_id=request[REQUEST_ID],
                                                 actor=actor_of(request))
    return await staff_page(request, issued=issued)
