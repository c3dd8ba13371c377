"""The redaction review pages (dpo, practitioner) and marketing's gallery, releases and
recall list (issue 18). Pages read the same services as the API; the review page's box
editor (static/redaction.js) saves and approves through the API itself with the session's
CSRF header. A de-identified item shows only its handle: no grouping, no date."""

from __future__ import annotations

from datetime import date
from urllib.parse import urlencode

from aiohttp import web

from vault import errors
from vault.consent import gate
from vault.consent.gate import PURPOSES
from vault.consent.releases import RECALLED, TAKEN_DOWN, Filters, Releasable
from vault.http.context import actor_of
from vault.http.downloads import send_once
from vault.media.models import PHASES
from vault.web.common import can, form, render, see_other, services

DONE = {"taken_down": "The take-down is recorded."}


def routes(r: web.UrlDispatcher) -> None:
    r.add_get("/app/redaction", review_queue)
    r.add_get("/app/redaction/{media_id}", review_page)
    r.add_get("/app/gallery", gallery_page)
    r.add_post("/app/gallery", gallery_filtered)
    r.add_post("/app/gallery/releases", release)
    r.add_post("/app/gallery/composites", composite)
    r.add_post("/app/releases/{release_id}/download", download)
    r.add_get("/app/recalls", recalls_page)
    r.add_post("/app/releases/{release_id}/takedown", takedown)


async def _who(request: web.Request) -> dict[str, str]:
    """Actor id -> a person's e-mail or a token's label, to show who did what."""
    staff, tenant_id = services(request).staff, actor_of(request).tenant_id
    return {**await staff.token_labels(tenant_id), **await staff.names(tenant_id)}


# -- redaction review -----------------------------------------------------------------------
async def review_queue(request: web.Request) -> web.StreamResponse:
    state = request.query.get("state", "pending")
    if state not in ("pending", "approved"):
        raise errors.ValidationFailed("state is pending or approved")
    svc, actor = services(request), actor_of(request)
    page = await svc.redactions.reviews(actor, state=state, cursor=None, limit=100)
    approvals = {}
    if state == "approved":  # who approved what
        for item in page.items:
            approvals[item.media_id] = (await svc.redactions.view(actor, item.media_id)).approval
    return render(request, "redaction_queue.html", {"state": state, "items": page.items, "approvals": approvals,
                                                    "who": await _who(request)})


async def review_page(request: web.Request) -> web.StreamResponse:
    view = await services(request).redactions.view(actor_of(request), request.match_info["media_id"])
    return render(request, "redaction.html", {"view": view, "who": await _who(request), "boxes": [list(b) for b in view.boxes]})


# -- the gallery ----------------------------------------------------------------------------
def _thumbnail_url(item: Releasable) -> str:
    query = urlencode({"purpose": item.purpose, "rendition": item.rendition, **item.thumbnail.query()})
    return f"/v1/releasable/{item.item}/thumbnail?{query}"


def _day(value: str, name: str) -> date | None:
    if not value.strip():
        return None
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise errors.ValidationFailed(f"{name} is a date, YYYY-MM-DD") from None


def _year(value: str) -> int | None:
    if not value.strip():
        return None
    if not value.strip().isdigit() or not 1900 <= int(value) <= 2200:
        raise errors.ValidationFailed("the year is four digits")
    return int(value)


def _type(value: str, types: dict[str, str]) -> str | None:
    if value and value not in types:
        raise errors.ValidationFailed("no such treatment type")
    return value or None


#: the gallery form's fields: identifiable items' filters, then the de-identified ones'
#: (kept apart: a de-identified item is filtered only by treatment type and year)
FIELDS = ("treatment", "type", "phase", "since", "until", "d_type", "d_year")


def _filters(filters: dict[str, str], types: dict[str, str]) -> tuple[Filters, Filters]:
    phase = filters.get("phase") or None
    if phase is not None and phase not in PHASES:
        raise errors.ValidationFailed("unknown phase")
    identifiable = Filters(rendition=gate.ORIGINAL, treatment=filters.get("treatment", "").strip() or None,
                           treatment_type=_type(filters.get("type", ""), types), phase=phase,
                           taken_from=_day(filters.get("since", ""), "from"), taken_to=_day(filters.get("until", ""), "to"))
    deidentified = Filters(rendition=gate.DEIDENTIFIED, treatment_type=_type(filters.get("d_type", ""), types),
                           year=_year(filters.get("d_year", "")))
    return identifiable, deidentified


def _taken(item: Releasable) -> float:
    return item.created_at.timestamp() if item.created_at else 0.0


