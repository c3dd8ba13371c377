"""The export's index.html: plain words, every value escaped, nothing fetched or run."""

from __future__ import annotations

from html.parser import HTMLParser

from vault.lifecycle.patient_page import render


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_values_are_escaped_and_nothing_external_is_referenced():
    hostile = '<script>alert(1)</script><img src="https://evil.example/x">'
    document = {
        "generated_at": "2026-12-05T06:00:00+00:00",
        "media": [{"id": "a" * 32, "kind": "photo", "phase": "before", "file": "media/" + "a" * 32 + ".jpg",
                   "captured_at": "2019-07-14T09:30:05.123+02:00", "created_at": "2026-01-02T03:04:05+00:00"}],
        "consents": [
            {"id": "c" * 32, "kind": "grant", "purposes": ["education", hostile], "identifiable": True,
             "recorded_at": "2026-01-03T00:00:00+00:00", "expires_at": None, "withdrawn_purposes": ["education"]},
            {"id": "d" * 32, "kind": "withdrawal", "purposes": ["education"], "recorded_at": "2026-02-01T00:00:00+00:00"},
        ],
        "releases": [{"created_at": "2026-01-04T00:00:00+00:00", "purpose": "education", "recipient": hostile,
                      "rendition": "original", "recalled_at": "2026-02-01T00:00:00+00:00"}],
    }
    page = render(document, thumbnails={"a" * 32: "thumbnails/" + "a" * 32 + ".jpg"},
                  forms={"c" * 32: "consents/" + "c" * 32 + ".pdf"}).decode()
    parser = Tags()
    parser.feed(page)
    names = [t for t, _ in parser.tags]
    assert "script" not in names and "link" not in names and "iframe" not in names
    for tag, attrs in parser.tags:
        for key in ("src", "href"):
            if key in attrs:
                assert attrs[key].startswith(("thumbnails/", "media/", "consents/")), attrs
    assert "&lt;script&gt;" in page
    assert "2019-07-14 09:30" in page and "teaching and training" in page
    assert "you withdrew your permission" in page and "You later withdrew this for: teaching and training" in page
    assert "on 2026-02-01" in page  # the release was recalled


def test_an_empty_record_says_so():
    page = render({"generated_at": "2026-12-05", "media": [], "consents": [], "releases": []}, thumbnails={}, forms={}).decode()
    assert "None." in page and "Nobody" in page and "<script" not in page
