"""Issue 18, the practitioner's pages, in a real browser at a phone's size (touch) and a
desktop's: the patient found by hospital number, capture through the file input with
progress and an automatic retry after a forced network failure (one Idempotency-Key per
file: exactly one media made), the live camera with the earlier photo as a see-through
guide, the treatments timeline, the face review, and the before/after comparison with both
photos upright at the same displayed height (checked in the screenshot's pixels).
Screenshots and axe on every page; no hospital number in any URL the browser asked for."""

from __future__ import annotations

import io
import secrets
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from tests.web.conftest import Person, Vault, person

RED, BLUE, GREEN = (200, 30, 30), (30, 40, 200), (30, 160, 60)


def photo(colour: tuple[int, int, int], *, orientation: int = 1) -> bytes:
    """A 320 × 240 JPEG of one colour; with orientation 6 it is shown 240 × 320 (upright)."""
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), colour).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


@dataclass
class Clinic:
    patient: str
    ref: str  # the hospital number: typed into a POST, never in a URL
    treatment: str
    before: str  # the earlier photo of the area: the capture page's guide


def _clinic(vault: Vault) -> Clinic:
    ref = "MRN-" + secrets.token_hex(5)
    patient = vault.api("POST", "/v1/patients", "practitioner", {"external_ref": ref, "display_name": "Ada Test"})["id"]
    treatment = vault.api("POST", f"/v1/patients/{patient}/treatments", "practitioner",
                          {"name": "Lip filler", "performed_on": "2026-03-01", "area": "lips"})["id"]
    before = vault.api("POST", f"/v1/patients/{patient}/media?phase=before&treatment_id={treatment}", "practitioner",
                       photo(RED), "image/jpeg")["id"]
    return Clinic(patient=patient, ref=ref, treatment=treatment, before=before)


def _media(vault: Vault, patient: str) -> list[dict]:
    return vault.api("GET", f"/v1/patients/{patient}/media?limit=200", "practitioner")["items"]


def _find(someone: Person, clinic: Clinic) -> None:
    """The console's search: the hospital number goes in a POST body."""
    page = someone.page
    page.goto("/app/patients")
    page.get_by_label("Hospital number").fill(clinic.ref)
    page.get_by_role("button", name="Find").click()
    page.get_by_role("heading", name="Patient", exact=True).wait_for()
    assert page.url.endswith(f"/app/patients/{clinic.patient}")


def _rows_of(shot: np.ndarray, colour: tuple[int, int, int]) -> tuple[int, int]:
    """(rows, columns) of a screenshot where a photo's colour is (within JPEG noise)."""
    near = (np.abs(shot[:, :, :3].astype(np.int16) - np.array(colour, dtype=np.int16)) <= 24).all(axis=2)
    return int(near.any(axis=1).sum()), int(near.any(axis=0).sum())


def _no_ref_in_urls(someone: Person, clinic: Clinic) -> None:
    assert someone.urls, "the browser asked for nothing"
    assert not [u for u in someone.urls if clinic.ref.lower() in u.lower()]
    assert clinic.ref not in someone.vault.log.read_text()  # nor in the server's log


WATCH = """() => {
  window.seen = {progress: [], states: []};
  const list = document.getElementById('uploads');
  new MutationObserver(() => {
    list.querySelectorAll('progress').forEach((bar, i) => window.seen.progress.push([i, bar.value]));
    list.querySelectorAll('.state').forEach((s, i) => window.seen.states.push([i, s.textContent]));
  }).observe(list, {subtree: true, childList: true, characterData: true, attributes: true});
  // a progress bar's value is a property, not an attribute: sample it while uploads run
  window.seenTimer = setInterval(() => list.querySelectorAll('progress').forEach(
    (bar, i) => window.seen.progress.push([i, bar.value])), 5);
}"""


