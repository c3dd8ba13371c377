"""The media list with ``since``: a keyset on (updated_at, id), so items sharing a timestamp
are neither skipped nor repeated across pages; capture dates inline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy import update

from tests.consent.conftest import Api
from tests.pipeline.samples import jpeg_with_everything
from vault.appkeys import RUNTIME
from vault.media.models import Media


async def pages(client, clinic, pid: str, **params) -> list[list[dict]]:
    out, cursor = [], None
    while True:
        query = {k: v for k, v in {**params, "cursor": cursor}.items() if v is not None}
        resp = await client.get(f"/v1/patients/{pid}/media", params=query, headers=clinic.auth("records"))
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        out.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return out


async def test_equal_timestamps_are_neither_skipped_nor_repeated(client, clinic):
    api = Api(client, clinic)
    pid = await api.patient()
    ids = [(await api.photo(pid))["id"] for _ in range(5)]
    same = datetime(2020, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    async with client.server.app[RUNTIME].db.transaction() as session:  # four changes in the same microsecond
        await session.execute(update(Media).where(Media.id.in_(ids[1:])).values(updated_at=same))
        await session.execute(update(Media).where(Media.id == ids[0]).values(updated_at=same - timedelta(seconds=1)))

    since = (same - timedelta(seconds=5)).isoformat()
    got = await pages(client, clinic, pid, since=since, limit=2)
    assert [len(p) for p in got] == [2, 2, 1]
    flat = [item["id"] for page in got for item in page]
    assert flat == [ids[0], *sorted(ids[1:])]  # oldest change first, then by id within the instant
    assert [item["id"] for page in await pages(client, clinic, pid, since=same.isoformat(), limit=1) for item in page] == sorted(ids[1:])
    assert await pages(client, clinic, pid, since=(same + timedelta(microseconds=1)).isoformat()) == [[]]
    # the same instant in another offset is the same instant
    other = same.astimezone(timezone(timedelta(hours=-5))).isoformat()
    assert len([i for p in await pages(client, clinic, pid, since=other) for i in p]) == 4

    # a change after a sync shows up in the next one
    resp = await client.patch(f"/v1/media/{ids[0]}", json={"phase": "before"}, headers=clinic.auth("practitioner"))
    assert resp.status == 200
    later = [i["id"] for p in await pages(client, clinic, pid, since=(same + timedelta(seconds=1)).isoformat()) for i in p]
    assert later == [ids[0]]
    # without since: the whole list by id, as before
    assert sorted(i["id"] for p in await pages(client, clinic, pid, limit=2) for i in p) == sorted(ids)


async def test_capture_dates_inline(client, clinic):
    api = Api(client, clinic)
    pid = await api.patient()
    photo = await api.photo(pid, jpeg_with_everything(trailer=""))
    plain = await api.photo(pid)
    for params in ({}, {"since": "2000-01-01T00:00:00Z"}):
        resp = await client.get(f"/v1/patients/{pid}/media", params=params, headers=clinic.auth("records"))
        items = {i["id"]: i for i in (await resp.json())["items"]}
        assert items[photo["id"]]["captured_at"] == "2019-07-14T09:30:05.123+02:00"
        assert items[plain["id"]]["captured_at"] is None
        assert all(i["capture"] is None for i in items.values())  # the rest of the capture record: GET /v1/media/{id}
    full = await (await client.get(f"/v1/media/{photo['id']}", headers=clinic.auth("records"))).json()
    assert full["captured_at"] == full["capture"]["captured_at"] == "2019-07-14T09:30:05.123+02:00"
    denied = await client.get(f"/v1/patients/{pid}/media", headers=clinic.auth("marketing"))
    assert denied.status == 403


async def test_bad_since_and_cursors_are_422(client, clinic):
    api = Api(client, clinic)
    pid = await api.patient()
    for _ in range(2):
        await api.photo(pid)
    first = await (await client.get(f"/v1/patients/{pid}/media", params={"limit": 1}, headers=clinic.auth("records"))).json()
    timed = await (await client.get(f"/v1/patients/{pid}/media", params={"limit": 1, "since": "2000-01-01T00:00:00Z"},
                                    headers=clinic.auth("records"))).json()
    assert "-" in timed["next_cursor"] and "-" not in first["next_cursor"]
    for params in (
        {"since": "2020-01-01T00:00:00"},                               # no offset: ambiguous
        {"since": "0001-01-01T00:00:00+05:00"},                          # out of range in UTC
        {"since": "yesterday"},
        {"since": "2000-01-01T00:00:00Z", "cursor": first["next_cursor"]},  # a cursor of the other listing
        {"cursor": timed["next_cursor"]},
        {"since": "2000-01-01T00:00:00Z", "cursor": "99999999999999999999-" + "a" * 32},
    ):
        resp = await client.get(f"/v1/patients/{pid}/media", params=params, headers=clinic.auth("records"))
        assert resp.status == 422, (params, resp.status, await resp.text())
