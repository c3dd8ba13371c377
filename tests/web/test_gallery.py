"""Issue 18 in a real browser: the redaction review (a box drawn by mouse changes the file
that is released), marketing's gallery showing exactly what consent allows, a release and
its one download, a withdrawal taking an item out of the gallery and onto the recall list,
the take-down recorded, and the DPO's home page listing open recalls. Screenshots and axe
on every page (tests/web/conftest.py)."""

from __future__ import annotations

import io
import re
import secrets
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from tests.web.conftest import Person, Vault, jpeg, person, reload_until_listed

#: the box the reviewer draws, in the photo's displayed pixels (the photo is 320 × 240)
BOX = (80, 60, 120, 90)


@dataclass
class Seeded:
    shown: str  # identifiable, marketing: in the gallery
    shown_consent: str
    hidden: list[str]  # consent for another purpose, none, withdrawn: never in the gallery
    review: str  # de-identified, marketing: in the gallery only once a person approved its redaction


def _photo(vault: Vault, patient: str, *, phase: str = "before", treatment: str | None = None) -> str:
    query = f"?phase={phase}" + (f"&treatment_id={treatment}" if treatment else "")
    return vault.api("POST", f"/v1/patients/{patient}/media{query}", "practitioner", jpeg(), "image/jpeg")["id"]


def _patient(vault: Vault) -> str:
    return vault.api("POST", "/v1/patients", "practitioner", {"external_ref": "G-" + secrets.token_hex(4)})["id"]


def _consent(vault: Vault, patient: str, purposes: list[str], identifiable: bool) -> str:
    return vault.api("POST", f"/v1/patients/{patient}/consents", "practitioner",
                     {"purposes": purposes, "identifiable": identifiable})["id"]


@pytest.fixture(scope="module")
def seeded(vault: Vault) -> Seeded:
    """Consents of several kinds, through the API (the camera app's practitioner token)."""
    a = _patient(vault)
    lips = vault.api("POST", f"/v1/patients/{a}/treatments", "practitioner", {"name": "Lip filler",
                                                                            "performed_on": "2026-03-01"})["id"]
    shown = _photo(vault, a, treatment=lips)
    shown_consent = _consent(vault, a, ["marketing"], True)
    b = _patient(vault)
    education_only = _photo(vault, b)
    _consent(vault, b, ["education"], True)
    c = _patient(vault)
    no_consent = _photo(vault, c)
    d = _patient(vault)
    withdrawn = _photo(vault, d)
    vault.api("POST", f"/v1/consents/{_consent(vault, d, ['marketing'], True)}/withdraw", "practitioner", {})
    e = _patient(vault)
    review = _photo(vault, e, phase="after")
    _consent(vault, e, ["marketing"], False)
    return Seeded(shown=shown, shown_consent=shown_consent, hidden=[education_only, no_consent, withdrawn], review=review)


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def _box_is_filled(data: bytes) -> bool:
    out = _pixels(data)
    x, y, w, h = BOX
    inside = out[y + 6:y + h - 6, x + 6:x + w - 6]
    outside = out[5:y - 10, 5:x - 10]
    return bool(inside.max() <= 16 and outside.mean() > 100)