@pytest.mark.parametrize("device", ["phone", "desktop"])
def test_capture_timeline_face_review_and_compare(browser_type, vault: Vault, artifacts, admins, device: str) -> None:
    clinic = _clinic(vault)
    nurse = person(browser_type, vault, artifacts, admins, "north", "practitioner", f"nurse-{device}",
                   mobile=device == "phone")
    page = nurse.page
    _find(nurse, clinic)
    nurse.look("patient")

    page.get_by_role("link", name="Timeline").click()
    page.get_by_role("heading", name="Lip filler · 2026-03-01").wait_for()
    nurse.look("timeline")

    # -- capture: treatment and phase first, then two files; the first one's answer is lost
    page.get_by_role("link", name="Capture").click()
    page.get_by_role("heading", name="Capture photos").wait_for()
    nurse.look("capture")
    page.get_by_label("Treatment", exact=True).select_option(clinic.treatment)
    page.get_by_label("Phase", exact=True).select_option("after")
    attempts: list[dict] = []

    def flaky(route) -> None:
        request = route.request
        attempts.append({"key": request.headers.get("idempotency-key"), "csrf": bool(request.headers.get("x-csrf-token"))})
        if len(attempts) == 1:
            answer = route.fetch()  # the vault stores the photo...
            attempts[0]["status"] = answer.status
            route.abort("connectionreset")  # ...and the phone never hears back
        else:
            route.continue_()

    page.route("**/v1/patients/*/media?*", flaky)
    page.evaluate(WATCH)
    with page.expect_response(lambda r: "/media?" in r.url and r.request.method == "POST") as replay:
        page.get_by_label("Take or choose photos").set_input_files([
            {"name": "after-portrait.jpg", "mimeType": "image/jpeg", "buffer": photo(BLUE, orientation=6)},
        ])
    assert replay.value.status == 200  # the retry found the photo the lost answer had made
    page.get_by_label("Take or choose photos").set_input_files([
        {"name": "after-close-up.jpg", "mimeType": "image/jpeg", "buffer": photo(GREEN)},
    ])
    page.get_by_role("status").get_by_text("2 stored").wait_for()
    page.unroute("**/v1/patients/*/media?*", flaky)
    seen = page.evaluate("() => { clearInterval(window.seenTimer); return window.seen; }")
    nurse.look("capture-uploaded")

    assert attempts[0]["status"] == 201 and len(attempts) == 3
    assert attempts[0]["key"] and attempts[0]["key"] == attempts[1]["key"] != attempts[2]["key"]  # one key per file
    assert all(a["csrf"] for a in attempts)
    assert any("again" in text for i, text in seen["states"] if i == 0)  # the person saw the retry
    for i in (0, 1):
        values = [v for j, v in seen["progress"] if j == i]
        assert values and values[-1] == 100
    rows = page.locator("#uploads li")
    assert rows.evaluate_all("els => els.map(e => e.dataset.attempts)") == ["2", "1"]
    made = rows.evaluate_all("els => els.map(e => e.dataset.media)")
    media = {m["id"]: m for m in _media(vault, clinic.patient)}
    assert len(media) == 3  # the seeded before and two after photos: the retry made no duplicate
    assert set(made) <= set(media)
    portrait, close_up = (media[m] for m in made)
    assert (portrait["phase"], portrait["treatment_id"]) == ("after", clinic.treatment)
    assert (portrait["width"], portrait["height"]) == (240, 320)  # shown upright

    # -- the timeline: the visit's three photos; a face review
    page.get_by_role("link", name="See the timeline").click()
    visit = page.locator("section", has=page.get_by_role("heading", name="Lip filler · 2026-03-01"))
    visit.get_by_role("img").first.wait_for()
    assert visit.get_by_role("img").count() == 3
    page.wait_for_function("() => [...document.querySelectorAll('.timeline img')].every(i => i.complete && i.naturalWidth > 0)")
    card = page.locator(f"#m-{close_up['id']}")
    card.get_by_role("button", name="Not identifiable").click()
    page.get_by_role("status").get_by_text("The face review is saved.").wait_for()
    assert "reviewed, not identifiable" in page.locator(f"#faces-{close_up['id']}").inner_text()
    reviewed = vault.api("GET", f"/v1/media/{close_up['id']}", "practitioner")
    assert reviewed["faces"]["review"] == "not_identifiable" and reviewed["faces"]["identifiable"] is False
    nurse.look("timeline-reviewed")

    # -- the comparison: the landscape before and the portrait after, same height
    page.locator(f"#m-{clinic.before}").get_by_role("link", name="Compare this photo").click()
    page.get_by_role("heading", name="Before and after").wait_for()
    page.get_by_label("Second photo").select_option(portrait["id"])
    page.get_by_role("button", name="Compare these").click()
    figures = page.locator("#pair figure")
    assert figures.nth(0).get_by_role("img").get_attribute("alt").startswith("before photo, ")
    assert "after · " in figures.nth(1).inner_text() and "Lip filler" in figures.nth(1).inner_text()
    page.wait_for_function("() => [...document.querySelectorAll('#pair img')].every(i => i.complete && i.naturalWidth > 0)")
    boxes = [figures.nth(i).get_by_role("img").bounding_box() for i in (0, 1)]
    assert abs(boxes[0]["height"] - boxes[1]["height"]) <= 1
    assert boxes[1]["height"] > boxes[1]["width"] and boxes[0]["width"] > boxes[0]["height"]  # each upright
    assert boxes[1]["x"] + boxes[1]["width"] <= page.viewport_size["width"]  # both fit on the screen
    shot = np.asarray(Image.open(io.BytesIO(page.locator("#pair").screenshot())).convert("RGB"))
    (red_rows, red_cols), (blue_rows, blue_cols) = _rows_of(shot, RED), _rows_of(shot, BLUE)
    assert red_rows > 50 and abs(red_rows - blue_rows) <= 2  # the same height, in pixels
    assert abs(red_cols / red_rows - 4 / 3) < 0.05 and abs(blue_cols / blue_rows - 3 / 4) < 0.05  # same scale, undistorted
    nurse.look("compare")

    # The slider: keyboard-operable, both photos at one height.
    page.get_by_role("radio", name="Slider").check()
    slider = page.get_by_label("Slider: how much of the first photo shows (percent)")
    slider.focus()
    for _ in range(10):
        page.keyboard.press("ArrowLeft")
    assert slider.input_value() == "40"
    assert page.locator("#slider-over").evaluate("e => e.style.clipPath") == "inset(0px 60% 0px 0px)"
    stage = page.locator("#slider-stage")
    heights = stage.locator("img").evaluate_all("els => els.map(e => e.getBoundingClientRect().height)")
    assert abs(heights[0] - heights[1]) <= 1 and heights[0] > 50
    nurse.look("compare-slider")

    _no_ref_in_urls(nurse, clinic)
    nurse.close()
    assert not nurse.violations, nurse.violations


