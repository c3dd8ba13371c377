"""Nothing marketing sees links a de-identified item to anything: for a patient with an
identifiable consent (education) and de-identified consents (social media, publication)
on the same photos, no value of marketing's view of a de-identified item — handle,
release id, timestamps, URL paths, headers — appears in any other response marketing can
get, nor across purposes."""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlsplit

from tests.redaction.conftest import face_jpeg

DEIDENTIFIED_PURPOSES = ("social_media", "publication")
#: values every item shares by design: vocabulary, and the asking token's own id
_VOCABULARY = {"photo", "original", "deidentified", "education", "social_media", "publication", "marketing", "after",
               "image/jpeg", "v1", "releasable", "thumbnail", "releases", "download", "media", "Channel"}
#: response headers that say nothing about an item (the rest, ETag included, are compared)
_GENERIC_HEADERS = {"Date", "Server", "Content-Type", "Content-Length", "Cache-Control", "X-Content-Type-Options",
                    "Referrer-Policy", "Accept-Ranges", "Connection", "Keep-Alive"}
#: a listing's link expiry is "now + 10 minutes" for every item of every patient in that
#: second: it says when the listing was asked, not whose photo an item is
_REQUEST_TIME = {"thumbnail_expires_at", "expires"}
_ID_LIKE = re.compile(r"[0-9a-f]{24,}")


