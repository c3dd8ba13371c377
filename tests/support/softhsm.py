"""A SoftHSM2 token in a temporary folder, for the PKCS#11 root-key provider's tests.

SoftHSM2 reads ``SOFTHSM2_CONF`` once, when the module is first initialised in the
process, so there is exactly one token per test process (memoised below, whichever
test module asks first); tests keep apart by using their own object-label prefix.
With ``CI=true`` a missing SoftHSM2 fails the run (``.ci/run`` installs it); elsewhere
the tests that need it are skipped.

    from tests.support.softhsm import softhsm  # noqa: F401  (the session fixture)

    def test_x(softhsm):
        url = softhsm.url(prefix="t1-")
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
)
TOKEN_LABEL = "vault-test"


@dataclass(frozen=True)
class SoftHsm:
    module: str
    token: str
    pin_file: Path
    conf: Path
    so_pin: str = field(repr=False)

    def url(self, *, prefix: str | None = None, token: str | None = None, pin_file: Path | None = None) -> str:
        prefix = prefix if prefix is not None else f"t{secrets.token_hex(4)}-"
        return (
            f"pkcs11:token={token or self.token};object={prefix}"
            f"?module-path={self.module}&pin-source=file:{pin_file or self.pin_file}"
        )


_state: dict[str, SoftHsm] = {}


def _module() -> str | None:
    return next((m for m in MODULE_CANDIDATES if Path(m).is_file()), None)


def start_softhsm() -> SoftHsm:
    """Initialise the process's token once (also usable from benchmarks)."""
    if "hsm" in _state:
        return _state["hsm"]
    module, util = _module(), shutil.which("softhsm2-util")
    if module is None or util is None:
        raise FileNotFoundError("softhsm2 is not installed (Debian: apt-get install softhsm2)")
    root = Path(tempfile.mkdtemp(prefix="vault-softhsm-"))
    atexit.register(shutil.rmtree, root, True)
    tokens = root / "tokens"
    tokens.mkdir(mode=0o700)
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    # Must be set before the module is initialised in this process (it is read once).
    os.environ["SOFTHSM2_CONF"] = str(conf)
    pin, so_pin = secrets.token_hex(8), secrets.token_hex(8)
    subprocess.run(
        [util, "--init-token", "--free", "--label", TOKEN_LABEL, "--pin", pin, "--so-pin", so_pin],
        check=True, capture_output=True, env={**os.environ, "SOFTHSM2_CONF": str(conf)}, timeout=60,
    )
    pin_file = root / "pin"
    fd = os.open(pin_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(pin + "\n")
    _state["hsm"] = SoftHsm(module=module, token=TOKEN_LABEL, pin_file=pin_file, conf=conf, so_pin=so_pin)
    return _state["hsm"]


@pytest.fixture(scope="session")
def softhsm() -> SoftHsm:
    try:
        return start_softhsm()
    except FileNotFoundError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {exc}")
        pytest.skip(str(exc))
