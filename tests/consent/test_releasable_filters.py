"""The releasable listing's filters (issue 18, item 4) and the tenant's treatment-type
vocabulary: identifiable items by treatment name, phase and dates; de-identified items
only by treatment type and year, and a de-identified query refuses the others."""

from __future__ import annotations

from datetime import datetime, timezone

from tests.consent.conftest import plain_jpeg
from vault.media.models import Media


async def _types(client, clinic, names: list[str], *, role: str = "dpo", status: int = 200) -> dict:
    resp = await client.put("/v1/treatment-types", json={"names": names}, headers=clinic.auth(role))
    assert resp.status == status, await resp.text()
    return await resp.json()


async def _treatment(client, clinic, pid: str, name: str, type_id: str | None) -> str:
    body = {"name": name, "performed_on": "2025-06-01", **({"type_id": type_id} if type_id else {})}
    resp = await client.post(f"/v1/patients/{pid}/treatments", json=body, headers=clinic.auth("practitioner"))
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["type_id"] == type_id
    return (await resp.json())["id"]


async def _listed(client, clinic, *, search: dict | None = None, status: int = 200, **params) -> list[dict]:
    if search is not None:
        resp = await client.post("/v1/releasable/search", json={"purpose": "education", "limit": 200, **search},
                                 headers=clinic.auth("marketing"))
    else:
        resp = await client.get("/v1/releasable", params={"purpose": "education", "limit": "200", **params},
                                headers=clinic.auth("marketing"))
    body = await resp.json()
    assert resp.status == status, body
    return body["items"] if status == 200 else body


async def test_vocabulary_is_kept_by_admin_or_dpo_and_read_by_marketing(client, clinic, other_clinic):
    first = await _types(client, clinic, ["Lip filler", "Peel"], role="admin")
    ids = {t["name"]: t["id"] for t in first["items"]}
    again = await _types(client, clinic, ["lip filler", "Botox"])  # a kept name keeps its id
    assert {t["name"]: t["id"] for t in again["items"]}["lip filler"] == ids["Lip filler"]
    assert "Peel" not in {t["name"] for t in again["items"]}
    listed = await client.get("/v1/treatment-types", headers=clinic.auth("marketing"))
    assert {t["name"] for t in (await listed.json())["items"]} == {"lip filler", "Botox"}
    assert (await client.get("/v1/treatment-types", headers=other_clinic.auth("marketing"))).status == 200
    assert (await (await client.get("/v1/treatment-types", headers=other_clinic.auth("marketing"))).json())["items"] == []
    assert (await client.put("/v1/treatment-types", json={"names": ["x"]}, headers=clinic.auth("marketing"))).status == 403
    await _types(client, clinic, [""], status=422)


async def test_a_type_in_use_is_not_dropped_and_another_tenants_type_is_404(api, other_api, client, clinic, other_clinic):
    types = {t["name"]: t["id"] for t in (await _types(client, clinic, ["Filler A"]))["items"]}
    pid = await api.patient()
    await _treatment(client, clinic, pid, "lips", types["Filler A"])
    refused = await _types(client, clinic, [], status=409)
    assert refused["details"]["reason"] == "type_in_use"
    other = await other_api.patient()
    resp = await client.post(f"/v1/patients/{other}/treatments", json={"name": "x", "performed_on": "2025-01-01",
                                                                     "type_id": types["Filler A"]},
                             headers=other_clinic.auth("practitioner"))
    assert resp.status == 404