def test_camera_guide_shows_the_earlier_photo_and_takes_one(browser_type, vault: Vault, artifacts, admins) -> None:
    """Chromium's fake camera stands in for the phone's: the earlier 'before' of the same
    area is laid over the live preview, see-through, and the photo taken is uploaded."""
    clinic = _clinic(vault)
    nurse = person(browser_type, vault, artifacts, admins, "north", "practitioner", "camera", mobile=True)
    nurse.context.grant_permissions(["camera"], origin=vault.base)
    page = nurse.page
    page.goto(f"/app/patients/{clinic.patient}/capture")
    page.get_by_label("Treatment", exact=True).select_option(clinic.treatment)
    page.get_by_label("Phase", exact=True).select_option("after")
    page.get_by_role("button", name="Start the camera").click()
    page.wait_for_function("() => document.getElementById('live').videoWidth > 0")
    guide = page.locator("#guide")
    assert guide.get_attribute("src") == f"/v1/media/{clinic.before}/thumbnail?size=1024"
    page.wait_for_function("() => document.getElementById('guide').naturalWidth > 0")
    assert float(guide.evaluate("e => getComputedStyle(e).opacity")) == pytest.approx(0.4)
    page.get_by_label("Guide see-through (percent)").fill("70")
    assert float(guide.evaluate("e => getComputedStyle(e).opacity")) == pytest.approx(0.7)
    nurse.look("capture-camera")
    page.get_by_role("button", name="Take the photo").click()
    page.get_by_role("status").get_by_text("1 stored").wait_for()
    media = _media(vault, clinic.patient)
    assert len(media) == 2 and sorted(m["phase"] for m in media) == ["after", "before"]
    page.get_by_role("button", name="Stop the camera").click()

    # A browser that gives the page no camera (plain HTTP, an old phone): the file input remains.
    page.add_init_script("Object.defineProperty(navigator, 'mediaDevices', {value: undefined})")
    page.goto(f"/app/patients/{clinic.patient}/capture")
    page.get_by_text("This browser gives no camera access to the page").wait_for()
    assert not page.get_by_role("button", name="Start the camera").is_visible()
    page.get_by_label("Take or choose photos").set_input_files([
        {"name": "fallback.jpg", "mimeType": "image/jpeg", "buffer": photo(GREEN)}])
    page.get_by_role("status").get_by_text("1 stored").wait_for()
    nurse.look("capture-no-camera")
    assert len(_media(vault, clinic.patient)) == 3
    nurse.close()
    assert not nurse.violations, nurse.violations


def test_records_see_timeline_and_compare_but_neither_capture_nor_review(browser_type, vault: Vault, artifacts,
                                                                         admins) -> None:
    clinic = _clinic(vault)
    vault.api("POST", f"/v1/patients/{clinic.patient}/media?phase=after&treatment_id={clinic.treatment}", "practitioner",
              photo(BLUE), "image/jpeg")
    clerk = person(browser_type, vault, artifacts, admins, "north", "records", "records-clerk")
    page = clerk.page
    _find(clerk, clinic)
    assert not page.get_by_role("link", name="Capture").count()
    page.get_by_role("link", name="Timeline").click()
    page.get_by_role("heading", name="Lip filler · 2026-03-01").wait_for()
    assert not page.get_by_role("button", name="Identifiable").count()
    clerk.look("timeline")
    page.get_by_role("link", name="Compare", exact=True).click()
    page.wait_for_function("() => [...document.querySelectorAll('#pair img')].every(i => i.complete && i.naturalWidth > 0)")
    assert page.locator("#pair img").count() == 2  # the visit's before and after, by default
    clerk.look("compare")
    for path in (f"/app/patients/{clinic.patient}/capture",):
        assert page.goto(path).status == 403
    assert page.goto(f"/app/patients/{secrets.token_hex(16)}/timeline").status == 404
    assert page.goto(f"/app/patients/{clinic.patient}/compare?a={secrets.token_hex(16)}").status == 404
    _no_ref_in_urls(clerk, clinic)
    clerk.close()
    assert not clerk.violations, clerk.violations
