"""The staff web app in a real browser (Debian's chromium, Playwright) against a real
``vault serve``: enrolment and login with TOTP, lockout, a forged same-site POST refused,
session expiry, the DPO console's flows end to end, role and tenant refusals; axe-core
finds no serious or critical violation on any page; no hospital number, name or date of
birth appears in any URL the browser asked for, in its history or in the server's log."""

from __future__ import annotations

import http.server
import re
import secrets
import sqlite3
import threading
import time

import pytest

from tests.web.conftest import PASSWORD, Person, Vault, jpeg, person
from vault.staff.service import SESSION_CACHE_SECONDS

NAME, MRN, DOB = "Ada Quill", "MRN-" + secrets.token_hex(4).upper(), "1961-04-23"


@pytest.fixture(scope="module")
def patient(vault: Vault) -> str:
    made = vault.api("POST", "/v1/patients", "practitioner", {"external_ref": MRN, "display_name": NAME,
                                                               "date_of_birth": DOB})
    vault.api("POST", f"/v1/patients/{made['id']}/media?phase=before", "practitioner", jpeg(), "image/jpeg")
    return made["id"]


@pytest.fixture(scope="module")
def dpo(browser_type, vault: Vault, artifacts, admins) -> Person:
    email, link = admins["north"].invite("dpo", "dpo")
    admins["north"].look("staff")
    someone = Person(browser_type, vault, artifacts, "north-dpo")
    someone.enrol(link)
    someone.log_in("north", email, look=True)
    someone.look("home")
    yield someone
    someone.close()


def _wrong_code(someone: Person) -> str:
    import time

    import pyotp

    valid = {pyotp.TOTP(someone.app.secret).at(time.time() + d) for d in (-60, -30, 0, 30, 60)}
    return next(c for c in ("000000", "111111", "222222", "333333", "444444", "555555") if c not in valid)