async def test_filters_identifiable_and_deidentified(api, client, clinic):
    types = {t["name"]: t["id"] for t in (await _types(client, clinic, ["Lip filler", "Chemical peel"]))["items"]}
    # identifiable: lips (before 2025, after 2026) and a peel; de-identified: lips (2025) and a peel (2026)
    ident = await api.patient()
    lips = await _treatment(client, clinic, ident, "Upper lip filler", types["Lip filler"])
    peel = await _treatment(client, clinic, ident, "Glycolic peel", types["Chemical peel"])
    lips_before = await api.photo(ident, plain_jpeg(), treatment_id=lips)
    lips_after = await api.photo(ident, plain_jpeg(), treatment_id=lips)
    peel_photo = await api.photo(ident, plain_jpeg(), treatment_id=peel)
    await api.set(Media, lips_before["id"], phase="before", created_at=datetime(2025, 5, 1, 12, tzinfo=timezone.utc))
    await api.set(Media, lips_after["id"], created_at=datetime(2026, 2, 1, 12, tzinfo=timezone.utc))
    await api.set(Media, peel_photo["id"], created_at=datetime(2026, 3, 1, 12, tzinfo=timezone.utc))
    await api.consent(ident, purposes=["education"], identifiable=True)
    anon = await api.patient()
    anon_lips = await api.photo(anon, plain_jpeg(), treatment_id=await _treatment(client, clinic, anon, "Lips", types["Lip filler"]))
    anon_peel = await api.photo(anon, plain_jpeg(), treatment_id=await _treatment(client, clinic, anon, "Peel", types["Chemical peel"]))
    await api.set(Media, anon_lips["id"], created_at=datetime(2025, 7, 1, 12, tzinfo=timezone.utc))
    await api.set(Media, anon_peel["id"], created_at=datetime(2026, 7, 1, 12, tzinfo=timezone.utc))
    await api.consent(anon, purposes=["education"], identifiable=False)
    await api.approve(anon_lips["id"])
    await api.approve(anon_peel["id"])
    h_lips, h_peel = await api.handle(anon_lips["id"]), await api.handle(anon_peel["id"])

    def keys(items: list[dict]) -> set[str]:
        return {i.get("media_id") or i["handle"] for i in items}

    everything = keys(await _listed(client, clinic))
    assert {lips_before["id"], lips_after["id"], peel_photo["id"], h_lips, h_peel} <= everything
    # by type: both kinds; nothing names the type on a de-identified item
    by_type = await _listed(client, clinic, treatment_type=types["Lip filler"])
    assert {lips_before["id"], lips_after["id"], h_lips} <= keys(by_type)
    assert peel_photo["id"] not in keys(by_type) and h_peel not in keys(by_type)
    assert all(set(i) <= {"handle", "purpose", "rendition", "kind", "thumbnail_url", "thumbnail_expires_at"}
               for i in by_type if "handle" in i)
    # by year, de-identified only
    in_2025 = keys(await _listed(client, clinic, rendition="deidentified", year="2025"))
    assert h_lips in in_2025 and h_peel not in in_2025 and not in_2025 & {lips_before["id"], lips_after["id"]}
    # identifiable: phase, dates, treatment name (in a body only)
    assert lips_before["id"] in keys(await _listed(client, clinic, rendition="original", phase="before"))
    assert lips_after["id"] not in keys(await _listed(client, clinic, rendition="original", phase="before"))
    window = keys(await _listed(client, clinic, rendition="original", taken_from="2026-01-01", taken_to="2026-02-28"))
    assert lips_after["id"] in window and peel_photo["id"] not in window and lips_before["id"] not in window
    named = keys(await _listed(client, clinic, search={"rendition": "original", "treatment": "lip"}))
    assert {lips_before["id"], lips_after["id"]} <= named and peel_photo["id"] not in named and h_lips not in named

    # The de-identified view accepts no identifiable-only filter, and a name never goes in a URL.
    for params in ({"rendition": "deidentified", "phase": "after"}, {"phase": "after"},
                   {"rendition": "deidentified", "taken_from": "2025-01-01"}, {"treatment": "lip"}):
        await _listed(client, clinic, status=422, **params)
    await _listed(client, clinic, search={"rendition": "deidentified", "treatment": "lip"}, status=422)
    await _listed(client, clinic, search={"treatment": "lip"}, status=422)
    await _listed(client, clinic, year="1800", status=422)


async def test_a_nul_in_a_text_filter_is_a_422_in_the_problem_shape(client, clinic):
    """PostgreSQL text cannot hold a NUL: a name with one was a 500 there."""
    for search in ({"rendition": "original", "treatment": "lip\u0000"}, {"rendition": "original", "treatment": "\u0000"}):
        resp = await client.post("/v1/releasable/search", json={"purpose": "education", **search},
                                 headers=clinic.auth("marketing"))
        assert resp.status == 422, await resp.text()
        assert resp.content_type == "application/problem+json"
        assert (await resp.json())["status"] == 422
    await _types(client, clinic, ["Peel\u0000"], status=422)
