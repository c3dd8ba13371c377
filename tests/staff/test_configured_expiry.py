"""Session expiry as configured, not as defaulted: with VAULT_STAFF_IDLE_SECONDS and
VAULT_STAFF_SESSION_SECONDS set to other values than 30 minutes and 12 hours, a web
session and the signed links it asked for (playback, release thumbnails) live exactly as
long as each other (SQLite and PostgreSQL)."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from sqlalchemy import update

from tests.staff.support import Browser, enrolled
from vault import signedurls
from vault.appkeys import RUNTIME
from vault.db import utcnow
from vault.errors import Forbidden
from vault.media.service import PLAYBACK
from vault.staff.models import StaffSession

IDLE = timedelta(hours=2)  # the default is 30 minutes
LIFETIME = timedelta(hours=3)  # the default is 12 hours


@pytest.fixture
def settings(settings):
    return dataclasses.replace(settings, staff_idle_seconds=int(IDLE.total_seconds()),
                               staff_session_seconds=int(LIFETIME.total_seconds()))


async def _age(rt, staff_id: str, *, seen: timedelta, created: timedelta) -> None:
    now = utcnow()
    async with rt.db.transaction() as session:
        await session.execute(update(StaffSession).where(StaffSession.staff_id == staff_id)
                              .values(last_seen_at=now - seen, created_at=now - created))


async def test_signed_links_follow_the_configured_session_expiry(client, clinic):
    rt = client.server.app[RUNTIME]
    rt.staff.cache_seconds = 0  # the rows are changed behind the service's back: no 2 s trust
    who = await enrolled(rt, clinic.slug, "records")
    browser = Browser(client)
    await browser.log_in(clinic.slug, who)
    media_id = "0" * 32  # the signature binds an id; the link is judged before the media is read
    params = await signedurls.sign(rt.keys, clinic.id, purpose=PLAYBACK, resource=media_id,
                                   token_id=f"staff:{who.staff_id}", expires_at=utcnow() + timedelta(minutes=5))

    async def link_works() -> bool:
        try:
            actor = await rt.media.playback_actor(media_id, params.query(), request_id="t")
        except Forbidden:
            return False
        return actor.token_id == f"staff:{who.staff_id}"

    # 45 minutes idle: past the default, within the configured 2 hours: session and link live
    await _age(rt, who.staff_id, seen=timedelta(minutes=45), created=timedelta(minutes=50))
    assert await link_works()
    assert (await browser.get("/app/")).status == 200
    # just past the configured idle limit: both end
    await _age(rt, who.staff_id, seen=IDLE + timedelta(seconds=5), created=IDLE + timedelta(minutes=1))
    assert not await link_works()
    assert (await browser.get("/app/")).status == 303
    # active a moment ago but older than the configured lifetime (within the default 12 h): both end
    await browser.log_in(clinic.slug, who)
    await _age(rt, who.staff_id, seen=timedelta(seconds=1), created=LIFETIME + timedelta(seconds=5))
    assert not await link_works()
    assert (await browser.get("/app/")).status == 303