def test_dpo_console_end_to_end(dpo: Person, patient: str, vault: Vault) -> None:
    page = dpo.page
    # find by hospital number: a POST, so it is in no URL
    page.get_by_role("link", name="Find a patient").first.click()
    dpo.look("search")
    page.get_by_label("Hospital number").fill(MRN)
    page.get_by_role("button", name="Find").click()
    page.get_by_role("heading", name="Patient").wait_for()
    assert page.url.endswith(f"/app/patients/{patient}")
    page.get_by_text(NAME).wait_for()
    # the thumbnail comes through the existing authorised route, with the session cookie
    page.wait_for_function("() => [...document.querySelectorAll(\"img[src*='/thumbnail']\")]"
                           ".some(i => i.complete && i.naturalWidth > 0)", timeout=15_000)
    dpo.look("patient")

    # rectification
    page.get_by_text("Rectify").click()
    page.get_by_label("Name").fill("Ada B. Quill")
    page.get_by_role("button", name="Save the correction").click()
    page.get_by_text("Ada B. Quill").wait_for()

    # consent: record, then withdraw
    page.get_by_text("Record a consent").click()
    page.get_by_label("education").check()
    signed = b"%PDF-1.4\n% the signed form\n%%EOF\n"
    page.get_by_label(re.compile(r"^The signed form")).set_input_files(
        files=[{"name": "signed-form.pdf", "mimeType": "application/pdf", "buffer": signed}])
    page.get_by_role("button", name="Record consent").click()
    page.get_by_role("cell", name="education").first.wait_for()
    with page.expect_download() as evidence:  # the upload (multipart, CSRF first) comes back intact
        page.get_by_role("link", name="Signed form").first.click()
    assert evidence.value.path().read_bytes() == signed
    dpo.look("patient-consent")
    page.get_by_role("button", name="Withdraw").first.click()
    page.get_by_role("heading", name="Consent withdrawn").wait_for()
    dpo.look("withdrawn")
    page.get_by_role("link", name="Back to the patient").click()

    # legal hold with a reason, then lifted; restriction on and off
    page.get_by_label("Reason for a legal hold").fill("pending complaint")
    page.get_by_role("button", name="Place legal hold").click()
    page.get_by_role("status").get_by_text("Legal hold placed").wait_for()
    state = page.locator("#hold-state")
    assert "Held since" in state.inner_text() and "pending complaint" in state.inner_text()
    page.get_by_role("button", name="Lift legal hold").click()
    page.get_by_role("status").get_by_text("Legal hold lifted").wait_for()
    page.get_by_role("button", name="Restrict processing").click()
    page.get_by_text("restricted", exact=True).wait_for()  # the status in the details
    assert "was lifted" in state.inner_text() and "Restricted:" in state.inner_text()
    dpo.look("patient-hold")
    page.get_by_role("button", name="Lift the restriction").click()
    page.get_by_role("status").get_by_text("The restriction is lifted").wait_for()

    # subject-access export: progress, then the one download (a POST with the CSRF token)
    page.get_by_role("button", name="Start a subject-access export").click()
    page.get_by_role("heading", name="Subject-access export").wait_for()
    dpo.look("export")
    page.get_by_role("button", name="Download the ZIP (once)").wait_for(timeout=60_000)
    with page.expect_download() as download:
        page.get_by_role("button", name="Download the ZIP (once)").click()
    assert download.value.suggested_filename.endswith(".zip")
    dpo.look("export-ready")

    # erasure: a confirmation page and a fresh authenticator code, then the receipt
    page.goto(f"/app/patients/{patient}/erasure")
    dpo.look("erasure")
    page.get_by_label("Reason").fill("asked by the patient")
    page.get_by_label("I confirm that this patient is to be erased").check()
    page.get_by_label("A current authenticator code").fill(_wrong_code(dpo))
    page.get_by_role("button", name="Erase now").click()
    page.get_by_role("alert").wait_for()  # a wrong code erases nothing
    page.get_by_label("Reason").fill("asked by the patient")
    page.get_by_label("I confirm that this patient is to be erased").check()
    page.get_by_label("A current authenticator code").fill(dpo.app.code())
    page.get_by_role("button", name="Erase now").click()
    page.get_by_role("heading", name="Erasure receipt").wait_for()
    dpo.look("receipt")
    with page.expect_download() as receipt:
        page.get_by_role("link", name="Download the receipt (JSON)").click()
    assert receipt.value.suggested_filename.startswith("erasure-receipt-")
    with page.expect_download() as key:
        page.get_by_role("link", name="Download the public key").click()
    assert "PUBLIC KEY" in key.value.path().read_text()


