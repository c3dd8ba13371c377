"""Staff accounts and sessions over HTTP (aiohttp test client), on SQLite and PostgreSQL:
enrolment, login with TOTP, replay, lockout, CSRF and Origin, expiry, logout everywhere,
and the session going through the same permission table as a token."""

from __future__ import annotations

import pyotp
import pytest
from sqlalchemy import update

from tests.staff.support import PASSWORD, Authenticator, Browser, enrolled
from vault.appkeys import RUNTIME
from vault.staff.models import StaffAccount, StaffSession
from vault.staff.passwords import check_policy
from vault.errors import ValidationFailed
from vault.staff.service import MAX_FAILURES
from vault.db import utcnow
from datetime import timedelta


def rt_of(client):
    return client.server.app[RUNTIME]


async def test_enrolment_link_shows_a_form_and_is_consumed_only_by_completing_it(client, clinic):
    rt = rt_of(client)
    issued = await rt.staff.create(clinic.slug, "Manager@Clinic.example", "dpo", request_id="t")
    browser = Browser(client)
    for _ in range(2):  # a mail scanner opens it first: nothing is spent
        resp = await browser.get(f"/enrol/{issued.token}")
        assert resp.status == 200
        page = await resp.text()
        assert "<svg" in page and "manager@clinic.example" in page
    secret = (await rt.staff.enrolment(issued.token)).secret
    token = await browser.csrf_of(f"/enrol/{issued.token}")
    weak = await browser.post(f"/enrol/{issued.token}", {"csrf_token": token, "password": "password1234",
                                                         "password2": "password1234", "code": pyotp.TOTP(secret).now()})
    assert weak.status == 422 and "common passwords" in await weak.text()
    resp = await browser.post(f"/enrol/{issued.token}", {"csrf_token": token, "password": PASSWORD, "password2": PASSWORD,
                                                         "code": pyotp.TOTP(secret).now()})
    assert resp.status == 200, await resp.text()
    assert (await browser.get(f"/enrol/{issued.token}")).status == 404
    accounts = {a.email: a for a in await rt.staff.accounts(clinic.slug)}
    assert accounts["manager@clinic.example"].state == "active"
    async with rt.db.session() as session:
        row = await session.get(StaffAccount, issued.staff.id)
    assert secret.encode() not in (row.totp_sealed or b"") and row.password_hash.startswith("$argon2id$")


async def test_one_login_per_person_per_tenant(client, clinic, other_clinic):
    from vault.errors import Conflict

    rt = rt_of(client)
    await rt.staff.create(clinic.slug, "same@clinic.example", "dpo", request_id="t")
    with pytest.raises(Conflict):
        await rt.staff.create(clinic.slug, "Same@Clinic.example", "records", request_id="t")
    await rt.staff.create(other_clinic.slug, "same@clinic.example", "dpo", request_id="t")  # another tenant: its own login
    with pytest.raises(ValidationFailed):
        await rt.staff.create(clinic.slug, "other@clinic.example", "superuser", request_id="t")


def test_password_policy():
    for bad in ("short", "Q1W2E3R4T5Y6", "qwerty123456", "1qaz2wsx3edc"):
        with pytest.raises(ValidationFailed):
            check_policy(bad)
    check_policy("plum tractor velvet 1987")


async def test_login_with_totp_reaches_pages_and_the_api(client, clinic):
    who = await enrolled(rt_of(client), clinic.slug, "dpo")
    browser = Browser(client)
    assert (await browser.get("/app/")).status == 303  # no session: to the login
    await browser.log_in(clinic.slug, who)
    home = await browser.get("/app/")
    assert home.status == 200 and who.email in await home.text()
    assert home.headers["Cache-Control"] == "no-store" and "script-src 'self'" in home.headers["Content-Security-Policy"]
    api = await browser.get("/v1/patients")  # the same session, the same decision path
    assert api.status == 200


async def test_pending_second_factor_reaches_nothing(client, clinic):
    who = await enrolled(rt_of(client), clinic.slug, "dpo")
    browser = Browser(client)
    token = await browser.csrf_of("/")
    resp = await browser.post("/", {"csrf_token": token, "clinic": clinic.slug, "email": who.email, "password": who.password})
    assert resp.status == 303
    pending = browser.cookies["__Host-vault-pending"]
    browser.cookies["__Host-vault-session"] = pending  # even presented as a session
    assert (await browser.get("/app/")).status == 303
    assert (await browser.get("/v1/patients")).status == 401