def _pairs(items: list[Releasable]) -> tuple[list[tuple[Releasable, Releasable]], list[Releasable]]:
    """Identifiable items as before/after pairs (one treatment, both releasable now: consent
    covers both), oldest before with newest after; the rest one by one."""
    by_treatment: dict[str, list[Releasable]] = {}
    for item in items:
        if item.treatment_id and item.kind == "photo":
            by_treatment.setdefault(item.treatment_id, []).append(item)
    pairs, paired = [], set()
    for group in by_treatment.values():
        befores = sorted((i for i in group if i.phase == "before"), key=_taken)
        afters = sorted((i for i in group if i.phase == "after"), key=_taken)
        if befores and afters:
            pairs.append((befores[0], afters[-1]))
            paired |= {befores[0].item, afters[-1].item}
    return pairs, [i for i in items if i.item not in paired]


async def _gallery(request: web.Request, filters: dict[str, str]) -> web.StreamResponse:
    purpose = request.query.get("purpose", "marketing")
    if purpose not in PURPOSES:
        raise errors.ValidationFailed("unknown purpose")
    svc, actor = services(request), actor_of(request)
    types = {t.id: t.name for t in await svc.treatments.types(actor)}
    wanted, anonymous = _filters(filters, types)
    shown, more = await svc.releases.releasable(actor, purpose=purpose, cursor=None, limit=200, details=True, filters=wanted)
    unnamed, more_unnamed = await svc.releases.releasable(actor, purpose=purpose, cursor=None, limit=200, filters=anonymous)
    pairs, singles = _pairs(shown)
    return render(request, "gallery.html", {
        "purpose": purpose, "purposes": PURPOSES, "phases": PHASES, "types": types, "filters": filters,
        "pairs": [(b, _thumbnail_url(b), a, _thumbnail_url(a)) for b, a in pairs],
        "identifiable": [(i, _thumbnail_url(i)) for i in singles], "count": len(shown),
        "deidentified": [(i, _thumbnail_url(i)) for i in unnamed],
        "treatments": sorted({i.treatment_name for i in shown if i.treatment_name}),
        "more": more is not None or more_unnamed is not None,
        "this_year": date.today().year,
    })


async def gallery_page(request: web.Request) -> web.StreamResponse:
    return await _gallery(request, {})


async def gallery_filtered(request: web.Request) -> web.StreamResponse:
    """Filters arrive in a POST body: a treatment's name goes into no URL or history."""
    data = await form(request)
    return await _gallery(request, {k: data.get(k, "") for k in FIELDS})


def _recipient(data: dict[str, str]) -> tuple[str, str]:
    purpose, recipient = data.get("purpose", ""), data.get("recipient", "").strip()
    if purpose not in PURPOSES:
        raise errors.ValidationFailed("unknown purpose")
    if not recipient or len(recipient) > 500:
        raise errors.ValidationFailed("name the recipient (1-500 characters)")
    return purpose, recipient


async def composite(request: web.Request) -> web.StreamResponse:
    """A before/after pair released as one image (both photos side by side, same height)."""
    data = await form(request)
    purpose, recipient = _recipient(data)
    made = await services(request).composites.release(actor_of(request), data.get("before", ""), data.get("after", ""),
                                                      purpose=purpose, recipient=recipient)
    return render(request, "released.html", {"made": made, "recipient": recipient, "composite": True}, status=201)


async def release(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    item = data.get("item", "")
    purpose, recipient = _recipient(data)
    made = await services(request).releases.release(actor_of(request), item, purpose=purpose, recipient=recipient)
    return render(request, "released.html", {"made": made, "recipient": recipient, "composite": False}, status=201)


async def download(request: web.Request) -> web.StreamResponse:
    """The one download, as a POST with the CSRF token: a cross-site page cannot spend it."""
    await form(request)
    releases = services(request).releases
    opened = await releases.open_download(actor_of(request), request.match_info["release_id"], claim=True)
    return await send_once(request, releases, opened, content_type=opened.mime)


# -- recalls ---------------------------------------------------------------------------------
async def recalls_page(request: web.Request) -> web.StreamResponse:
    svc, actor = services(request), actor_of(request)
    open_ = await svc.releases.page(actor, media_id=None, patient_id=None, cursor=None, limit=200, state=RECALLED)
    done = await svc.releases.page(actor, media_id=None, patient_id=None, cursor=None, limit=200, state=TAKEN_DOWN)
    return render(request, "recalls.html", {"open": open_.items, "done": list(reversed(done.items)), "who": await _who(request),
                                            "can_take_down": can(request, "POST", "/app/releases/{release_id}/takedown"),
                                            "message": DONE.get(request.query.get("done", ""))})


async def takedown(request: web.Request) -> web.StreamResponse:
    await form(request)
    await services(request).releases.takedown(actor_of(request), request.match_info["release_id"])
    return see_other("/app/recalls?done=taken_down")
