"""Root-key providers: one contract run against every provider, then each one's own rules.

The KMS provider talks to moto's server over HTTP on loopback (a real KMS API on the wire).
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from keys.errors import IntegrityError, ProductionRefused, ProviderError
from keys.providers import AwsKmsRootKey, FileRootKey, RootKeyProvider, open_root_key

CONTEXT = {"purpose": "tenant-kek", "tenant": "clinic-a", "kek_version": "1"}


def kms_url(moto, key_id: str) -> str:
    return f"aws-kms://{key_id}?region={moto.region}&endpoint_url={moto.url}"


@pytest.fixture(params=["file", "aws-kms"])
async def provider(request, tmp_path: Path) -> RootKeyProvider:
    if request.param == "file":
        opened = open_root_key(f"file://{tmp_path}/root.key", production=False)
    else:
        moto = request.getfixturevalue("moto")
        key_id = moto.client("kms").create_key()["KeyMetadata"]["KeyId"]
        opened = open_root_key(kms_url(moto, key_id), production=True)
    yield opened
    await opened.close()


# -- contract ------------------------------------------------------------------------


async def test_round_trip_hides_the_plaintext(provider: RootKeyProvider) -> None:
    secret = secrets.token_bytes(32)
    wrapped = await provider.wrap(secret, CONTEXT)
    assert secret not in wrapped
    assert await provider.unwrap(wrapped, CONTEXT) == secret
    assert provider.name in ("file", "aws-kms")


async def test_every_wrap_is_fresh(provider: RootKeyProvider) -> None:
    secret = secrets.token_bytes(32)
    first, second = await provider.wrap(secret, CONTEXT), await provider.wrap(secret, CONTEXT)
    assert first != second
    assert await provider.unwrap(first, CONTEXT) == await provider.unwrap(second, CONTEXT) == secret


async def test_context_order_does_not_matter(provider: RootKeyProvider) -> None:
    secret = secrets.token_bytes(32)
    wrapped = await provider.wrap(secret, CONTEXT)
    assert await provider.unwrap(wrapped, dict(reversed(list(CONTEXT.items())))) == secret


@pytest.mark.parametrize(
    "other",
    [
        {**CONTEXT, "tenant": "clinic-b"},
        {**CONTEXT, "kek_version": "2"},
        {**CONTEXT, "purpose": "blind-index"},
        {k: v for k, v in CONTEXT.items() if k != "kek_version"},
        {**CONTEXT, "extra": "x"},
    ],
    ids=["tenant", "version", "purpose", "missing", "extra"],
)
async def test_unwrap_with_another_context_fails(provider: RootKeyProvider, other: dict[str, str]) -> None:
    wrapped = await provider.wrap(secrets.token_bytes(32), CONTEXT)
    with pytest.raises(IntegrityError):
        await provider.unwrap(wrapped, other)


async def test_tampered_wrap_fails(provider: RootKeyProvider) -> None:
    wrapped = bytearray(await provider.wrap(secrets.token_bytes(32), CONTEXT))
    wrapped[-1] ^= 0x01
    with pytest.raises(IntegrityError):
        await provider.unwrap(bytes(wrapped), CONTEXT)


async def test_context_values_must_be_strings(provider: RootKeyProvider) -> None:
    with pytest.raises(ProviderError):
        await provider.wrap(b"k" * 32, {"kek_version": 1})  # type: ignore[dict-item]


# -- registry ------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["pkcs11://slot/0", "keys.providers:FileRootKey", "http://x/root"])
def test_unknown_scheme_is_refused(url: str) -> None:
    with pytest.raises(ProviderError, match="unknown root key scheme"):
        open_root_key(url, production=False)


# -- file: -----------------------------------------------------------------------------


def test_file_key_is_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "data" / "root.key"
    open_root_key(f"file://{path}", production=False)
    info = path.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_size == 32
    before = path.read_bytes()
    open_root_key(f"file://{path}", production=False)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["root.key"]  # no temp file left behind


async def test_file_key_survives_a_restart(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/root.key"
    wrapped = await open_root_key(url, production=False).wrap(b"s" * 32, CONTEXT)
    assert await open_root_key(url, production=False).unwrap(wrapped, CONTEXT) == b"s" * 32


async def test_file_key_created_once_under_concurrent_starts(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/root.key"
    with ThreadPoolExecutor(max_workers=8) as pool:
        providers = list(pool.map(lambda _: open_root_key(url, production=False), range(8)))
    wrapped = await providers[0].wrap(b"s" * 32, CONTEXT)
    for other in providers[1:]:
        assert await other.unwrap(wrapped, CONTEXT) == b"s" * 32


def test_file_key_refused_in_production(tmp_path: Path) -> None:
    with pytest.raises(ProductionRefused):
        open_root_key(f"file://{tmp_path}/root.key", production=True)
    assert not (tmp_path / "root.key").exists()


def test_file_key_warns_that_it_is_for_development(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="keys.providers"):
        open_root_key(f"file://{tmp_path}/root.key", production=False)
    assert any("development only" in r.getMessage() for r in caplog.records)


def test_file_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "root.key"
    open_root_key(f"file://{path}", production=False)
    os.chmod(path, 0o644)
    with pytest.raises(ProviderError, match="chmod 600"):
        open_root_key(f"file://{path}", production=False)


def test_file_key_of_wrong_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "root.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"short")
    os.close(fd)
    with pytest.raises(ProviderError, match="32-byte"):
        open_root_key(f"file://{path}", production=False)


@pytest.mark.parametrize("url", ["file://host/tmp/root.key", "file:root.key", "file:///tmp/root.key?x=1"])
def test_file_url_must_be_a_local_absolute_path(url: str) -> None:
    with pytest.raises(ProviderError):
        FileRootKey.from_url(url, production=False)


# -- aws-kms: ------------------------------------------------------------------------


async def test_kms_wrap_is_a_real_kms_ciphertext(moto) -> None:
    client = moto.client("kms")
    key_id = client.create_key()["KeyMetadata"]["KeyId"]
    provider = open_root_key(kms_url(moto, key_id), production=True)
    assert isinstance(provider, AwsKmsRootKey)
    wrapped = await provider.wrap(b"k" * 32, CONTEXT)
    # Anyone holding KMS access and the context can decrypt it: it is KMS's format, not ours.
    assert client.decrypt(CiphertextBlob=wrapped, EncryptionContext=CONTEXT)["Plaintext"] == b"k" * 32
    await provider.close()


async def test_kms_accepts_an_alias(moto) -> None:
    client = moto.client("kms")
    key_id = client.create_key()["KeyMetadata"]["KeyId"]
    alias = f"alias/vault-root-{secrets.token_hex(4)}"
    client.create_alias(AliasName=alias, TargetKeyId=key_id)
    provider = open_root_key(kms_url(moto, alias), production=True)
    wrapped = await provider.wrap(b"k" * 32, CONTEXT)
    assert client.decrypt(CiphertextBlob=wrapped, EncryptionContext=CONTEXT)["Plaintext"] == b"k" * 32
    await provider.close()


async def test_kms_vendor_errors_are_translated(moto) -> None:
    provider = open_root_key(kms_url(moto, "00000000-0000-0000-0000-000000000000"), production=True)
    with pytest.raises(ProviderError) as caught:
        await provider.wrap(b"k" * 32, CONTEXT)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert str(caught.value) == "KMS Encrypt failed: NotFoundException"
    await provider.close()


async def test_kms_unreachable_endpoint_is_a_provider_error() -> None:
    provider = open_root_key(
        "aws-kms://some-key?region=eu-west-1&endpoint_url=http://127.0.0.1:9", production=True
    )
    with pytest.raises(ProviderError, match="KMS Encrypt failed"):
        await provider.wrap(b"k" * 32, CONTEXT)
    await provider.close()


@pytest.mark.parametrize("url", ["aws-kms://?region=eu-west-1", "aws-kms://key?region=eu-west-1&profile=dev"])
def test_kms_url_is_validated(url: str) -> None:
    with pytest.raises(ProviderError):
        open_root_key(url, production=True)