async def test_a_code_works_once(client, clinic):
    rt = rt_of(client)
    who = await enrolled(rt, clinic.slug, "dpo")
    first = Browser(client)
    await first.log_in(clinic.slug, who)
    replay = Authenticator(who.app.secret, last=who.app.last - 1)  # the same code again
    second = Browser(client)
    token = await second.csrf_of("/")
    await second.post("/", {"csrf_token": token, "clinic": clinic.slug, "email": who.email, "password": who.password})
    token = await second.csrf_of("/login/code")
    resp = await second.post("/login/code", {"csrf_token": token, "code": replay.code()})
    assert resp.status == 401 and "__Host-vault-session" not in second.cookies


async def test_lockout_after_failed_attempts(client, clinic):
    who = await enrolled(rt_of(client), clinic.slug, "records")
    browser = Browser(client)
    for _ in range(MAX_FAILURES):
        token = await browser.csrf_of("/")
        resp = await browser.post("/", {"csrf_token": token, "clinic": clinic.slug, "email": who.email, "password": "wrong" * 4})
        assert resp.status == 401
    token = await browser.csrf_of("/")
    resp = await browser.post("/", {"csrf_token": token, "clinic": clinic.slug, "email": who.email, "password": who.password})
    assert resp.status == 429 and "try again later" in await resp.text()


async def test_cross_site_posts_are_refused(client, clinic):
    rt = rt_of(client)
    who = await enrolled(rt, clinic.slug, "dpo")
    browser = Browser(client)
    await browser.log_in(clinic.slug, who)
    csrf = await browser.csrf_of("/app/patients")
    # a forged form from another site: right cookie, wrong Origin
    evil = Browser(client, cookies=dict(browser.cookies), origin="https://evil.example")
    assert (await evil.post("/app/patients", {"csrf_token": csrf, "external_ref": "X"})).status == 403
    assert (await evil.post("/v1/patients", json={"external_ref": "X1"}, headers={"X-CSRF-Token": csrf})).status == 403
    # same origin without the token
    assert (await browser.post("/app/patients", {"external_ref": "X"})).status == 403
    assert (await browser.post("/v1/patients", json={"external_ref": "X2"})).status == 403
    ok = await browser.post("/v1/patients", json={"external_ref": "X3"}, headers={"X-CSRF-Token": csrf})
    assert ok.status == 201
    # login CSRF: a login posted without the login cookie's value
    fresh = Browser(client)
    assert (await fresh.post("/", {"clinic": clinic.slug, "email": who.email, "password": who.password})).status == 403


async def test_idle_and_absolute_expiry(client, clinic):
    rt = rt_of(client)
    rt.staff.cache_seconds = 0  # the rows are changed behind the service's back: no 2 s trust
    who = await enrolled(rt, clinic.slug, "dpo")
    browser = Browser(client)
    await browser.log_in(clinic.slug, who)
    assert (await browser.get("/app/")).status == 200
    async with rt.db.transaction() as session:
        await session.execute(update(StaffSession).where(StaffSession.staff_id == who.staff_id)
                              .values(last_seen_at=utcnow() - timedelta(seconds=rt.staff.idle.total_seconds() + 1)))
    assert (await browser.get("/app/")).status == 303
    await browser.log_in(clinic.slug, who)
    async with rt.db.transaction() as session:
        await session.execute(update(StaffSession).where(StaffSession.staff_id == who.staff_id)
                              .values(created_at=utcnow() - rt.staff.lifetime))
    assert (await browser.get("/v1/patients")).status == 401


async def test_logout_everywhere_and_disable(client, clinic):
    rt = rt_of(client)
    who = await enrolled(rt, clinic.slug, "dpo")
    one, two = Browser(client), Browser(client)
    await one.log_in(clinic.slug, who)
    await two.log_in(clinic.slug, who)
    csrf = await one.csrf_of("/app/")
    assert (await one.post("/app/logout", {"csrf_token": csrf, "everywhere": "1"})).status == 303
    assert (await two.get("/app/")).status == 303
    await two.log_in(clinic.slug, who)
    await rt.staff.disable(who.staff_id, request_id="t")
    assert (await two.get("/v1/patients")).status == 401