def test_retention_and_audit_pages(dpo: Person, vault: Vault) -> None:
    due = vault.api("POST", "/v1/patients", "practitioner", {"external_ref": "MRN-OLD-" + secrets.token_hex(3)})["id"]
    vault.api("POST", f"/v1/patients/{due}/treatments", "practitioner", {"name": "Peel", "performed_on": "2010-03-04"})
    page = dpo.page
    page.goto("/app/retention")
    page.get_by_label("Clock").first.select_option("last_treatment")
    page.get_by_label("Erase after (e.g. P7Y, P24M)").first.fill("P7Y")
    page.get_by_role("button", name="Save the policy").click()
    page.get_by_text("Policy saved").wait_for()
    page.get_by_role("button", name="Run a dry run").click()
    page.get_by_role("heading", name=re.compile(r"^Dry run [0-9a-f]{32}$")).wait_for()
    page.get_by_role("link", name=f"{due[:8]}…").wait_for()  # listed, with its reason
    dpo.look("retention")
    page.get_by_label("A current authenticator code").fill(dpo.app.code())
    page.get_by_role("button", name=re.compile(r"^Erase (this patient|these \d+ patients)$")).click()
    page.get_by_text(re.compile(r"Swept: [1-9]\d* erased")).wait_for()
    assert re.search(r"/app/retention/sweeps/[0-9a-f]{32}$", page.url)  # the outcome has a page of its own
    dpo.look("retention-swept")
    # the clean-up jobs' progress: a <progress> bar and the same in words, kept current by
    # /static/app.js polling GET /v1/retention/sweeps/{id} (the in-process worker runs them)
    bar = page.get_by_role("progressbar", name="Clean-up: files deleted, recalls and webhooks sent")
    page.locator("#sweep-state").get_by_text("done").wait_for(timeout=60_000)
    assert bar.evaluate("bar => bar.value") == bar.evaluate("bar => bar.max") == 1
    cleaned, erased = page.locator("#sweep-cleaned").inner_text(), page.locator("#sweep-erased").inner_text()
    assert cleaned == erased and int(erased) >= 1
    dpo.look("retention-sweep-done")
    assert page.goto(f"/app/patients/{due}").status == 410  # the sweep erased the patient it listed
    page.goto("/app/audit")
    page.get_by_label("Staff member or token").fill(dpo.email)
    page.get_by_role("button", name="Filter").click()
    page.get_by_role("cell", name=dpo.email).first.wait_for()
    # a machine is named by its token's label (the camera app created the patient above)
    page.get_by_label("Staff member or token").fill("camera app")
    page.get_by_role("button", name="Filter").click()
    page.get_by_role("cell", name="token: camera app").first.wait_for()
    page.get_by_role("button", name="Verify the chain").click()
    page.get_by_text("are intact").wait_for()
    dpo.look("audit")


def test_admin_manages_staff(admins, vault: Vault) -> None:
    admin = admins["north"]
    page = admin.page
    page.goto("/app/staff")
    page.get_by_role("cell", name="dpo@north.example").wait_for()
    admin.look("staff-list")
    page.goto("/app/webhooks")
    admin.look("webhooks")
    page.get_by_label("Endpoints (one https URL a line)").fill("http://10.1.2.3/vault-events")
    page.get_by_role("button", name="Save the endpoints").click()
    page.get_by_text("a webhook destination was refused").wait_for()  # plain http to a private address
    admin.look("webhooks-refused")
    assert page.goto("/app/patients").status == 403  # admin never reads patient data
    assert page.goto("/v1/patients").status == 403
    assert not admin.violations, admin.violations


def test_marketing_and_other_tenant_are_refused(browser_type, vault: Vault, artifacts, admins, patient: str) -> None:
    marketing = person(browser_type, vault, artifacts, admins, "north", "marketing", "marketing")
    for path in ("/app/patients", f"/app/patients/{patient}", f"/app/patients/{patient}/erasure", "/app/retention",
                 "/app/audit", "/app/staff", f"/v1/patients/{patient}", "/v1/audit", "/v1/retention-policy"):
        assert marketing.page.goto(path).status == 403, path
    marketing.page.goto("/app/audit")
    marketing.look("forbidden")
    marketing.close()
    stranger = person(browser_type, vault, artifacts, admins, "south", "dpo", "dpo")
    other = vault.api("POST", "/v1/patients", "practitioner", {"external_ref": "S-1"})["id"]
    for path in (f"/app/patients/{other}", f"/v1/patients/{other}", f"/app/patients/{other}/erasure"):
        assert stranger.page.goto(path).status == 404, path
    stranger.look("not-found")
    stranger.close()
    assert not marketing.violations + stranger.violations


def test_lockout_after_failed_logins(browser_type, vault: Vault, artifacts, admins) -> None:
    email, link = admins["north"].invite("records", "records")
    someone = Person(browser_type, vault, artifacts, "north-records")
    someone.enrol(link)
    page = someone.page
    for _ in range(5):
        page.goto("/")
        page.get_by_label("Clinic").fill("north")
        page.get_by_label("E-mail address").fill(email)
        page.get_by_label("Password").fill("not my password at all")
        page.get_by_role("button", name="Continue").click()
        page.get_by_role("alert").wait_for()
    page.goto("/")
    page.get_by_label("Clinic").fill("north")
    page.get_by_label("E-mail address").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Continue").click()
    page.get_by_text("try again later").wait_for()
    someone.look("locked")
    someone.close()
    assert not someone.violations, someone.violations


