"""Conditional reads: If-None-Match answers 304 only after every check a 200 passes
(role, tenant, key row, the consent gate for release thumbnails), and is audited."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from tests.consent.conftest import Api, api, face_jpeg  # noqa: F401  (shared fixture)
from vault.appkeys import RUNTIME


async def audit_outcomes(client, clinic, media_id: str, action: str) -> list[str]:
    resp = await client.get("/v1/audit", params={"action": action, "target": media_id, "limit": "200"},
                            headers=clinic.auth("auditor"))
    assert resp.status == 200, await resp.text()
    return [entry["outcome"] for entry in (await resp.json())["items"]]


async def thumbnail(client, clinic, media_id: str, *, role: str = "records", etag: str | None = None):
    headers = {**clinic.auth(role), **({"If-None-Match": etag} if etag else {})}
    return await client.get(f"/v1/media/{media_id}/thumbnail", params={"size": "256"}, headers=headers)


async def test_a_matching_tag_is_304_audited_and_checked_like_a_200(api: Api, client, clinic, other_clinic):
    photo = await api.photo(await api.patient())
    first = await thumbnail(client, clinic, photo["id"])
    assert first.status == 200
    etag = first.headers["ETag"]
    assert first.headers["Cache-Control"] == "private, no-cache"
    assert photo["id"] not in etag and len(etag.strip('"')) == 32  # a digest, never an id

    again = await thumbnail(client, clinic, photo["id"], etag=etag)
    assert again.status == 304 and await again.read() == b""
    assert again.headers["ETag"] == etag and again.headers["Cache-Control"] == "private, no-cache"
    assert (await thumbnail(client, clinic, photo["id"], etag=f"W/{etag}, \"other\"")).status == 304  # weak match, a list
    assert (await thumbnail(client, clinic, photo["id"], etag='"other"')).status == 200
    assert await audit_outcomes(client, clinic, photo["id"], "media.thumbnail") == ["ok", "not_modified", "not_modified", "ok"]

    # role, then tenant: the tag buys nothing
    assert (await thumbnail(client, clinic, photo["id"], role="marketing", etag=etag)).status == 403
    assert (await thumbnail(client, other_clinic, photo["id"], etag=etag)).status == 404
    assert (await thumbnail(client, other_clinic, photo["id"], etag="*")).status == 404

    # content: the original's own tag; 304 before Range; Range and HEAD unchanged
    content = await client.get(f"/v1/media/{photo['id']}/content", headers=clinic.auth("records"))
    assert content.status == 200 and content.headers["ETag"] != etag
    tag = content.headers["ETag"]
    ranged = await client.get(f"/v1/media/{photo['id']}/content", headers={**clinic.auth("records"), "Range": "bytes=0-9"})
    assert ranged.status == 206 and len(await ranged.read()) == 10
    for headers in ({"If-None-Match": tag}, {"If-None-Match": tag, "Range": "bytes=0-9"}):
        resp = await client.get(f"/v1/media/{photo['id']}/content", headers={**clinic.auth("records"), **headers})
        assert resp.status == 304 and await resp.read() == b""
    head = await client.head(f"/v1/media/{photo['id']}/content", headers=clinic.auth("records"))
    assert head.status == 200 and head.headers["ETag"] == tag
    assert (await audit_outcomes(client, clinic, photo["id"], "media.content")).count("not_modified") == 2


async def test_a_matching_tag_is_refused_after_deletion_erasure_or_revocation(api: Api, client, clinic):
    pid = await api.patient()
    deleted, erased = await api.photo(pid), await api.photo(await api.patient())
    tags = {}
    for photo in (deleted, erased):
        tags[photo["id"]] = (await thumbnail(client, clinic, photo["id"])).headers["ETag"]
        assert (await thumbnail(client, clinic, photo["id"], etag=tags[photo["id"]])).status == 304

    assert (await client.delete(f"/v1/media/{deleted['id']}", headers=clinic.auth("dpo"))).status == 200
    assert (await thumbnail(client, clinic, deleted["id"], etag=tags[deleted["id"]])).status == 410

    resp = await client.post(f"/v1/patients/{erased['patient_id']}/erasure", json={"reason": "Art. 17 request"},
                             headers=clinic.auth("erasure"))
    assert resp.status == 200, await resp.text()
    refused = await thumbnail(client, clinic, erased["id"], etag=tags[erased["id"]])
    assert refused.status == 410 and (await refused.json())["error"] == "patient_erased"

    kept = await api.photo(pid)
    tenants = client.server.app[RUNTIME].tenants
    issued = await tenants.create_token(clinic.slug, "records", label="to revoke", request_id="t")
    headers = {"Authorization": f"Bearer {issued.token}"}
    etag = (await client.get(f"/v1/media/{kept['id']}/thumbnail", headers=headers)).headers["ETag"]
    assert (await client.get(f"/v1/media/{kept['id']}/thumbnail", headers={**headers, "If-None-Match": etag})).status == 304
    await tenants.revoke_token(issued.id, request_id="t")
    assert (await client.get(f"/v1/media/{kept['id']}/thumbnail", headers={**headers, "If-None-Match": etag})).status == 401


async def test_a_release_thumbnail_304_passes_the_gate_first(api: Api, client, clinic):
    pid = await api.patient()
    photo = await api.photo(pid, face_jpeg())
    consent = await api.consent(pid, identifiable=False)
    await api.approve(photo["id"])  # the default policy: a person approves the redaction first
    handle = await api.handle(photo["id"], "education")
    url = (await api.releasable())[(handle, "education")]["thumbnail_url"]
    path, query = urlsplit(url).path, {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    first = await client.get(path, params=query)
    assert first.status == 200 and first.headers["Cache-Control"] == "private, no-cache"
    etag = first.headers["ETag"]
    assert photo["id"] not in etag and handle not in etag
    again = await client.get(path, params=query, headers={"If-None-Match": etag})
    assert again.status == 304 and await again.read() == b""
    assert (await audit_outcomes(client, clinic, photo["id"], "release.thumbnail")) == ["ok", "not_modified"]

    await api.withdraw(consent["id"])
    refused = await client.get(path, params=query, headers={"If-None-Match": etag})
    assert refused.status == 403 and (await refused.json())["error"] == "consent_required"


async def test_thumbnail_query_is_checked_on_every_request(api: Api, client, clinic):
    """parse_query keeps a frozen model's result by query string: good strings answer as
    before, bad ones are refused every time (a refusal is never kept)."""
    photo = await api.photo(await api.patient())
    url = f"/v1/media/{photo['id']}/thumbnail"
    for query, status in (("size=256", 200), ("size=300", 422), ("size=300", 422), ("size=1024", 200),
                          ("size=256&size=256", 422), ("size=256&x=1", 422), ("", 200), ("size=256", 200)):
        resp = await client.get(f"{url}?{query}", headers=clinic.auth("records"))
        assert resp.status == status, (query, await resp.text())