async def test_sessions_meet_the_permission_table_and_tenants(client, clinic, other_clinic):
    rt = rt_of(client)
    marketing, dpo, stranger = (await enrolled(rt, clinic.slug, "marketing"), await enrolled(rt, clinic.slug, "dpo"),
                                await enrolled(rt, other_clinic.slug, "dpo"))
    resp = await client.post("/v1/patients", json={"external_ref": "MRN-77"}, headers=clinic.auth("dpo"))
    patient = (await resp.json())["id"]
    m, d, s = Browser(client), Browser(client), Browser(client)
    await m.log_in(clinic.slug, marketing)
    await d.log_in(clinic.slug, dpo)
    await s.log_in(other_clinic.slug, stranger)
    for path in ("/app/patients", f"/app/patients/{patient}", f"/app/patients/{patient}/erasure", "/app/retention",
                 "/app/audit", f"/v1/patients/{patient}", "/v1/audit"):
        assert (await m.get(path)).status == 403, path
    assert (await d.get(f"/app/patients/{patient}")).status == 200
    assert (await s.get(f"/app/patients/{patient}")).status == 404
    assert (await s.get(f"/v1/patients/{patient}")).status == 404
    entries = (await rt.audit_reads.entries(
        __import__("vault.actor", fromlist=["Actor"]).Actor.cli(clinic.id, "t"), after_seq=0, limit=1000)).items
    assert any(e.actor == f"staff:{dpo.staff_id}" and e.action.startswith("patient") for e in entries)


async def test_signed_links_bind_to_the_session(client, clinic):
    """A signed link (playback, thumbnails) asked for by a web session stands for its staff
    member while they hold an active session: after logging out everywhere it is refused."""
    from vault import signedurls
    from vault.errors import Forbidden

    rt = rt_of(client)
    who = await enrolled(rt, clinic.slug, "records")
    browser = Browser(client)
    await browser.log_in(clinic.slug, who)
    async with rt.db.session() as session:
        principal = await signedurls.signer(session, f"staff:{who.staff_id}", staff=signedurls.StaffBounds.of(rt.settings))
    assert (principal.tenant_id, principal.role) == (clinic.id, "records")
    csrf = await browser.csrf_of("/app/")
    await browser.post("/app/logout", {"csrf_token": csrf, "everywhere": "1"})
    async with rt.db.session() as session:
        with pytest.raises(Forbidden):
            await signedurls.signer(session, f"staff:{who.staff_id}", staff=signedurls.StaffBounds.of(rt.settings))


async def test_one_time_downloads_need_the_csrf_token(client, clinic):
    """A cookie-authenticated GET that spends something (the export's one download) must carry
    the session's CSRF token, so a cross-site <img> or link cannot spend it."""
    from tests.lifecycle.support import drain

    rt = rt_of(client)
    who = await enrolled(rt, clinic.slug, "dpo")
    browser = Browser(client)
    await browser.log_in(clinic.slug, who)
    resp = await client.post("/v1/patients", json={"external_ref": "MRN-DL1"}, headers=clinic.auth("dpo"))
    patient = (await resp.json())["id"]
    csrf = await browser.csrf_of("/app/")
    started = await browser.post(f"/v1/patients/{patient}/exports", json={}, headers={"X-CSRF-Token": csrf})
    assert started.status == 202
    export = (await started.json())["id"]
    await drain(rt, "lifecycle.build_export")
    assert (await browser.get(f"/v1/exports/{export}")).status == 200  # reading progress is safe
    assert (await browser.get(f"/v1/exports/{export}/download")).status == 403
    assert (await browser.get(f"/v1/exports/{export}/download", headers={"Origin": "https://evil.example",
                                                                           "X-CSRF-Token": csrf})).status == 403
    ok = await browser.get(f"/v1/exports/{export}/download", headers={"X-CSRF-Token": csrf})
    assert ok.status == 200 and ok.headers["Content-Type"] == "application/zip"
    await ok.read()


async def test_session_cookies_are_host_prefixed_strict_and_rotated(client, clinic):
    """Every cookie of ours: ``__Host-`` (so Secure, Path=/, no Domain), HttpOnly,
    SameSite=Strict; the session id is a new one at each login, never the pending one."""
    rt = rt_of(client)
    who = await enrolled(rt, clinic.slug, "records")
    browser = Browser(client)
    seen = []
    token = await browser.csrf_of("/")
    resp = await browser.post("/", {"csrf_token": token, "clinic": clinic.slug, "email": who.email, "password": who.password})
    seen += resp.cookies.values()
    pending = browser.cookies["__Host-vault-pending"]
    token = await browser.csrf_of("/login/code")
    resp = await browser.post("/login/code", {"csrf_token": token, "code": who.app.code()})
    seen += resp.cookies.values()
    first = browser.cookies.pop("__Host-vault-session")  # the same person logs in again: a new id
    await browser.log_in(clinic.slug, who)
    second = browser.cookies["__Host-vault-session"]
    assert len({pending, first, second}) == 3
    assert {m.key for m in seen} >= {"__Host-vault-pending", "__Host-vault-session"}
    for morsel in seen:
        assert morsel.key.startswith("__Host-"), morsel.key
        assert morsel["secure"] and morsel["httponly"] and morsel["path"] == "/" and not morsel["domain"], morsel.output()
        assert morsel["samesite"] == "Strict", morsel.output()


