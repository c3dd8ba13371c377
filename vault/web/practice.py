"""The practitioner's pages (issue 18): a patient's treatments timeline with each visit's
photos and their face review, capture from a phone browser, and the before/after
comparison. The patient is found by hospital number on the console's search page (a POST,
so the number is never in a URL); these pages carry only ids.

Capture uploads through the API itself (``POST /v1/patients/{id}/media``) from
static/capture.js, with the session's CSRF header and one ``Idempotency-Key`` per file, so a
retry after a dropped connection returns the photo already stored instead of a second one.
Access is decided by the permission table before a handler runs; the services check tenant
and ownership.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from aiohttp import web

from vault import errors
from vault.appkeys import RUNTIME
from vault.http.context import actor_of
from vault.media.models import PHASES
from vault.media.responses import MediaView
from vault.patients.service import PatientView
from vault.treatments.service import TreatmentView
from vault.web.common import form, render, see_other, services

P = "/app/patients/{patient_id}"
#: what a page says after a form (the redirect carries only this code)
DONE = {"reviewed": "The face review is saved.", "treatment": "The treatment is recorded: choose the phase and add photos."}
#: the most media the pages read for one patient (the API pages further)
MOST = 200


def routes(r: web.UrlDispatcher) -> None:
    r.add_get(P + "/timeline", timeline_page)
    r.add_get(P + "/capture", capture_page)
    r.add_post(P + "/treatments", create_treatment)
    r.add_get(P + "/compare", compare_page)
    r.add_post("/app/media/{media_id}/face-review", face_review)


@dataclass(frozen=True)
class Visit:
    """One treatment (or, without one, the photos linked to none) and its media, oldest first."""

    treatment: TreatmentView | None
    media: list[MediaView]


def taken_on(m: MediaView) -> str:
    """The day a photo was taken: the camera's date when it wrote one, else the upload's."""
    return (m.captured_at or m.created_at)[:10]


async def _patient_media(request: web.Request) -> tuple[PatientView, list[TreatmentView], list[MediaView]]:
    """The patient of the path (another tenant's: 404 before anything), their treatments
    (oldest first) and their media (in the order they were taken)."""
    svc, actor, patient_id = services(request), actor_of(request), request.match_info["patient_id"]
    patient = await svc.patients.get(actor, patient_id)
    treatments = await request.app[RUNTIME].treatments.list(actor, patient_id)
    page = await svc.media.page(actor, patient_id, cursor=None, limit=MOST, phase=None, treatment_id=None, captured_at=True)
    return (patient, sorted(treatments, key=lambda t: (t.performed_on, t.id)),
            sorted(page.items, key=lambda m: (taken_on(m), m.created_at)))


def visits(treatments: list[TreatmentView], media: list[MediaView]) -> list[Visit]:
    """Newest visit first; photos linked to no treatment come last."""
    by_treatment: dict[str | None, list[MediaView]] = {}
    for m in media:
        by_treatment.setdefault(m.treatment_id, []).append(m)
    out = [Visit(t, by_treatment.get(t.id, [])) for t in reversed(treatments)]
    if by_treatment.get(None):
        out.append(Visit(None, by_treatment[None]))
    return out


def _photos(media: list[MediaView]) -> list[MediaView]:
    return [m for m in media if m.kind == "photo" and m.status == "ready"]


def guides(treatments: list[TreatmentView], media: list[MediaView]) -> dict[str, str]:
    """For each treatment, the photo to line the new one up with: the latest earlier photo of
    the same area (the same treatment's own 'before' first), so the 'after' matches its framing."""
    photos = _photos(media)
    area = {t.id: (t.area or t.name).strip().casefold() for t in treatments}
    out: dict[str, str] = {}
    for t in treatments:
        same = [m for m in photos if m.treatment_id and area.get(m.treatment_id) == area[t.id]]
        own_before = [m for m in same if m.treatment_id == t.id and m.phase == "before"]
        pick = (own_before or same)
        if pick:
            out[t.id] = pick[-1].id
    return out


async def timeline_page(request: web.Request) -> web.StreamResponse:
    patient, treatments, media = await _patient_media(request)
    return render(request, "practice_timeline.html", {
        "patient": patient, "visits": visits(treatments, media), "taken_on": taken_on,
        "photos": len(_photos(media)), "done": DONE.get(request.query.get("done", ""))})


async def capture_page(request: web.Request) -> web.StreamResponse:
    patient, treatments, media = await _patient_media(request)
    chosen = request.query.get("treatment", "")
    return render(request, "practice_capture.html", {
        "patient": patient, "treatments": list(reversed(treatments)), "phases": PHASES, "guides": guides(treatments, media),
        "chosen": chosen if any(t.id == chosen for t in treatments) else "", "today": date.today().isoformat(),
        "done": DONE.get(request.query.get("done", ""))})


async def create_treatment(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    patient_id = request.match_info["patient_id"]
    await services(request).media.check_target(actor_of(request), patient_id, None)  # another tenant's: 404 first
    name, area = data.get("name", "").strip(), data.get("area", "").strip() or None
    if not name or len(name) > 200 or (area and len(area) > 200):
        raise errors.ValidationFailed("name the treatment (1-200 characters; the area at most 200)")
    try:
        performed_on = date.fromisoformat(data.get("performed_on", "").strip())
    except ValueError:
        raise errors.ValidationFailed("the treatment's date is written YYYY-MM-DD") from None
    made = await request.app[RUNTIME].treatments.create(actor_of(request), patient_id, name=name, performed_on=performed_on,
                                                         area=area, details=None)
    return see_other(f"/app/patients/{patient_id}/capture?treatment={made.id}&done=treatment")


async def face_review(request: web.Request) -> web.StreamResponse:
    """A person's review of the face flag: what the consent gate counts, not the detector."""
    data = await form(request)
    media, actor, media_id = services(request).media, actor_of(request), request.match_info["media_id"]
    verdict = {"identifiable": True, "not_identifiable": False}.get(data.get("identifiable", ""))
    if verdict is None:
        await media.check_media(actor, media_id)  # another tenant's: 404 before the form's fault
        raise errors.ValidationFailed("choose identifiable or not identifiable")
    view = await media.update(actor, media_id, {"identifiable": verdict})
    return see_other(f"/app/patients/{view.patient_id}/timeline?done=reviewed#m-{view.id}")


async def compare_page(request: web.Request) -> web.StreamResponse:
    """Two of a patient's photos (ids in the query: no patient data) side by side or under a
    slider; by default the latest 'after' and a 'before' of the same treatment."""
    patient, treatments, media = await _patient_media(request)
    photos = {m.id: m for m in _photos(media)}
    a, b = request.query.get("a", ""), request.query.get("b", "")
    if (a and a not in photos) or (b and b not in photos):
        raise errors.NotFound("no such photo of this patient")
    if not (a and b):
        first, second = _default_pair(list(photos.values()))
        a, b = a or first, b or (second if second != a else first)
    names = {t.id: t.name for t in treatments}
    pair = [photos[x] for x in (a, b) if x]
    return render(request, "practice_compare.html", {
        "patient": patient, "photos": list(photos.values()), "a": a, "b": b, "pair": pair, "names": names,
        "taken_on": taken_on})


def _default_pair(photos: list[MediaView]) -> tuple[str, str]:
    after = [m for m in photos if m.phase == "after"]
    before = [m for m in photos if m.phase == "before"]
    if after:
        same = [m for m in before if m.treatment_id == after[-1].treatment_id]
        if same or before:
            return (same or before)[-1].id, after[-1].id
    if len(photos) >= 2:
        return photos[0].id, photos[-1].id
    return "", ""
