"""docs/permissions.md is generated from vault/permissions.py and kept in step with it."""

import subprocess
import sys
from pathlib import Path

from vault.permissions import PERMISSIONS, markdown_document, markdown_table

DOC = Path(__file__).resolve().parent.parent / "docs" / "permissions.md"


def test_checked_in_document_is_the_generated_one():
    assert DOC.read_text(encoding="utf-8") == markdown_document(), (
        "docs/permissions.md is stale: run `vault permissions --markdown > docs/permissions.md`"
    )


def test_every_route_has_a_row():
    table = markdown_table()
    for method, path in PERMISSIONS:
        assert f"| {method} | `{path}` |" in table


def test_the_cli_prints_the_table_and_the_document(tmp_path):
    env = {"VAULT_DATA_DIR": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "vault.cli", "permissions", *args], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert run() == markdown_table()
    assert run("--markdown") == markdown_document()