def test_redaction_review_draws_saves_and_approves(browser_type, vault: Vault, artifacts, admins, seeded: Seeded) -> None:
    nurse = person(browser_type, vault, artifacts, admins, "north", "practitioner", "reviewer")
    page = nurse.page
    page.goto("/app/redaction")
    link = page.get_by_role("link", name=f"Review photo {seeded.review[:8]}")
    reload_until_listed(page, link)
    nurse.look("redaction-queue")
    link.click()
    page.get_by_role("heading", name="Review a redaction").wait_for()
    page.wait_for_function("() => document.getElementById('preview').naturalWidth > 0")
    nurse.look("redaction")
    before = page.request.get(page.locator("#preview").get_attribute("src")).body()
    assert not _box_is_filled(before)

    # Draw the box with the mouse, in the image as displayed (scaled).
    shown = page.locator("#preview").bounding_box()
    assert shown is not None
    s = shown["width"] / 320
    x, y, w, h = BOX
    page.mouse.move(shown["x"] + x * s, shown["y"] + y * s)
    page.mouse.down()
    page.mouse.move(shown["x"] + (x + w / 2) * s, shown["y"] + (y + h / 2) * s, steps=4)
    page.mouse.move(shown["x"] + (x + w) * s, shown["y"] + (y + h) * s, steps=4)
    page.mouse.up()
    assert page.get_by_role("button", name="Approve this redaction").is_disabled()  # unsaved boxes are never approved
    page.get_by_role("button", name="Save the boxes").click()
    page.get_by_role("status").get_by_text("Saved.").wait_for()
    [drawn] = [[int(v) for v in re.findall(r"\d+", t)] for t in page.locator("#box-list li").all_inner_texts()]
    assert all(abs(a - b) <= 3 for a, b in zip(drawn, BOX)), drawn  # the displayed scale is undone
    after = page.request.get(page.locator("#preview").get_attribute("src")).body()
    assert _box_is_filled(after)  # the preview is the file as it would be released
    nurse.look("redaction-saved")

    # Zoomed in (x4), the page shows the full-resolution rendition's fill on screen.
    page.get_by_role("button", name="Zoom in").click()
    page.get_by_role("button", name="Zoom in").click()
    page.get_by_text("400 %").wait_for()
    page.locator("#viewport").evaluate("(v) => { v.scrollLeft = 0; v.scrollTop = 0; }")
    shown, port = page.locator("#preview").bounding_box(), page.locator("#viewport").bounding_box()
    assert shown is not None and port is not None and abs(shown["width"] - 4 * 320) <= 2
    screen = _pixels(page.locator("#viewport").screenshot())
    ratio = screen.shape[1] / port["width"]  # device pixels per CSS pixel

    def on_screen(px: float, py: float) -> np.ndarray:
        sx, sy = (shown["x"] - port["x"] + px * 4) * ratio, (shown["y"] - port["y"] + py * 4) * ratio
        return screen[int(sy) - 6:int(sy) + 6, int(sx) - 6:int(sx) + 6]

    x, y, w, h = BOX
    assert on_screen(x + w / 2, y + h / 2).max() <= 70  # black under the box outline's light tint
    assert on_screen(20, 20).mean() > 100  # the photo itself outside the box
    nurse.look("redaction-zoomed")
    page.locator("#viewport").focus()
    page.keyboard.press("0")  # the keyboard zooms too: back to the fitted view
    page.get_by_text("Fitted to the page", exact=True).wait_for()

    # The keyboard moves a box too (and saving again makes a new preview).
    page.get_by_role("button", name=re.compile(r"^Box 1:")).focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowLeft")
    page.get_by_role("button", name="Save the boxes").click()
    page.get_by_role("status").get_by_text("Saved.").wait_for()

    page.get_by_role("button", name="Approve this redaction").click()
    page.get_by_text(f"{nurse.email},").wait_for()  # who approved, after the reload
    assert page.locator("#redaction-state").inner_text() == "approved"
    nurse.look("redaction-approved")
    page.goto("/app/redaction?state=approved")
    page.get_by_role("cell", name=nurse.email).first.wait_for()
    nurse.look("redaction-approved-list")
    nurse.close()
    assert not nurse.violations, nurse.violations


