"""The import rule of DESIGN.md, checked by import-linter's contracts in `.importlinter`:
handlers -> services -> (db, storage, keys, pipeline); keys/ imports neither vault/ nor
workers/; the pipeline imports neither HTTP nor the database."""

from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / ".importlinter"), no_cache=True) == 0
