"""open_store picks a backend from a fixed registry of URL schemes and refuses the rest."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vault.errors import ConfigError
from vault.storage import BlobStore, LocalStore, S3Store, new_key, open_store
from vault.storage.s3 import MIN_PART_SIZE


async def _one(data: bytes):
    yield data


async def test_file_url_absolute(tmp_path: Path) -> None:
    root = tmp_path / "data" / "blobs"
    store = open_store(root.as_uri())
    assert isinstance(store, LocalStore) and isinstance(store, BlobStore)
    assert store.root == root
    key = new_key()
    await store.put(key, _one(b"ciphertext"))
    blob = root / key[:2] / key[2:4] / key
    assert blob.read_bytes() == b"ciphertext"
    # Only the service user may read blobs or list the folders.
    assert stat.S_IMODE(blob.stat().st_mode) == 0o600
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE(blob.parent.stat().st_mode) == 0o700


def test_file_url_relative_and_localhost(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert open_store("file:rel/blobs").root == tmp_path / "rel" / "blobs"
    assert open_store(f"file://localhost{tmp_path}/x").root == tmp_path / "x"
    assert open_store(f"file://{tmp_path}/with%20space").root == tmp_path / "with space"


def test_s3_url_options(moto) -> None:
    store = open_store(
        f"s3://my-bucket/some/prefix/?endpoint_url={moto.url}&region=eu-west-1"
        f"&addressing_style=path&connect_timeout=2&read_timeout=7&max_attempts=5&part_size={16 << 20}"
    )
    assert isinstance(store, S3Store) and isinstance(store, BlobStore)
    assert (store.bucket, store.prefix) == ("my-bucket", "some/prefix")
    config = store._client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (2.0, 7.0)
    assert config.retries == {"mode": "standard", "total_max_attempts": 5}
    assert store._client.meta.endpoint_url == moto.url
    assert store._client.meta.region_name == "eu-west-1"


@pytest.mark.parametrize(
    "url",
    [
        "",
        "/var/lib/vault/blobs",
        "gs://bucket/x",
        "vault.storage.local.LocalStore",
        "file://otherhost/blobs",
        "file:",
        "file:///x?fsync=0",
        "s3://",
        "s3://key:secret@bucket/x",
        "s3://bucket/x?endpoint=http://x",
        "s3://bucket/x?part_size=1024",
        "s3://bucket/x?read_timeout=soon",
        "s3://bucket/x?addressing_style=sideways",
    ],
)
def test_bad_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        open_store(url)
    assert caught.value.setting == "VAULT_STORAGE_URL"
    assert "secret" not in str(caught.value)


def test_local_store_needs_a_creatable_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(ConfigError):
        LocalStore(blocker / "blobs")


def test_part_size_scales_to_stay_under_the_part_limit() -> None:
    store = S3Store(bucket="bucket-x", region="eu-west-1", endpoint_url="http://127.0.0.1:9")
    assert store._part_size_for(None) == store._part_size_for(10 << 20) >= MIN_PART_SIZE
    huge = 200 << 30  # 200 GiB: 8 MiB parts would need 25 600 of them
    assert store._part_size_for(huge) * 10_000 >= huge


def test_new_keys_are_random_and_valid() -> None:
    keys = {new_key() for _ in range(1000)}
    assert len(keys) == 1000
    assert all(len(k) == 32 and int(k, 16) >= 0 for k in keys)
    assert os.sep not in "".join(keys)