async def test_erasing_through_the_api_with_a_session_needs_a_fresh_code(client, clinic):
    """The app's erasure and sweep forms ask for a code; the same steps through /v1 with the
    session cookie need one given within FRESH_AUTH too (403 reauthentication_required),
    so the cookie alone never erases."""
    from vault.staff.service import FRESH_AUTH

    rt = rt_of(client)
    rt.staff.cache_seconds = 0  # the row is changed behind the service's back
    who = await enrolled(rt, clinic.slug, "dpo")
    browser = Browser(client)
    await browser.log_in(clinic.slug, who)
    csrf = await browser.csrf_of("/app/")
    resp = await client.post("/v1/patients", json={"external_ref": "MRN-FRESH"}, headers=clinic.auth("dpo"))
    patient = (await resp.json())["id"]
    async with rt.db.transaction() as session:
        await session.execute(update(StaffSession).where(StaffSession.staff_id == who.staff_id)
                              .values(verified_at=utcnow() - FRESH_AUTH - timedelta(seconds=1)))
    headers = {"X-CSRF-Token": csrf}
    for path, body in ((f"/v1/patients/{patient}/erasure", {"reason": "asked"}), ("/v1/retention/sweep", {"dry_run": False})):
        resp = await browser.post(path, json=body, headers=headers)
        assert resp.status == 403 and (await resp.json())["error"] == "reauthentication_required", path
    assert (await client.get(f"/v1/patients/{patient}", headers=clinic.auth("dpo"))).status == 200  # not erased
    # a current code (the erasure form's) makes the session fresh: then the API call erases
    await rt.staff.reauthenticate(browser.cookies["__Host-vault-session"], who.app.code(), request_id="t")
    resp = await browser.post(f"/v1/patients/{patient}/erasure", json={"reason": "asked"}, headers=headers)
    assert resp.status == 200, await resp.text()


async def test_release_download_and_the_pre_session_forms_need_the_token(client, clinic):
    """The other one-time download (a release, asked for by this marketing session) needs the
    CSRF token and our Origin like the export's; the second-factor and enrolment forms,
    before any session exists, refuse a post without their token."""
    from tests.test_permission_matrix import _media

    rt = rt_of(client)
    who = await enrolled(rt, clinic.slug, "marketing")
    browser = Browser(client)
    await browser.log_in(clinic.slug, who)
    csrf = await browser.csrf_of("/app/")
    media = await _media(client, clinic)  # consented for every purpose
    made = await browser.post(f"/v1/media/{media}/releases", json={"purpose": "education", "recipient": "Journal"},
                              headers={"X-CSRF-Token": csrf})
    assert made.status == 201, await made.text()
    url = (await made.json())["download_url"]
    assert (await browser.get(url)).status == 403
    assert (await browser.get(url, headers={"Origin": "https://evil.example", "X-CSRF-Token": csrf})).status == 403
    ok = await browser.get(url, headers={"X-CSRF-Token": csrf})
    assert ok.status == 200 and await ok.read()

    other = await enrolled(rt, clinic.slug, "records")
    fresh = Browser(client)
    token = await fresh.csrf_of("/")
    await fresh.post("/", {"csrf_token": token, "clinic": clinic.slug, "email": other.email, "password": other.password})
    assert (await fresh.post("/login/code", {"code": other.app.code()})).status == 403
    assert "__Host-vault-session" not in fresh.cookies
    issued = await rt.staff.create(clinic.slug, "late@clinic.example", "records", request_id="t")
    secret = (await rt.staff.enrolment(issued.token)).secret
    resp = await Browser(client).post(f"/enrol/{issued.token}", {"password": PASSWORD, "password2": PASSWORD,
                                                                 "code": pyotp.TOTP(secret).now()})
    assert resp.status == 403
    assert (await rt.staff.enrolment(issued.token)).email == "late@clinic.example"  # the link still works
