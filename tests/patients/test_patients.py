import secrets

import pytest
from sqlalchemy import text

from vault.appkeys import RUNTIME


def ref() -> str:
    return "MRN-" + secrets.token_hex(6)


async def create(client, clinic, role="practitioner", **fields):
    body = {"external_ref": ref(), **fields}
    resp = await client.post("/v1/patients", json=body, headers=clinic.auth(role))
    return resp, body


async def test_create_read_find_and_rectify(client, clinic):
    resp, body = await create(client, clinic, display_name="Ada Lovelace", date_of_birth="1815-12-10", notes="allergic to latex")
    assert resp.status == 201
    patient = await resp.json()
    assert patient["external_ref"] == body["external_ref"]
    assert patient["display_name"] == "Ada Lovelace"
    assert patient["date_of_birth"] == "1815-12-10"
    assert patient["status"] == "active"

    got = await (await client.get(f"/v1/patients/{patient['id']}", headers=clinic.auth("records"))).json()
    assert got == patient

    found = await client.get("/v1/patients", params={"external_ref": body["external_ref"]}, headers=clinic.auth("dpo"))
    assert [p["id"] for p in (await found.json())["items"]] == [patient["id"]]
    none = await client.get("/v1/patients", params={"external_ref": "nobody"}, headers=clinic.auth("dpo"))
    assert (await none.json())["items"] == []

    resp = await client.patch(f"/v1/patients/{patient['id']}", json={"display_name": "A. King", "notes": None}, headers=clinic.auth("dpo"))
    assert resp.status == 200
    patched = await resp.json()
    assert patched["display_name"] == "A. King" and patched["notes"] is None
    assert patched["external_ref"] == body["external_ref"]

    actions = [e.action for e in await client.server.app[RUNTIME].audit.entries(clinic.id, limit=1000)]
    for action in ("patient.create", "patient.read", "patient.find", "patient.rectify"):
        assert action in actions


async def test_external_ref_is_unique_per_tenant_only(client, clinic, other_clinic):
    resp, body = await create(client, clinic)
    again = await client.post("/v1/patients", json={"external_ref": body["external_ref"]}, headers=clinic.auth("dpo"))
    assert again.status == 409
    assert (await again.json())["error"] == "conflict"
    elsewhere = await client.post("/v1/patients", json={"external_ref": body["external_ref"]}, headers=other_clinic.auth("dpo"))
    assert elsewhere.status == 201


async def test_renaming_to_a_taken_ref_is_refused(client, clinic):
    (_, b1), (r2, _) = await create(client, clinic), await create(client, clinic)
    second = (await r2.json())["id"]
    resp = await client.patch(f"/v1/patients/{second}", json={"external_ref": b1["external_ref"]}, headers=clinic.auth("dpo"))
    assert resp.status == 409


async def test_paging_through_patients(client, make_clinic):
    clinic = await make_clinic()
    ids = {(await (await create(client, clinic))[0].json())["id"] for _ in range(5)}
    seen, cursor = [], None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = await (await client.get("/v1/patients", params=params, headers=clinic.auth("records"))).json()
        seen += [p["id"] for p in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids)


async def test_another_tenants_patient_is_404_everywhere(client, clinic, other_clinic):
    resp, _ = await create(client, clinic)
    pid = (await resp.json())["id"]
    for method, body in (("GET", None), ("PATCH", {"notes": "x"})):
        resp = await client.request(method, f"/v1/patients/{pid}", json=body, headers=other_clinic.auth("dpo"))
        assert resp.status == 404
        assert (await resp.json())["error"] == "not_found"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"external_ref": ""},
        {"external_ref": 12},
        {"external_ref": "x" * 129},
        {"external_ref": "ok", "date_of_birth": "10/12/1815"},
        {"external_ref": "ok", "surprise": 1},
        ["external_ref"],
    ],
    ids=["missing", "empty", "wrong-type", "too-long", "bad-date", "unknown-field", "not-an-object"],
)
async def test_bad_bodies_are_422_and_store_nothing(client, clinic, body):
    before = await _count_patients(client, clinic)
    resp = await client.post("/v1/patients", json=body, headers=clinic.auth("practitioner"))
    assert resp.status == 422
    payload = await resp.json()
    assert payload["error"] == "invalid" and payload["details"]["errors"]
    assert "1815" not in await resp.text()  # submitted values are not echoed
    assert await _count_patients(client, clinic) == before


async def _count_patients(client, clinic) -> int:
    async with client.server.app[RUNTIME].db.session() as s:
        return (await s.execute(text("SELECT COUNT(*) FROM patients WHERE tenant_id = :t"), {"t": clinic.id})).scalar()


async def test_personal_fields_are_ciphertext_in_the_database(client, clinic):
    marker = "Zebedee-" + secrets.token_hex(4)
    resp, body = await create(client, clinic, display_name=marker, notes="rosacea " + marker, date_of_birth="1999-09-09")
    pid = (await resp.json())["id"]
    async with client.server.app[RUNTIME].db.session() as s:
        row = (await s.execute(text("SELECT * FROM patients WHERE id = :i"), {"i": pid})).mappings().one()
    dumped = repr(dict(row))
    for secret in (marker, body["external_ref"], "1999-09-09"):
        assert secret not in dumped
    audit_rows = await client.server.app[RUNTIME].audit.entries(clinic.id, limit=1000)
    assert all(marker not in repr(vars(e)) and body["external_ref"] not in repr(vars(e)) for e in audit_rows)


async def test_sqlite_files_hold_no_plaintext(client, clinic, settings):
    if not settings.database_url.startswith("sqlite"):
        pytest.skip("byte scan of the database file applies to SQLite")
    marker = "Quintessa-" + secrets.token_hex(4)
    await create(client, clinic, display_name=marker)
    from pathlib import Path

    for url in (settings.database_url, settings.keystore_url):
        path = Path(url.split("///", 1)[1])
        for f in (path, path.with_name(path.name + "-wal")):
            if f.exists():
                assert marker.encode() not in f.read_bytes()
