"""TOTP (RFC 6238, 30 s steps, 6 digits) with replay refusal, and the enrolment QR code."""

from __future__ import annotations

import io
import time

import pyotp

ISSUER = "Clinical photo vault"
STEP = 30


def new_secret() -> str:
    return pyotp.random_base32()  # 160 bits


def matching_step(secret: str, code: str, *, now: float | None = None, last_step: int = 0) -> int | None:
    """The time step a code belongs to (now, or one step either side for clock drift), or
    None. A step at or before ``last_step`` never matches: each code works once."""
    code = code.strip().replace(" ", "")
    if not (len(code) == 6 and code.isdigit()):
        return None
    totp = pyotp.TOTP(secret)
    current = int((time.time() if now is None else now) // STEP)
    for step in (current, current - 1, current + 1):
        if step > last_step and pyotp.utils.strings_equal(totp.at(step * STEP), code):
            return step
    return None


def provisioning_uri(secret: str, *, account: str, tenant_slug: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=f"{account} ({tenant_slug})", issuer_name=ISSUER)


def qr_svg(uri: str) -> str:
    """The QR code as an SVG document (rendered here: nothing leaves the server). segno
    is imported here, at the first enrolment: the server does not hold it from start."""
    import segno

    out = io.BytesIO()
    segno.make(uri, error="m").save(out, kind="svg", scale=5, border=2, xmldecl=False, svgns=True,
                                    title="QR code for your authenticator app")
    return out.getvalue().decode()
