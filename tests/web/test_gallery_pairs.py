"""Issue 18, item 4's filters and item 5's composite in a real browser, on a phone and on a
desktop: the gallery seeded with consents of every kind shows exactly the consented items,
identifiable ones as before/after pairs where consent covers both photos; filters for
identifiable items (treatment, type, phase, dates) and for de-identified ones (type and
year only); a pair released as one composite image and downloaded once (same height,
same scale, no metadata); a withdrawal taking the pair out at the next load and onto the
recall list; the take-down recorded. Screenshots and axe on every page. Tenant "south",
so the north tests' exact counts stay theirs."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
from dataclasses import dataclass
from datetime import date

import pytest

from tests.consent.test_composites import dark_rows, pixels, striped
from tests.web.conftest import Vault, jpeg, person, reload_until_listed
from vault.pipeline.composite import layout

SOUTH = "south"
BEFORE_SIZE, AFTER_SIZE = (320, 240), (240, 300)


@dataclass
class Seeded:
    before: str  # patient P: a pair, both photos consented
    after: str
    pair_consent: str
    single: str  # patient Q: consent covers the before photo only
    single_after: str
    hidden: list[str]
    anonymous: str  # de-identified (marketing), type "Chemical peel"
    types: dict[str, str]


def _api(vault: Vault, method: str, path: str, role: str, body=None, content_type: str = "application/json") -> dict:
    return vault.api(method, path, role, body, content_type, tenant=SOUTH)


def _patient(vault: Vault) -> str:
    return _api(vault, "POST", "/v1/patients", "practitioner", {"external_ref": "S-" + secrets.token_hex(4)})["id"]


def _treatment(vault: Vault, patient: str, name: str, type_id: str) -> str:
    return _api(vault, "POST", f"/v1/patients/{patient}/treatments", "practitioner",
                {"name": name, "performed_on": "2026-03-01", "type_id": type_id})["id"]


def _photo(vault: Vault, patient: str, data: bytes, *, phase: str, treatment: str | None = None) -> str:
    query = f"?phase={phase}" + (f"&treatment_id={treatment}" if treatment else "")
    return _api(vault, "POST", f"/v1/patients/{patient}/media{query}", "practitioner", data, "image/jpeg")["id"]


def _consent(vault: Vault, patient: str, purposes: list[str], identifiable: bool, media: list[str] | None = None) -> str:
    body = {"purposes": purposes, "identifiable": identifiable, **({"media_ids": media} if media else {})}
    return _api(vault, "POST", f"/v1/patients/{patient}/consents", "practitioner", body)["id"]


def _approve(vault: Vault, media: str) -> None:
    """Approve the redaction as the dpo once the full-resolution face search has run (the
    photo is in the review queue only then; an approval before it would be voided)."""
    import time

    for _ in range(120):
        queue = _api(vault, "GET", "/v1/redaction-reviews?state=pending&limit=200", "dpo")
        if media in {i["media_id"] for i in queue["items"]}:
            seen = _api(vault, "GET", f"/v1/media/{media}/redaction", "dpo")
            _api(vault, "POST", f"/v1/media/{media}/redaction/approve", "dpo", {"digest": seen["digest"]})
            return
        time.sleep(0.5)
    raise AssertionError("the photo never reached the review queue")


@pytest.fixture(scope="module")
def seeded(vault: Vault) -> Seeded:
    practitioner, dpo = vault.cli_parallel([
        ("token", "create", "--tenant", SOUTH, "--role", "practitioner", "--label", "south camera"),
        ("token", "create", "--tenant", SOUTH, "--role", "dpo", "--label", "south dpo app"),
    ])
    vault.tokens[f"{SOUTH}:practitioner"] = practitioner.strip().splitlines()[-1]
    vault.tokens[f"{SOUTH}:dpo"] = dpo.strip().splitlines()[-1]
    types = {t["name"]: t["id"] for t in
             _api(vault, "PUT", "/v1/treatment-types", "dpo", {"names": ["Lip filler", "Chemical peel"]})["items"]}
    p = _patient(vault)
    lips = _treatment(vault, p, "Upper lip filler", types["Lip filler"])
    before = _photo(vault, p, striped(BEFORE_SIZE, (200, 60, 60)), phase="before", treatment=lips)
    after = _photo(vault, p, striped(AFTER_SIZE, (60, 60, 200)), phase="after", treatment=lips)
    pair_consent = _consent(vault, p, ["marketing"], True)
    q = _patient(vault)
    q_lips = _treatment(vault, q, "Lower lip filler", types["Lip filler"])
    single = _photo(vault, q, jpeg(), phase="before", treatment=q_lips)
    single_after = _photo(vault, q, jpeg(), phase="after", treatment=q_lips)
    _consent(vault, q, ["marketing"], True, [single])  # the after photo is not covered
    r, s, t = _patient(vault), _patient(vault), _patient(vault)
    education_only, no_consent, withdrawn = _photo(vault, r, jpeg(), phase="after"), _photo(vault, s, jpeg(), phase="after"), \
        _photo(vault, t, jpeg(), phase="after")
    _consent(vault, r, ["education"], True)
    _api(vault, "POST", f"/v1/consents/{_consent(vault, t, ['marketing'], True)}/withdraw", "practitioner", {})
    u = _patient(vault)
    peel = _treatment(vault, u, "Glycolic peel", types["Chemical peel"])
    anonymous = _photo(vault, u, jpeg(), phase="after", treatment=peel)
    _consent(vault, u, ["marketing"], False)
    _approve(vault, anonymous)
    return Seeded(before=before, after=after, pair_consent=pair_consent, single=single, single_after=single_after,
                  hidden=[education_only, no_consent, withdrawn, single_after], anonymous=anonymous, types=types)


def _open_gallery(page) -> None:
    page.goto("/app/gallery?purpose=marketing")
    page.wait_for_function("() => [...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)")


def _shown(page) -> tuple[list[str], list[str], list[str]]:
    """(pairs as 'before+after', identifiable singles, de-identified handles) on the page."""
    pairs = page.locator("[data-pair]").evaluate_all("els => els.map(e => e.dataset.pair)")
    singles = page.locator("li.card[data-item]").evaluate_all("els => els.map(e => e.dataset.item)")
    return pairs, [s for s in singles if not s.startswith("h_")], [s for s in singles if s.startswith("h_")]


def _exif_groups(path) -> set[str]:
    found = json.loads(subprocess.run(["exiftool", "-j", "-a", "-G1", str(path)], capture_output=True, text=True,
                                      check=True, timeout=60).stdout)[0]
    return {key.split(":")[0] for key in found if ":" in key}


def test_gallery_pairs_filters_composite_withdrawal_takedown(browser_type, vault: Vault, artifacts, admins,
                                                             seeded: Seeded) -> None:
    phone = person(browser_type, vault, artifacts, admins, SOUTH, "marketing", "gallery-phone", mobile=True)
    desk = person(browser_type, vault, artifacts, admins, SOUTH, "marketing", "gallery-desk")
    for who in (phone, desk):
        _open_gallery(who.page)
        who.look("gallery")
        pairs, singles, handles = _shown(who.page)
        # exactly the consented items: a pair where consent covers both photos, one photo
        # where it covers one, the approved de-identified photo by its handle only
        assert pairs == [f"{seeded.before}+{seeded.after}"]
        assert singles == [seeded.single] and len(handles) == 1
        html = who.page.content()
        assert seeded.anonymous not in html and not any(h in html for h in seeded.hidden)
    page = desk.page

    # De-identified filters: type and year only.
    page.get_by_label("Type of treatment").select_option(label="Lip filler")
    page.get_by_role("button", name="Filter").click()
    page.get_by_role("heading", name="De-identified (0)").wait_for()
    page.get_by_label("Type of treatment").select_option(label="Chemical peel")
    page.get_by_label("Year").fill(str(date.today().year))
    page.get_by_role("button", name="Filter").click()
    page.get_by_role("heading", name="De-identified (1)").wait_for()
    page.get_by_label("Year").fill("2001")
    page.get_by_role("button", name="Filter").click()
    page.get_by_role("heading", name="De-identified (0)").wait_for()
    # Identifiable filters: phase, treatment, dates (in a POST body, never in the URL).
    page.get_by_label("Year").fill("")
    page.get_by_label("Phase").select_option("after")
    page.get_by_role("button", name="Filter").click()
    page.get_by_role("heading", name="Identifiable (1)").wait_for()
    assert _shown(page)[0] == [] and _shown(page)[1] == [seeded.after]
    page.get_by_label("Phase").select_option("")
    page.get_by_label("Treatment", exact=True).fill("lower lip")
    page.get_by_role("button", name="Filter").click()
    page.get_by_role("heading", name="Identifiable (1)").wait_for()
    assert _shown(page)[1] == [seeded.single]
    page.get_by_label("Treatment", exact=True).fill("")
    page.get_by_label("Treatment type").select_option(label="Lip filler")
    page.get_by_label("Taken until").fill("2001-01-01")
    page.get_by_role("button", name="Filter").click()
    page.get_by_role("heading", name="Identifiable (0)").wait_for()
    desk.look("gallery-filtered")
    assert "lip" not in page.url.lower()

    # The pair released as one image, downloaded once.
    _open_gallery(page)
    page.get_by_label(f"Recipient of the pair {seeded.before[:8]}").fill("Clinic Instagram")
    page.get_by_role("button", name=f"Release pair {seeded.before[:8]} as one image").click()
    page.get_by_role("heading", name="Released").wait_for(timeout=120_000)  # rendered by the one (shared) decoder worker
    page.get_by_text("one before/after image").wait_for()
    desk.look("composite-released")
    with page.expect_download() as got:
        page.get_by_role("button", name="Download the file (once)").click()
    path = got.value.path()
    data = path.read_bytes()
    plan = layout(BEFORE_SIZE, AFTER_SIZE)
    out = pixels(data)
    assert out.shape[:2] == (plan.band + plan.height, plan.size[0])
    left, right = out[plan.band:, :plan.widths[0]], out[plan.band:, plan.left(1):]
    assert left.shape[0] == right.shape[0] == plan.height  # same height
    (lt, lb), (rt, rb) = dark_rows(left[:, 8]), dark_rows(right[:, 8])
    assert abs(lt - rt) <= 2 and abs(lb - rb) <= 2  # same scale: each stripe at the same rows
    assert not _exif_groups(path) & {"IFD0", "ExifIFD", "XMP", "XMP-x", "IPTC", "GPS", "MakerNotes", "ICC_Profile", "Comment"}
    with page.expect_response(lambda r: r.request.method == "POST") as again:
        page.get_by_role("button", name="Download the file (once)").click()
    assert again.value.status == 410

    # The patient withdraws: the pair is gone at the next load (on the phone too), and on the recall list.
    _api(vault, "POST", f"/v1/consents/{seeded.pair_consent}/withdraw", "practitioner", {})
    _open_gallery(phone.page)
    pairs, singles, _ = _shown(phone.page)
    assert pairs == [] and seeded.before not in phone.page.content() and singles == [seeded.single]
    phone.look("gallery-after-withdrawal")
    phone.page.goto("/app/recalls")
    phone.page.get_by_role("row").filter(has_text="Clinic Instagram").wait_for()
    phone.look("recalls")
    page.goto("/app/recalls")
    row = page.get_by_role("row").filter(has_text="Clinic Instagram")
    row.wait_for()
    assert row.get_by_role("cell").first.inner_text().startswith(seeded.before[:12])
    desk.look("recalls")
    row.get_by_role("button", name=f"Confirm {seeded.before[:10]} taken down").click()
    page.get_by_role("status").get_by_text("The take-down is recorded.").wait_for()
    done = page.locator("section", has=page.get_by_role("heading", name=re.compile("^Taken down")))
    done.get_by_role("row").filter(has_text="Clinic Instagram").get_by_role("cell", name=desk.email).nth(1).wait_for()
    desk.look("recalls-taken-down")
    phone.close()
    desk.close()
    assert not phone.violations + desk.violations, phone.violations + desk.violations


def _touch_drag(page, start: tuple[float, float], end: tuple[float, float]) -> None:
    """A finger drag, as the phone sends it (touch events, which Chromium turns into pointer events)."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": start[0], "y": start[1]}]})
    for step in range(1, 6):
        x = start[0] + (end[0] - start[0]) * step / 5
        y = start[1] + (end[1] - start[1]) * step / 5
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    cdp.detach()