def test_gallery_release_withdrawal_recall_and_takedown(browser_type, vault: Vault, artifacts, admins,
                                                        seeded: Seeded) -> None:
    marketing = person(browser_type, vault, artifacts, admins, "north", "marketing", "gallery")
    page = marketing.page
    page.goto("/app/gallery?purpose=marketing")
    page.wait_for_function("() => [...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)")
    marketing.look("gallery")
    cards = page.locator(".card").evaluate_all("els => els.map(e => e.dataset.item)")
    identifiable = [c for c in cards if not c.startswith("h_")]
    handles = [c for c in cards if c.startswith("h_")]
    assert identifiable == [seeded.shown]  # exactly the consented items: not the others
    assert len(handles) == 1  # the approved de-identified photo, by its handle only
    html = page.content()
    assert seeded.review not in html and not any(h in html for h in seeded.hidden)

    # Filters apply to identifiable items (in a POST body, not the URL).
    page.get_by_label("Treatment", exact=True).fill("Lip filler")
    page.get_by_label("Phase").select_option("after")
    page.get_by_role("button", name="Filter").click()
    page.get_by_role("heading", name="Identifiable (0)").wait_for()
    page.get_by_label("Phase").select_option("before")
    page.get_by_role("button", name="Filter").click()
    page.get_by_role("heading", name="Identifiable (1)").wait_for()
    assert "Lip" not in page.url

    # Release the de-identified one: the downloaded file carries the box drawn by mouse.
    page.get_by_label(f"Recipient of {handles[0][:10]}").fill("Clinic Instagram")
    page.get_by_role("button", name=f"Release {handles[0][:10]}").click()
    # the copy of the stored redacted rendition waits for the one decoder worker, which the
    # face searches of every test's uploads share: a loaded host needs more than 30 s
    page.get_by_role("heading", name="Released").wait_for(timeout=120_000)
    marketing.look("released")
    with page.expect_download() as got:
        page.get_by_role("button", name="Download the file (once)").click()
    assert _box_is_filled(got.value.path().read_bytes())

    # Release the identifiable one, download it once; a second try is refused.
    page.goto("/app/gallery?purpose=marketing")
    page.get_by_label(f"Recipient of {seeded.shown[:10]}").fill("Glossy Magazine")
    page.get_by_role("button", name=f"Release {seeded.shown[:10]}").click()
    page.get_by_role("heading", name="Released").wait_for()
    with page.expect_download() as got:
        page.get_by_role("button", name="Download the file (once)").click()
    assert got.value.path().read_bytes()[:3] == b"\xff\xd8\xff"
    with page.expect_response(lambda r: r.request.method == "POST") as again:
        page.get_by_role("button", name="Download the file (once)").click()
    assert again.value.status == 410

    # The patient withdraws: gone from the gallery at the next load, on the recall list.
    vault.api("POST", f"/v1/consents/{seeded.shown_consent}/withdraw", "practitioner", {})
    page.goto("/app/gallery?purpose=marketing")
    page.get_by_role("heading", name="Identifiable (0)").wait_for()
    assert seeded.shown not in page.content()
    page.goto("/app/recalls")
    row = page.get_by_role("row").filter(has_text="Glossy Magazine")
    row.wait_for()
    assert row.get_by_role("cell").first.inner_text().startswith(seeded.shown[:12])
    marketing.look("recalls")

    # The DPO's home page lists the open recall.
    dpo = person(browser_type, vault, artifacts, admins, "north", "dpo", "recall-dpo")
    dpo.page.goto("/app/")
    dpo.page.get_by_role("heading", name=re.compile(r"^Open recalls \([1-9]")).wait_for()
    dpo.page.get_by_text("to Glossy Magazine").wait_for()
    dpo.look("home-recalls")

    row.get_by_role("button", name=f"Confirm {seeded.shown[:10]} taken down").click()
    page.get_by_role("status").get_by_text("The take-down is recorded.").wait_for()
    done = page.locator("section", has=page.get_by_role("heading", name=re.compile("^Taken down")))
    # released by and confirmed by: the same person here
    done.get_by_role("row").filter(has_text="Glossy Magazine").get_by_role("cell", name=marketing.email).nth(1).wait_for()
    assert not page.locator("section", has=page.get_by_role("heading", name=re.compile("^Open"))) \
        .get_by_text("Glossy Magazine").count()
    marketing.look("recalls-taken-down")
    dpo.page.reload()
    assert not dpo.page.get_by_text("to Glossy Magazine").count()
    marketing.close()
    dpo.close()
    assert not marketing.violations + dpo.violations, marketing.violations + dpo.violations