def test_login_with_the_keyboard_alone(browser_type, vault: Vault, artifacts, admins) -> None:
    """Tab from the top of the page: the skip link first, then each field in order; Enter
    sends each form. Nothing needs a pointer."""
    email, link = admins["north"].invite("records", "keys")
    someone = Person(browser_type, vault, artifacts, "north-keys")
    someone.enrol(link)
    page = someone.page
    page.goto("/")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.textContent") == "Skip to content"
    for field, value in (("clinic", "north"), ("email", email), ("password", PASSWORD)):
        page.keyboard.press("Tab")
        assert page.evaluate("() => document.activeElement.id") == field
        page.keyboard.type(value)
    page.keyboard.press("Enter")
    page.get_by_label("Code").wait_for()
    for _ in range(6):  # the field has autofocus; else Tab reaches it (skip link, header links first)
        if page.evaluate("() => document.activeElement.id") == "code":
            break
        page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.id") == "code"
    page.keyboard.type(someone.app.code())
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="Welcome").wait_for()
    someone.look("keyboard-home")
    someone.close()
    assert not someone.violations, someone.violations


class _Attacker(http.server.BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:  # an auto-submitting form: the classic forged POST
        body = (f'<html><body><form id="f" method="post" action="{self.target}/app/patients">'
                '<input name="external_ref" value="MRN-PROBE"></form>'
                '<script>document.getElementById("f").submit()</script></body></html>').encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_forged_same_site_post_is_refused_and_sessions_expire(browser_type, vault: Vault, artifacts, admins) -> None:
    someone = person(browser_type, vault, artifacts, admins, "north", "practitioner", "nurse")
    # Another origin on the same site (localhost, another port): SameSite=Strict still
    # sends the cookie, so the Origin check and the CSRF token must refuse it.
    _Attacker.target = vault.base
    attacker = http.server.HTTPServer(("127.0.0.1", 0), _Attacker)
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    try:
        with someone.page.expect_response(lambda r: r.url == vault.base + "/app/patients") as answer:
            someone.page.goto(f"http://localhost:{attacker.server_address[1]}/")
        assert answer.value.status == 403
        someone.page.get_by_role("heading", name="Not allowed").wait_for()
        someone.look("csrf-refused")
    finally:
        attacker.shutdown()
        attacker.server_close()
    assert someone.page.goto("/app/").status == 200  # still logged in
    # idle expiry: the session's last request is made older than the idle limit
    with sqlite3.connect(vault.data / "vault.sqlite3") as db:
        db.execute("UPDATE staff_sessions SET last_seen_at = '2000-01-01 00:00:00.000000' WHERE staff_id IN "
                   "(SELECT id FROM staff_accounts WHERE email = ?)", (someone.email,))
    time.sleep(SESSION_CACHE_SECONDS + 0.5)  # a resolved session is trusted this long (like a token)
    someone.page.goto("/app/")
    someone.page.get_by_role("heading", name="Log in").wait_for()
    assert someone.page.url == vault.base + "/"
    someone.close()
    assert not someone.violations, someone.violations


def test_zz_no_patient_data_in_urls_history_or_logs(dpo: Person, vault: Vault) -> None:
    history = dpo.page.evaluate("() => window.history.length")
    assert history > 1
    for url in dpo.urls:
        for secret in (MRN, NAME, NAME.replace(" ", "+"), NAME.replace(" ", "%20"), DOB, "Quill"):
            assert secret not in url, url
    log = vault.log.read_text()
    for secret in (MRN, "Quill", DOB):
        assert secret not in log
    assert not dpo.violations, dpo.violations
