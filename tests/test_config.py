from pathlib import Path

import pytest

from vault.config import Settings
from vault.errors import ConfigError


def test_defaults_put_everything_under_the_data_folder(tmp_path):
    s = Settings.from_env({"VAULT_DATA_DIR": str(tmp_path)})
    assert s.env == "development"
    assert s.database_url == f"sqlite+aiosqlite:///{tmp_path / 'vault.sqlite3'}"
    assert s.keystore_url == f"sqlite+aiosqlite:///{tmp_path / 'keys.sqlite3'}"
    assert s.storage_url == (tmp_path / "blobs").as_uri()
    # ...except the root keyring: outside it, per data folder, so a copy of the folder opens nothing.
    ring = Settings.from_env({"VAULT_DATA_DIR": str(tmp_path), "XDG_DATA_HOME": str(tmp_path.parent / "home")})
    assert ring.root_key_url.startswith((tmp_path.parent / "home" / "clinical-photo-vault" / "keyring").as_uri() + "/")
    assert not ring.root_key_url.startswith(tmp_path.as_uri())
    other = Settings.from_env({"VAULT_DATA_DIR": str(tmp_path / "b"), "XDG_DATA_HOME": str(tmp_path.parent / "home")})
    assert other.root_key_url != ring.root_key_url
    assert s.inprocess_jobs is True


def test_settings_are_frozen(tmp_path):
    s = Settings.from_env({"VAULT_DATA_DIR": str(tmp_path)})
    with pytest.raises(AttributeError):
        s.env = "production"  # type: ignore[misc]


@pytest.mark.parametrize(
    "name, value",
    [
        ("VAULT_ENV", "staging"),
        ("VAULT_LOG_LEVEL", "chatty"),
        ("VAULT_DATABASE_URL", "mysql://x/y"),
        ("VAULT_STORAGE_URL", "ftp://host/x"),
        ("VAULT_ROOT_KEY_URL", "vault://x"),
        ("VAULT_MAX_PHOTO_BYTES", "lots"),
        ("VAULT_MAX_PIXELS", "0"),
        ("VAULT_INPROCESS_JOBS", "maybe"),
        ("VAULT_FACE_MODEL", "/nonexistent/model.onnx"),
    ],
)
def test_invalid_settings_name_the_setting(tmp_path, name, value):
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"VAULT_DATA_DIR": str(tmp_path), name: value})
    assert err.value.setting == name
    assert str(err.value).startswith(name)


def test_production_refuses_a_local_root_key_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"VAULT_DATA_DIR": str(tmp_path), "VAULT_ENV": "production"})
    assert err.value.setting == "VAULT_ROOT_KEY_URL"


def test_production_with_kms_is_accepted(tmp_path):
    s = Settings.from_env(
        {
            "VAULT_DATA_DIR": str(tmp_path),
            "VAULT_ENV": "production",
            "VAULT_ROOT_KEY_URL": "aws-kms://alias/vault?region=eu-west-1",
            "VAULT_DATABASE_URL": "postgresql+asyncpg://vault@db/vault",
        }
    )
    assert s.production and not s.inprocess_jobs
    assert s.keystore_url == s.database_url


def test_face_model_path_must_exist(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    assert Settings.from_env({"VAULT_DATA_DIR": str(tmp_path), "VAULT_FACE_MODEL": str(model)}).face_model == Path(model)


def test_readme_configuration_table_lists_every_variable():
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    documented = set(re.findall(r"^\| `(VAULT_[A-Z0-9_]+)` \|", readme, flags=re.MULTILINE))
    declared = {var.name for var in Settings.variables().values()}
    assert documented - declared == set(), "in README's table but not in Settings"
    assert declared - documented == set(), "in Settings but not in README's table"


def test_each_default_is_the_one_from_env_uses(tmp_path):
    # Defaults live on the fields only: an empty environment gives the same settings as
    # building the object with the derived values alone.
    s = Settings.from_env({"VAULT_DATA_DIR": str(tmp_path)})
    built = Settings(data_dir=s.data_dir, database_url=s.database_url, keystore_url=s.keystore_url,
                     storage_url=s.storage_url, root_key_url=s.root_key_url, shred_journal=s.shred_journal)
    assert s == built


def test_http_processes_is_a_count_or_one_per_cpu(tmp_path):
    import os

    def processes(raw: str) -> int:
        return Settings.from_env({"VAULT_DATA_DIR": str(tmp_path), "VAULT_HTTP_PROCESSES": raw}).http_processes

    assert Settings.from_env({"VAULT_DATA_DIR": str(tmp_path)}).http_processes == 1
    assert processes("3") == 3
    assert processes("auto") == processes("0") == (os.cpu_count() or 1)
    for bad in ("-1", "two"):
        with pytest.raises(ConfigError) as err:
            processes(bad)
        assert err.value.setting == "VAULT_HTTP_PROCESSES"
