"""The DPO console's patient pages: find by hospital number (POST), the patient page and
its actions. Each handler gathers what the domain services return; access was decided by
the permission table before it runs, and the services check tenant and ownership."""

from __future__ import annotations

import json
from datetime import date

from aiohttp import BodyPartReader, web

from vault import errors
from vault.consent.evidence import EVIDENCE_TYPES, MAX_EVIDENCE_BYTES, sniff
from vault.consent.gate import PURPOSES
from vault.http.context import REQUEST_ID, actor_of
from vault.http.downloads import send_once
from vault.web.common import can, form, render, see_other, services
from vault.web.session import MULTIPART, SESSION_COOKIE

P = "/app/patients/{patient_id}"
#: what the page says after a form (the redirect carries only this code)
DONE = {"rectified": "The correction is saved.", "consent": "The consent is recorded.",
        "hold_placed": "Legal hold placed: erasure is blocked until it is lifted.", "hold_lifted": "Legal hold lifted.",
        "restricted": "Processing is restricted: no release, no export to third parties.",
        "unrestricted": "The restriction is lifted."}


def routes(r: web.UrlDispatcher) -> None:
    r.add_get("/app/patients", search_page)
    r.add_post("/app/patients", search)
    r.add_get(P, patient_page)
    r.add_post(P, rectify)
    r.add_post(P + "/legal-hold", legal_hold)
    r.add_post(P + "/restriction", restriction)
    r.add_post(P + "/consents", record_consent)
    r.add_post("/app/consents/{consent_id}/withdraw", withdraw_consent)
    r.add_get(P + "/erasure", erasure_page)
    r.add_post(P + "/erasure", erase)
    r.add_post(P + "/exports", start_export)
    r.add_get("/app/exports/{export_id}", export_page)
    r.add_post("/app/exports/{export_id}/download", export_download)


async def search_page(request: web.Request) -> web.StreamResponse:
    return render(request, "search.html", {"results": None})


async def search(request: web.Request) -> web.StreamResponse:
    """The hospital number arrives in a POST body: never in a URL, a log line or history."""
    data = await form(request)
    ref = data.get("external_ref", "").strip()
    if not ref or len(ref) > 128:
        raise errors.ValidationFailed("type the hospital number (1-128 characters)")
    found = await services(request).patients.find(actor_of(request), ref)
    if len(found) == 1:
        return see_other(f"/app/patients/{found[0].id}")
    return render(request, "search.html", {"results": found})


async def patient_page(request: web.Request) -> web.StreamResponse:
    svc, actor, patient_id = services(request), actor_of(request), request.match_info["patient_id"]
    patient = await svc.patients.get(actor, patient_id)
    media = await svc.media.page(actor, patient_id, cursor=None, limit=60, phase=None, treatment_id=None)
    consents = await svc.consents.history(actor, patient_id) if can(request, "GET", "/v1/patients/{patient_id}/consents") else None
    releases = (await svc.releases.page(actor, media_id=None, patient_id=patient_id, cursor=None, limit=100)).items \
        if can(request, "GET", "/v1/releases") else None
    hold, who = None, {}
    if can(request, "PUT", "/v1/patients/{patient_id}/legal-hold"):
        hold = await svc.lifecycle.holds.state(actor, patient_id)
        who = {**await svc.staff.token_labels(actor.tenant_id), **await svc.staff.names(actor.tenant_id)}
    return render(request, "patient.html", {"patient": patient, "media": media.items, "consents": consents,
                                            "releases": releases, "purposes": PURPOSES, "hold": hold, "who": who,
                                            "done": DONE.get(request.query.get("done", ""))})


