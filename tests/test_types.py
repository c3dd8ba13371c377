"""mypy runs clean over keys/, vault/ and workers/, with the configuration in
pyproject.toml: strict for ``keys.*`` and ``vault.consent.*``, plain checking elsewhere."""

import hashlib
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("keys", "vault", "workers")
STRICT_MODULES = ["keys.*", "vault.consent.*"]


def _mypy_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]


def test_mypy_reports_no_errors():
    api = pytest.importorskip("mypy.api")
    # A cache kept between runs (per checkout) makes a rerun incremental; it lives outside
    # the tree, like every other cache here.
    cache = Path(tempfile.gettempdir()) / f"vault-mypy-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]}"
    stdout, stderr, status = api.run(
        [
            "--config-file", str(ROOT / "pyproject.toml"),
            "--cache-dir", str(cache),
            "--no-color-output",
            "--no-error-summary",
            *(str(ROOT / package) for package in PACKAGES),
        ]
    )
    errors = [line for line in stdout.splitlines() if ": error:" in line]
    if status != 0 or errors:
        print(stdout, stderr, sep="\n", file=sys.stderr)
    assert not stderr.strip(), stderr
    assert errors == [], f"mypy found {len(errors)} errors:\n" + "\n".join(errors)
    assert status == 0, stdout


def test_strict_modules_get_every_strict_flag():
    # `strict = true` in an override switches strict mode on for every module, so the
    # override spells the flags out; this keeps the list equal to what --strict means in
    # the installed mypy.
    pytest.importorskip("mypy")
    from mypy.main import define_options
    from mypy.options import PER_MODULE_OPTIONS

    _, _, assignments = define_options()
    config = _mypy_config()
    (strict,) = [o for o in config["overrides"] if o["module"] == STRICT_MODULES]
    assert "strict" not in strict and "strict" not in config
    for dest, value in assignments:
        if dest in PER_MODULE_OPTIONS:
            assert strict.get(dest) is value, f"{dest} = {str(value).lower()} missing for {STRICT_MODULES}"
        else:  # global-only flags go in [tool.mypy]
            assert config.get(dest) is value, f"{dest} = {str(value).lower()} missing in [tool.mypy]"


def test_missing_imports_are_ignored_only_for_named_libraries():
    config = _mypy_config()
    assert "ignore_missing_imports" not in config
    for override in config["overrides"]:
        if override.get("ignore_missing_imports"):
            modules = override["module"]
            assert all(not m.startswith(PACKAGES) and m != "*" for m in modules), modules
