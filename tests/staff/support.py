"""Staff logins for tests: an enrolled account through the real service, codes from its
real TOTP secret, and a tiny cookie-keeping client (``__Host-`` cookies are Secure, which
aiohttp's jar never sends over the test server's plain HTTP)."""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field

import pyotp

from vault.staff.totp import STEP

PASSWORD = "correct horse battery staple 42"


@dataclass
class Authenticator:
    """A person's authenticator app: each code of a later step than the last one used
    (the vault refuses a replay), waiting for the clock when none is left in the window
    the vault accepts (the current step and one either side).

    A code is handed out only while it stays valid for at least ``margin`` seconds: the
    code of step ``s`` is accepted until step ``s + 2`` begins, so the previous step's code
    can be seconds from expiring. Handing it out near a step boundary made a browser test's
    enrolment (code typed, then posted by a loaded machine) fail with 422 in CI."""

    secret: str
    last: int = 0
    #: the least validity left in a code handed out: in-process tests post it at once; a
    #: browser test fills a form first on a loaded machine (tests/web asks for more)
    margin: float = 3.0

    def code(self) -> str:
        while True:
            now = time.time()
            current = int(now // STEP)
            step = max(self.last + 1, current - 1)
            while step <= current + 1 and (step + 2) * STEP - now < self.margin:
                step += 1
            if step <= current + 1:
                self.last = step
                return pyotp.TOTP(self.secret).at(step * STEP)
            time.sleep(1)


@dataclass
class StaffLogin:
    email: str
    password: str
    app: Authenticator
    staff_id: str


async def enrolled(rt, slug: str, role: str, *, email: str | None = None) -> StaffLogin:
    email = email or f"{role}-{secrets.token_hex(4)}@clinic.example"
    issued = await rt.staff.create(slug, email, role, request_id="test")
    form = await rt.staff.enrolment(issued.token)
    app = Authenticator(form.secret)
    await rt.staff.enrol(issued.token, password=PASSWORD, code=app.code(), request_id="test")
    return StaffLogin(email=email, password=PASSWORD, app=app, staff_id=issued.staff.id)


CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Browser:
    """Keeps cookies by name and sends the Origin a browser would."""

    client: object
    cookies: dict[str, str] = field(default_factory=dict)
    origin: str | None = None

    def _headers(self, extra: dict | None = None) -> dict[str, str]:
        headers = {"Origin": self.origin or f"http://{self.client.host}:{self.client.port}"}  # type: ignore[attr-defined]
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        return {**headers, **(extra or {})}

    def _keep(self, resp) -> None:
        for name, morsel in resp.cookies.items():
            if morsel.value == "" or morsel["max-age"] == "0":
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = morsel.value

    async def get(self, path: str, **kw):
        resp = await self.client.get(path, headers=self._headers(kw.pop("headers", None)), allow_redirects=False, **kw)  # type: ignore[attr-defined]
        self._keep(resp)
        return resp

    async def post(self, path: str, data: dict | None = None, **kw):
        if "json" not in kw:
            kw["data"] = data or {}
        resp = await self.client.post(path, headers=self._headers(kw.pop("headers", None)),  # type: ignore[attr-defined]
                                      allow_redirects=False, **kw)
        self._keep(resp)
        return resp

    async def csrf_of(self, path: str) -> str:
        resp = await self.get(path)
        found = CSRF_INPUT.search(await resp.text())
        assert found, f"no CSRF field on {path} ({resp.status})"
        return found.group(1)

    async def log_in(self, slug: str, who: StaffLogin) -> None:
        token = await self.csrf_of("/")
        resp = await self.post("/", {"csrf_token": token, "clinic": slug, "email": who.email, "password": who.password})
        assert resp.status == 303 and resp.headers["Location"] == "/login/code", await resp.text()
        token = await self.csrf_of("/login/code")
        resp = await self.post("/login/code", {"csrf_token": token, "code": who.app.code()})
        assert resp.status == 303 and resp.headers["Location"] == "/app/", await resp.text()