async def rectify(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    changes: dict[str, object] = {}
    for name in ("display_name", "notes", "external_ref"):
        if name in data:
            value = data[name].strip()
            if name == "external_ref" and not value:
                continue  # the reference can be changed, never removed
            changes[name] = value or None
    if "date_of_birth" in data:
        try:
            changes["date_of_birth"] = date.fromisoformat(data["date_of_birth"]) if data["date_of_birth"].strip() else None
        except ValueError:
            raise errors.ValidationFailed("a date of birth is written YYYY-MM-DD") from None
    patient_id = request.match_info["patient_id"]
    await services(request).patients.update(actor_of(request), patient_id, changes)
    return see_other(f"/app/patients/{patient_id}?done=rectified")


def _reason(data: dict[str, str]) -> str:
    reason = data.get("reason", "").strip()
    if not reason or len(reason) > 2000:
        raise errors.ValidationFailed("give a reason (1-2000 characters)")
    return reason


async def legal_hold(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    holds, actor, patient_id = services(request).lifecycle.holds, actor_of(request), request.match_info["patient_id"]
    if data.get("action") == "lift":
        await holds.lift_hold(actor, patient_id)
        return see_other(f"/app/patients/{patient_id}?done=hold_lifted")
    await holds.place_hold(actor, patient_id, reason=_reason(data))
    return see_other(f"/app/patients/{patient_id}?done=hold_placed")


async def restriction(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    patient_id = request.match_info["patient_id"]
    restricted = data.get("action") != "lift"
    await services(request).lifecycle.holds.restrict(actor_of(request), patient_id, restricted=restricted)
    return see_other(f"/app/patients/{patient_id}?done={'restricted' if restricted else 'unrestricted'}")


async def _read_part(part: BodyPartReader, limit: int, too_large: errors.VaultError) -> bytes:
    """A part's bytes in memory (never a temporary file: a consent form is patient data)."""
    data = bytearray()
    while chunk := await part.read_chunk(65536):
        data += chunk
        if len(data) > limit:
            raise too_large
    return bytes(data)


async def _consent_form(request: web.Request) -> tuple[dict[str, str], tuple[bytes, str] | None]:
    """The consent form's fields and its evidence: URL-encoded without a file, multipart
    with one (the signed form, sniffed as PDF, JPEG or PNG whatever the browser says)."""
    if request.content_type != "multipart/form-data":
        return await form(request), None
    reader = request.get(MULTIPART) or await request.multipart()
    data: dict[str, str] = {}
    evidence: bytes | None = None
    too_many = errors.ValidationFailed("the form has too many fields")
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or not part.name or len(data) > 2 * len(PURPOSES) + 8:
                raise too_many
            if part.name == "evidence":
                body = await _read_part(part, MAX_EVIDENCE_BYTES, errors.TooLarge("the signed form is at most 8 MiB"))
                evidence = body or None  # an empty file input sends an empty part
            else:
                data[part.name] = (await _read_part(part, 4096, errors.ValidationFailed("a field is too long"))).decode()
    except (UnicodeDecodeError, ValueError, AssertionError):  # ValidationFailed is not a ValueError
        raise errors.ValidationFailed("the form could not be read; send it again") from None
    if evidence is None:
        return data, None
    mime = sniff(evidence)
    if mime is None:
        raise errors.UnsupportedMedia("the signed form must be a PDF, JPEG or PNG file",
                                      details={"accepted": sorted(set(EVIDENCE_TYPES.values()))})
    return data, (evidence, mime)


async def record_consent(request: web.Request) -> web.StreamResponse:
    data, evidence = await _consent_form(request)
    purposes = [p for p in PURPOSES if data.get(f"purpose_{p}") == "on"]
    if not purposes:
        raise errors.ValidationFailed("choose at least one purpose")
    notes = data.get("notes", "").strip() or None
    patient_id = request.match_info["patient_id"]
    await services(request).consents.record(actor_of(request), patient_id, purposes=purposes,
                                            identifiable=data.get("identifiable") == "on", notes=notes,
                                            evidence=evidence)
    return see_other(f"/app/patients/{patient_id}?done=consent")


async def withdraw_consent(request: web.Request) -> web.StreamResponse:
    await form(request)
    result = await services(request).consents.withdraw(actor_of(request), request.match_info["consent_id"])
    return render(request, "withdrawn.html", {"result": result})


async def erasure_page(request: web.Request) -> web.StreamResponse:
    patient = await services(request).patients.get(actor_of(request), request.match_info["patient_id"])
    return render(request, "erasure.html", {"patient": patient, "error": None})


async def erase(request: web.Request) -> web.StreamResponse:
    """The confirmation page posts here with a fresh authenticator code."""
    data = await form(request)
    svc, patient_id = services(request), request.match_info["patient_id"]
    patient = await svc.patients.get(actor_of(request), patient_id)  # another tenant's: 404 before anything
    if data.get("confirm") != "erase":
        raise errors.ValidationFailed("tick the box that confirms the erasure")
    reason = _reason(data)
    try:
        await svc.staff.fresh_step(request.cookies.get(SESSION_COOKIE, ""), data.get("code", ""),
                                   request_id=request[REQUEST_ID])
    except errors.Unauthorized as exc:
        return render(request, "erasure.html", {"patient": patient, "error": exc.message}, status=401)
    signed = await svc.lifecycle.erasure.erase(actor_of(request), patient_id, reason=reason)
    document = signed.model_dump(mode="json")
    return render(request, "receipt.html", {"signed": document, "receipt": document["receipt"],
                                            "receipt_json": json.dumps(document, indent=2, sort_keys=True)})


async def start_export(request: web.Request) -> web.StreamResponse:
    await form(request)
    export = await services(request).lifecycle.exports.request(actor_of(request), request.match_info["patient_id"])
    return see_other(f"/app/exports/{export.id}")


async def export_page(request: web.Request) -> web.StreamResponse:
    export = await services(request).lifecycle.exports.status(actor_of(request), request.match_info["export_id"])
    return render(request, "export.html", {"export": export})


async def export_download(request: web.Request) -> web.StreamResponse:
    """The one download, as a POST with the CSRF token: a cross-site page cannot spend it."""
    await form(request)
    exports = services(request).lifecycle.exports
    download = await exports.open_download(actor_of(request), request.match_info["export_id"], claim=True)
    return await send_once(request, exports, download, content_type="application/zip")