def _values(obj, into: set[str], *, key: str = "") -> None:
    """Every leaf value, and every path segment and query value of URLs."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _values(v, into, key=k)
    elif isinstance(obj, list):
        for v in obj:
            _values(v, into, key=key)
    elif isinstance(obj, str) and key not in _REQUEST_TIME:
        into.add(obj)
        if obj.startswith("/") or obj.startswith("http"):
            parts = urlsplit(obj)
            into.update(segment for segment in parts.path.split("/") if segment)
            into.update(v for k, v in parse_qsl(parts.query) if k not in _REQUEST_TIME)
        into.update(_ID_LIKE.findall(obj))


class Seen:
    """What marketing saw, grouped by the item it belongs to: ("d", purpose, handle) for a
    de-identified item, ("i", media id) for an identifiable one."""

    def __init__(self, token_id: str) -> None:
        self.by_owner: dict[tuple, set[str]] = defaultdict(set)
        self.common = _VOCABULARY | {token_id}

    def add(self, owner: tuple, obj) -> None:
        _values(obj, self.by_owner[owner])

    def check(self) -> int:
        compared = 0
        for owner, values in self.by_owner.items():
            if owner[0] != "d":
                continue
            mine = values - self.common
            for other, theirs in self.by_owner.items():
                if other == owner:
                    continue
                shared = mine & theirs
                assert not shared, f"{owner} shares {shared} with {other}"
                compared += 1
        return compared


def _headers(resp) -> dict[str, str]:
    return {k: v for k, v in resp.headers.items() if k not in _GENERIC_HEADERS}


async def _token_id(client, clinic) -> str:
    resp = await client.post("/v1/patients", json={"external_ref": "x"}, headers=clinic.auth("marketing"))
    assert resp.status == 403
    from vault.appkeys import RUNTIME

    principal = await client.server.app[RUNTIME].tenants.authenticate(clinic.tokens["marketing"])
    return principal.token_id


async def test_marketing_sees_nothing_that_links_a_deidentified_item(api, client, clinic):
    pid = await api.patient()
    vocabulary = await client.put("/v1/treatment-types", json={"names": ["Filler"]}, headers=clinic.auth("dpo"))
    type_id = (await vocabulary.json())["items"][0]["id"]
    resp = await client.post(f"/v1/patients/{pid}/treatments", json={"name": "Filler", "performed_on": "2026-03-01",
                                                                    "type_id": type_id}, headers=clinic.auth("practitioner"))
    treatment = (await resp.json())["id"]
    photos = [await api.photo(pid, face_jpeg(), treatment_id=treatment) for _ in range(2)]
    await api.consent(pid, purposes=["education"], identifiable=True)
    await api.consent(pid, purposes=list(DEIDENTIFIED_PURPOSES), identifiable=False)
    for photo in photos:
        await api.approve(photo["id"])
    marketing = clinic.auth("marketing")
    seen = Seen(await _token_id(client, clinic))

    # The listing, with and without a purpose.
    listings = [await (await client.get("/v1/releasable", params=p, headers=marketing)).json()
                for p in ({}, {"purpose": "education"}, {"purpose": "social_media"}, {"purpose": "publication"})]
    items = [i for page in listings for i in page["items"]]
    mine = [i for i in items if i.get("media_id") in {p["id"] for p in photos} or i.get("handle")]
    deidentified = [i for i in mine if i["rendition"] == "deidentified"]
    handles = {(i["handle"], i["purpose"]) for i in deidentified}
    assert len(handles) == 4  # two photos x two de-identified purposes, each its own handle
    for item in deidentified:
        assert set(item) == {"handle", "purpose", "rendition", "kind", "thumbnail_url", "thumbnail_expires_at"}
        assert f"/v1/releasable/{item['handle']}/thumbnail" == urlsplit(item["thumbnail_url"]).path
    for page in listings:  # ordered by handle, never by media id or time
        own = [i["handle"] for i in page["items"] if i.get("handle") in {h for h, _ in handles}]
        assert own == sorted(own)

    def owner(item) -> tuple:
        return ("d", item["purpose"], item["handle"]) if item.get("handle") else ("i", item["media_id"])

    for item in mine:
        seen.add(owner(item), item)
        thumb = await client.get(item["thumbnail_url"])
        # A tag for revalidation (issue 15), per item and purpose: compared below with
        # every other value marketing sees, like the rest of the headers.
        assert thumb.status == 200 and thumb.headers["ETag"] and "Last-Modified" not in thumb.headers
        seen.add(owner(item), _headers(thumb))

    # Filters (issue 18): the de-identified view by treatment type and year only, still in
    # handle order, each item still only its handle; the identifiable-only filters refused.
    year = str(datetime.now(UTC).year)
    for purpose in DEIDENTIFIED_PURPOSES:
        filtered = await (await client.get("/v1/releasable", headers=marketing, params={
            "purpose": purpose, "rendition": "deidentified", "treatment_type": type_id, "year": year})).json()
        got = filtered["items"]
        assert {(i["handle"], i["purpose"]) for i in got} == {h for h in handles if h[1] == purpose}
        assert [i["handle"] for i in got] == sorted(i["handle"] for i in got)
        for item in got:
            assert set(item) == {"handle", "purpose", "rendition", "kind", "thumbnail_url", "thumbnail_expires_at"}
            seen.add(owner(item), item)
    for params in ({"rendition": "deidentified", "phase": "after"}, {"rendition": "deidentified", "taken_from": "2026-01-01"},
                   {"phase": "after"}):
        assert (await client.get("/v1/releasable", params=params, headers=marketing)).status == 422
    for body in ({"rendition": "deidentified", "treatment": "Filler"}, {"treatment": "Filler"}):
        assert (await client.post("/v1/releasable/search", json=body, headers=marketing)).status == 422
    named = await (await client.post("/v1/releasable/search", json={"rendition": "original", "treatment": "Fill"},
                                     headers=marketing)).json()
    assert {i["media_id"] for i in named["items"]} == {p["id"] for p in photos}
    for item in named["items"]:
        seen.add(owner(item), item)

    # A composite is made of identifiable photos by media id: what it answers is the
    # identifiable items' (and a de-identified item shares nothing with it).
    resp = await client.post("/v1/releases/composites", headers=marketing, json={
        "before": photos[0]["id"], "after": photos[1]["id"], "purpose": "education", "recipient": "Channel"})
    assert resp.status == 201, await resp.text()
    composite = await resp.json()
    seen.add(("i", photos[0]["id"]), composite)
    download = await client.get(urlsplit(composite["download_url"]).path, headers=marketing)
    assert download.status == 200 and "ETag" not in download.headers
    seen.add(("i", photos[0]["id"]), _headers(download))

    # Releases of every item, their downloads, and the release list.
    made = {}
    for item in mine:
        ident = item.get("media_id") or item["handle"]
        resp = await client.post(f"/v1/media/{ident}/releases", json={"purpose": item["purpose"], "recipient": "Channel"},
                                 headers=marketing)
        assert resp.status == 201, await resp.text()
        release = await resp.json()
        made[release["id"]] = owner(item)
        seen.add(owner(item), release)
        download = await client.get(urlsplit(release["download_url"]).path, headers=marketing)
        assert download.status == 200 and "ETag" not in download.headers
        seen.add(owner(item), _headers(download))
    # A de-identified item is never reachable by the media id marketing knows from the
    # identifiable listing, for any purpose, nor by the release list's media filter.
    for photo in photos:
        for purpose in DEIDENTIFIED_PURPOSES:
            denied = await api.release(photo["id"], purpose=purpose, status=403)
            assert denied["details"]["reason"] == "not_releasable"
        filtered = await (await client.get("/v1/releases", params={"media_id": photo["id"]}, headers=marketing)).json()
        assert {i["rendition"] for i in filtered["items"]} == {"original"}
        seen.add(("i", photo["id"]), filtered)

    # The grant is withdrawn: recall stamps each release with its own time.
    consents = await (await client.get(f"/v1/patients/{pid}/consents", headers=clinic.auth("dpo"))).json()
    grant = next(c for c in consents["items"] if not c["identifiable"])
    await api.withdraw(grant["id"])
    recall = await (await client.get("/v1/releases", params={"limit": "200"}, headers=marketing)).json()
    ours = [r for r in recall["items"] if r["id"] in made]
    seen.add(("i", photos[0]["id"]), [r for r in recall["items"] if r["id"] == composite["id"]])
    assert len(ours) == len(made) and all(r["recalled_at"] for r in ours if r["rendition"] == "deidentified")
    stamps = [r["recalled_at"] for r in ours if r["recalled_at"]]
    assert len(stamps) == len(set(stamps))
    for r in ours:
        seen.add(made[r["id"]], r)
        if r["rendition"] == "deidentified":
            assert not {"media_id", "patient_id", "consent_id", "approval_id", "treatment_id"} & set(r)
            assert r["handle"] == made[r["id"]][2]
        # Withdrawal and the like do not show as one reason on all of a person's items.
        ident = r.get("media_id") or r["handle"]
        if r["rendition"] == "deidentified":
            denied = await api.release(ident, purpose=r["purpose"], status=403)
            assert denied["details"]["reason"] == "not_releasable"

    assert seen.check() >= 4 * 5  # each de-identified item against every other item seen
