"""A real vault (``vault serve`` on SQLite, its in-process worker) and Debian's chromium
driven by Playwright, for the web app's browser tests. Playwright never downloads a
browser here: it launches /usr/bin/chromium. Screenshots of every page the tests visit go
to ``test-artifacts/web/`` (gitignored); axe-core (vendored by the PyPI package
``axe-playwright-python``) checks each of those pages."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.staff.support import PASSWORD, Authenticator

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
LINK = re.compile(r"^(http\S+/enrol/\S+)$", re.M)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Vault:
    base: str
    env: dict[str, str]
    data: Path
    log: Path
    proc: subprocess.Popen
    tokens: dict[str, str] = field(default_factory=dict)
    admin_links: dict[str, str] = field(default_factory=dict)

    def cli(self, *args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "vault.cli", *args], env=self.env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def api(self, method: str, path: str, role: str, body: bytes | dict | None = None, content_type: str = "application/json",
            tenant: str = "north") -> dict:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        req = urllib.request.Request(self.base + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.tokens[f'{tenant}:{role}']}", "Content-Type": content_type})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.load(resp)

    def cli_parallel(self, commands: list[tuple[str, ...]]) -> list[str]:
        procs = [subprocess.Popen([sys.executable, "-m", "vault.cli", *args], env=self.env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for args in commands]
        outs = []
        for proc in procs:
            out, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, err
            outs.append(out)
        return outs


@pytest.fixture(scope="session")
def vault(tmp_path_factory) -> Vault:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    folder = tmp_path_factory.mktemp("web-vault")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    env.update(VAULT_DATA_DIR=str(folder / "data"), VAULT_LOG_LEVEL="INFO", VAULT_DECODER_WORKERS="1",
               VAULT_PUBLIC_URL=f"http://localhost:{port}", VAULT_JOB_POLL_MS="100")
    subprocess.run([sys.executable, "-m", "vault.cli", "migrate"], env=env, check=True, capture_output=True, timeout=120)
    log = folder / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vault.cli", "serve", "--port", str(port)], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    server = Vault(base=f"http://localhost:{port}", env=env, data=folder / "data", log=log, proc=proc)
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            urllib.request.urlopen(server.base + "/healthz", timeout=1)
            break
        except OSError:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    # The CLI opens the whole runtime each time (seconds): run what does not depend on
    # each other at once. Everyone but the two admins is invited through the admin's page.
    server.cli_parallel([("tenant", "create", "north"), ("tenant", "create", "south")])
    token, north, south = server.cli_parallel([
        ("token", "create", "--tenant", "north", "--role", "practitioner", "--label", "camera app"),
        ("staff", "create", "--tenant", "north", "--email", "admin@north.example", "--role", "admin"),
        ("staff", "create", "--tenant", "south", "--email", "admin@south.example", "--role", "admin"),
    ])
    server.tokens["north:practitioner"] = token.strip().splitlines()[-1]
    server.admin_links = {"north": LINK.search(north).group(1), "south": LINK.search(south).group(1)}  # type: ignore[union-attr]
    yield server
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


# Package scope, not session: Playwright's sync API keeps its event loop running in this
# thread while it is open, and fixtures of later packages (tests/webhooks, ...) call
# asyncio.run(). The browser closes after the last test under tests/web.
@pytest.fixture(scope="package")
def browser_type():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # a fake camera for getUserMedia (the capture page's live preview), granted per context
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--use-fake-device-for-media-stream",
                                                                    "--use-fake-ui-for-media-stream"])
        yield browser
        browser.close()


@pytest.fixture(scope="package")
def admins(browser_type, vault: Vault, artifacts) -> dict[str, Person]:
    """Each tenant's admin, enrolled from the CLI's link and logged in (a phone-sized window)."""
    people = {}
    for tenant in ("north", "south"):
        admin = Person(browser_type, vault, artifacts, f"{tenant}-admin", mobile=True)
        admin.enrol(vault.admin_links[tenant])
        admin.log_in(tenant, f"admin@{tenant}.example")
        people[tenant] = admin
    yield people
    for admin in people.values():
        admin.close()


def person(browser_type, vault: Vault, artifacts, admins, tenant: str, role: str, name: str, *,
           mobile: bool = False) -> Person:
    """A new member of staff: invited by the tenant's admin, enrolled and logged in (in a
    phone-sized window with touch when ``mobile``)."""
    email, link = admins[tenant].invite(role, name)
    someone = Person(browser_type, vault, artifacts, f"{tenant}-{name}", mobile=mobile)
    someone.enrol(link)
    someone.log_in(tenant, email)
    return someone


@pytest.fixture(scope="session")
def artifacts() -> Path:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS


class Person:
    """One person in one browser context: their pages, screenshots and axe checks, and every
    URL the browser asked for (checked for patient data at the end)."""

    def __init__(self, browser, vault: Vault, artifacts: Path, name: str, *, mobile: bool = False) -> None:
        self.vault, self.artifacts, self.name = vault, artifacts, name
        options = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True} if mobile else {}
        self.context = browser.new_context(base_url=vault.base, **options)
        self.page = self.context.new_page()
        self.urls: list[str] = []
        self.page.on("request", lambda request: self.urls.append(request.url))
        self.violations: list[str] = []
        self.app: Authenticator | None = None
        self.email = ""
        self.tenant = ""

    def look(self, label: str) -> None:
        """Screenshot the page and run axe-core in it."""
        from axe_playwright_python.sync_playwright import Axe

        self.page.screenshot(path=str(self.artifacts / f"{self.name}-{label}.png"), full_page=True)
        results = Axe().run(self.page)
        for v in results.response["violations"]:
            if v["impact"] in ("serious", "critical"):
                self.violations.append(f"{label}: {v['id']} ({v['impact']}): {v['help']}")

    def enrol(self, link: str) -> None:
        page = self.page
        page.goto(link)
        self.look("enrol")
        self.app = Authenticator(page.locator("figcaption code").inner_text().strip(), margin=15)
        page.get_by_label("New password").fill(PASSWORD)
        page.get_by_label("The same password again").fill(PASSWORD)
        page.get_by_label("Code from the app").fill(self.app.code())
        with page.expect_response(lambda r: r.request.method == "POST") as answer:
            page.get_by_role("button", name="Finish setting up").click()
        if answer.value.status != 200:
            alert = page.get_by_role("alert")
            raise AssertionError(f"enrolment answered {answer.value.status}: "
                                 f"{alert.inner_text() if alert.count() else page.content()[-1500:]}")
        page.get_by_role("heading", name="Your login is ready").wait_for()

    def log_in(self, tenant: str, email: str, *, password: str = PASSWORD, look: bool = False) -> None:
        page = self.page
        self.tenant, self.email = tenant, email
        page.goto("/")
        if look:
            self.look("login")
        page.get_by_label("Clinic").fill(tenant)
        page.get_by_label("E-mail address").fill(email)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Continue").click()
        page.get_by_label("Code").wait_for()
        if look:
            self.look("code")
        assert self.app is not None
        page.get_by_label("Code").fill(self.app.code())
        page.get_by_role("button", name="Log in").click()
        page.get_by_role("heading", name="Welcome").wait_for()

    def invite(self, role: str, name: str) -> tuple[str, str]:
        """As an admin on the staff page: a new login, and its enrolment link as shown."""
        page = self.page
        page.goto("/app/staff")
        email = f"{name}@{self.tenant}.example"
        page.get_by_label("E-mail address").fill(email)
        page.get_by_label("Role").select_option(role)
        page.get_by_role("button", name="Create and show the enrolment link").click()
        return email, page.locator("code.link").inner_text().strip()

    def close(self) -> None:
        self.context.close()


def reload_until_listed(page, link, *, tries: int = 60) -> None:
    """Reload ``page`` until ``link`` (a locator) is on it. A photo reaches the redaction
    queue only once its full-resolution face search, a job run after the upload, is done."""
    for _ in range(tries):
        if link.count():
            return
        page.wait_for_timeout(500)
        page.reload()
    raise AssertionError("not listed: the face search never finished")


def jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (320, 240), (180, 140, 120)).save(buf, "JPEG")
    return buf.getvalue()