def _boxes(page) -> list[list[int]]:
    return [[int(v) for v in re.findall(r"\d+", t)] for t in page.locator("#box-list li").all_inner_texts()]


def test_redaction_review_by_touch_and_keyboard(browser_type, vault: Vault, artifacts, admins, seeded: Seeded) -> None:
    """On a phone: a box drawn and moved with a finger, one added and deleted with the
    keyboard, moved with the keyboard (test_gallery.py draws with the mouse); saved,
    approved, and the reviewer's name shown beside the approval."""
    patient = _patient(vault)
    media = _photo(vault, patient, jpeg(), phase="after")
    _consent(vault, patient, ["social_media"], False)
    nurse = person(browser_type, vault, artifacts, admins, SOUTH, "practitioner", "touch-reviewer", mobile=True)
    page = nurse.page
    page.goto("/app/redaction")
    link = page.get_by_role("link", name=f"Review photo {media[:8]}")
    reload_until_listed(page, link)
    link.click()
    page.get_by_role("heading", name="Review a redaction").wait_for()
    page.wait_for_function("() => document.getElementById('preview').naturalWidth > 0")
    page.locator("#preview").scroll_into_view_if_needed()  # touches land in the viewport (the zoom bar sits above)
    shown = page.locator("#preview").bounding_box()
    assert shown is not None
    s = shown["width"] / 320
    _touch_drag(page, (shown["x"] + 80 * s, shown["y"] + 60 * s), (shown["x"] + 200 * s, shown["y"] + 150 * s))
    [drawn] = _boxes(page)
    assert all(abs(a - b) <= 3 for a, b in zip(drawn, (80, 60, 120, 90))), drawn
    nurse.look("redaction-touch")

    # The keyboard adds a box and deletes it again.
    page.get_by_role("button", name="Add a box").click()
    assert len(_boxes(page)) == 2
    page.get_by_role("button", name=re.compile(r"^Box 2:")).focus()
    page.keyboard.press("Delete")
    assert len(_boxes(page)) == 1

    # A finger moves the drawn box 20 px right (dragging its middle); Shift+arrow 10 px back.
    page.locator("#preview").scroll_into_view_if_needed()
    shown = page.locator("#preview").bounding_box()  # the buttons scrolled the page: where the photo is now
    assert shown is not None
    middle = (shown["x"] + 140 * s, shown["y"] + 105 * s)
    _touch_drag(page, middle, (middle[0] + 20 * s, middle[1]))
    [moved] = _boxes(page)
    assert abs(moved[0] - drawn[0] - 20) <= 3 and moved[1:] == drawn[1:], (drawn, moved)
    page.get_by_role("button", name=re.compile(r"^Box 1:")).focus()
    page.keyboard.press("Shift+ArrowLeft")
    [back] = _boxes(page)
    assert back[0] == moved[0] - 10 and back[1:] == moved[1:], (moved, back)

    page.get_by_role("button", name="Save the boxes").click()
    page.get_by_role("status").get_by_text("Saved.").wait_for()
    nurse.look("redaction-touch-saved")
    page.get_by_role("button", name="Approve this redaction").click()
    page.get_by_text(f"{nurse.email},").wait_for()  # who approved what
    assert page.locator("#redaction-state").inner_text() == "approved"
    page.wait_for_function("() => document.getElementById('preview').naturalWidth > 0")
    nurse.look("redaction-touch-approved")
    nurse.close()
    assert not nurse.violations, nurse.violations
