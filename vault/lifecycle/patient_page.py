"""``index.html`` of a subject-access export: what the vault holds about a patient, in
plain words, for the patient to open from the unpacked ZIP in any browser. One static
page: no script, no external resource (thumbnails and consent forms are files beside it,
linked relatively), every value HTML-escaped."""

from __future__ import annotations

from html import escape
from typing import Any

PURPOSES = {"education": "teaching and training", "social_media": "the clinic's social media",
            "marketing": "marketing", "publication": "publication (journals, books)"}
PHASES = {"before": "before treatment", "after": "after treatment", "other": "other"}
_STYLE = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;line-height:1.4}"
          "table{border-collapse:collapse;width:100%}td,th{border:1px solid #ccc;padding:.4em;text-align:left;vertical-align:top}"
          "img{max-width:128px;max-height:128px}")


def _date(value: Any) -> str:
    return escape(str(value)[:10]) if value else "—"


def _when(value: Any) -> str:
    return escape(str(value)[:16].replace("T", " ")) if value else "—"


def render(document: dict[str, Any], *, thumbnails: dict[str, str], forms: dict[str, str]) -> bytes:
    """``thumbnails``: media id → relative path; ``forms``: consent id → relative path."""
    out = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
           '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src \'self\'; style-src \'unsafe-inline\'">',
           f"<title>Your photos and records</title><style>{_STYLE}</style></head><body>",
           "<h1>Your photos and records</h1>",
           f"<p>This is a copy of everything the clinic's photo vault holds about you, made on {_date(document.get('generated_at'))}. "
           "The files in this folder are the originals; <code>manifest.json</code> and <code>manifest.csv</code> hold the same "
           "information for computers.</p>"]

    media = document.get("media", [])
    out.append(f"<h2>Your photos and videos ({len(media)})</h2>")
    if media:
        out.append("<table><tr><th>Picture</th><th>Taken</th><th>Stored</th><th>What</th><th>File</th></tr>")
        for m in media:
            thumb = thumbnails.get(m["id"])
            picture = f'<img src="{escape(thumb)}" alt="thumbnail">' if thumb else "—"
            kind = "video" if m.get("kind") == "video" else "photo"
            what = f"{kind}, {PHASES.get(m.get('phase'), escape(str(m.get('phase'))))}"
            file = f'<a href="{escape(m["file"])}">open</a>' if m.get("file") else "not available"
            out.append(f"<tr><td>{picture}</td><td>{_when(m.get('captured_at'))}</td><td>{_date(m.get('created_at'))}</td>"
                       f"<td>{escape(what)}</td><td>{file}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p>None.</p>")

    consents = document.get("consents", [])
    out.append("<h2>What you agreed to</h2>")
    if consents:
        out.append("<ul>")
        for c in consents:
            purposes = ", ".join(PURPOSES.get(p, p) for p in c.get("purposes", []))
            if c.get("kind") == "withdrawal":
                line = f"On {_date(c.get('recorded_at'))} you withdrew your permission for: {escape(purposes)}."
            else:
                how = "showing you" if c.get("identifiable") else "only with your face hidden"
                line = f"On {_date(c.get('recorded_at'))} you allowed the clinic to use your pictures for {escape(purposes)} ({how})"
                if c.get("expires_at"):
                    line += f", until {_date(c['expires_at'])}"
                line += "."
                if c.get("withdrawn_purposes"):
                    line += " You later withdrew this for: " + escape(", ".join(PURPOSES.get(p, p) for p in c["withdrawn_purposes"])) + "."
            form = forms.get(c.get("id", ""))
            if form:
                line += f' <a href="{escape(form)}">The signed form</a>.'
            out.append(f"<li>{line}</li>")
        out.append("</ul>")
    else:
        out.append("<p>You have not given the clinic permission to use your pictures for anything beyond your care.</p>")

    releases = document.get("releases", [])
    out.append("<h2>Who received your pictures</h2>")
    if releases:
        out.append("<table><tr><th>When</th><th>For</th><th>To</th><th>How</th><th>Recalled</th></tr>")
        for r in releases:
            how = "with your face hidden" if r.get("rendition") == "deidentified" else "showing you"
            out.append(f"<tr><td>{_date(r.get('created_at'))}</td><td>{escape(PURPOSES.get(r.get('purpose'), str(r.get('purpose'))))}</td>"
                       f"<td>{escape(str(r.get('recipient') or '—'))}</td><td>{how}</td>"
                       f"<td>{'on ' + _date(r['recalled_at']) if r.get('recalled_at') else 'no'}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p>Nobody: none of your pictures has been given out.</p>")
    out.append("</body></html>")
    return "\n".join(out).encode()
