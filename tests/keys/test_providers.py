"""Root-key providers: one contract (versions = epochs) run against every provider, then
each one's own rules. KMS calls go to moto's server over HTTP on loopback; the finality
property (a destroyed version opens nothing) runs against a strict fake, since moto
still decrypts after ScheduleKeyDeletion."""

from __future__ import annotations

import logging
import os
import secrets
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keys.errors import IntegrityError, KeyDestroyed, KeyExists, ProductionRefused, ProviderError, RootKeyMissing
from keys.keyring import FileKeyring
from keys.kms import AwsKmsEpochs
from keys.providers import LEGACY_VERSION, RootKeyProvider, open_root_key
from tests.support.strict_kms import StrictKms

CONTEXT = {"purpose": "tenant-kek", "tenant": "clinic-a", "kek_version": "1"}


def kms_url(moto, prefix: str, **extra: str) -> str:
    query = "".join(f"&{k}={v}" for k, v in extra.items())
    return f"aws-kms://{prefix}?region={moto.region}&endpoint_url={moto.url}{query}"


def version() -> str:
    return f"inst{secrets.token_hex(3)}.tenant-a.kek-1.{secrets.token_hex(4)}"


@pytest.fixture(params=["file", "aws-kms", "strict-kms"])
async def provider(request, tmp_path: Path) -> RootKeyProvider:
    if request.param == "file":
        opened = open_root_key(f"file://{tmp_path}/keyring", production=False)
    elif request.param == "aws-kms":
        opened = open_root_key(kms_url(request.getfixturevalue("moto"), f"alias/t{secrets.token_hex(4)}"),
                               production=True)
    else:
        opened = AwsKmsEpochs(StrictKms(), prefix="alias/strict")
    yield opened
    await opened.close()


@pytest.fixture
async def live(provider: RootKeyProvider) -> str:
    name = version()
    await provider.create_version(name)
    return name


# -- contract ------------------------------------------------------------------------


async def test_round_trip_hides_the_plaintext(provider: RootKeyProvider, live: str) -> None:
    secret = secrets.token_bytes(32)
    wrapped = await provider.wrap(live, secret, CONTEXT)
    assert secret not in wrapped
    assert await provider.unwrap(live, wrapped, CONTEXT) == secret
    assert await provider.unwrap(live, wrapped, dict(reversed(list(CONTEXT.items())))) == secret
    assert provider.name in ("file", "aws-kms")


async def test_every_wrap_is_fresh(provider: RootKeyProvider, live: str) -> None:
    secret = secrets.token_bytes(32)
    first, second = await provider.wrap(live, secret, CONTEXT), await provider.wrap(live, secret, CONTEXT)
    assert first != second


@pytest.mark.parametrize(
    "other",
    [{**CONTEXT, "tenant": "clinic-b"}, {**CONTEXT, "kek_version": "2"}, {**CONTEXT, "purpose": "blind-index"},
     {k: v for k, v in CONTEXT.items() if k != "kek_version"}, {**CONTEXT, "extra": "x"}],
    ids=["tenant", "version", "purpose", "missing", "extra"],
)
async def test_unwrap_with_another_context_fails(provider: RootKeyProvider, live: str, other: dict) -> None:
    wrapped = await provider.wrap(live, secrets.token_bytes(32), CONTEXT)
    with pytest.raises(IntegrityError):
        await provider.unwrap(live, wrapped, other)


async def test_versions_are_separate_keys(provider: RootKeyProvider, live: str) -> None:
    other = version()
    await provider.create_version(other)
    wrapped = await provider.wrap(live, secrets.token_bytes(32), CONTEXT)
    with pytest.raises((IntegrityError, ProviderError)):
        await provider.unwrap(other, wrapped, CONTEXT)


async def test_a_version_is_never_created_twice(provider: RootKeyProvider, live: str) -> None:
    with pytest.raises((KeyExists, ProviderError)):
        await provider.create_version(live)


async def test_tampered_wrap_fails(provider: RootKeyProvider, live: str) -> None:
    wrapped = bytearray(await provider.wrap(live, secrets.token_bytes(32), CONTEXT))
    wrapped[-1] ^= 0x01
    with pytest.raises(IntegrityError):
        await provider.unwrap(live, bytes(wrapped), CONTEXT)


async def test_context_values_must_be_strings(provider: RootKeyProvider, live: str) -> None:
    with pytest.raises(ProviderError):
        await provider.wrap(live, b"k" * 32, {"kek_version": 1})  # type: ignore[dict-item]


@pytest.mark.parametrize("bad", ["", "a/b", "..", "a b", "x" * 201, "é"])
async def test_version_ids_are_a_closed_alphabet(provider: RootKeyProvider, bad: str) -> None:
    with pytest.raises(ProviderError):
        await provider.create_version(bad)


# -- finality: what a destroyed version still opens ------------------------------------


@pytest.fixture(params=["file", "strict-kms"])
async def final_provider(request, tmp_path: Path) -> RootKeyProvider:
    if request.param == "file":
        opened = open_root_key(f"file://{tmp_path}/keyring", production=False)
    else:
        opened = AwsKmsEpochs(StrictKms(), prefix="alias/strict")
    yield opened
    await opened.close()


async def test_destroyed_version_opens_nothing_and_others_live_on(final_provider: RootKeyProvider) -> None:
    doomed, kept = version(), version()
    for name in (doomed, kept):
        await final_provider.create_version(name)
    old = await final_provider.wrap(doomed, b"d" * 32, CONTEXT)  # e.g. in a backup
    other = await final_provider.wrap(kept, b"k" * 32, CONTEXT)
    when = await final_provider.destroy_version(doomed)
    assert when >= datetime.now(UTC) - timedelta(seconds=5)
    with pytest.raises(KeyDestroyed):
        await final_provider.unwrap(doomed, old, CONTEXT)
    with pytest.raises(KeyDestroyed):
        await final_provider.wrap(doomed, b"x" * 32, CONTEXT)
    assert await final_provider.unwrap(kept, other, CONTEXT) == b"k" * 32
    assert await final_provider.destroy_version(doomed) >= when - timedelta(seconds=1)  # idempotent
    with pytest.raises((KeyExists, ProviderError)):
        await final_provider.create_version(doomed)  # never reused


# -- registry ------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["keys.providers:FileKeyring", "http://x/root", "s3://bucket/key"])
def test_unknown_scheme_is_refused(url: str) -> None:
    with pytest.raises(ProviderError, match="unknown root key scheme"):
        open_root_key(url, production=False)


# -- file: -----------------------------------------------------------------------------


async def test_keyring_layout_and_destruction(tmp_path: Path) -> None:
    ring = tmp_path / "ring"
    provider = open_root_key(ring.as_uri(), production=False)
    assert stat.S_IMODE(ring.stat().st_mode) == 0o700
    name = version()
    await provider.create_version(name)
    key_file = ring / f"{name}.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and key_file.stat().st_size == 32
    assert sorted(p.name for p in ring.iterdir()) == [f"{name}.key"]  # no temp file left
    await provider.destroy_version(name)
    assert sorted(p.name for p in ring.iterdir()) == [f"{name}.destroyed"]
    assert (ring / f"{name}.destroyed").stat().st_size == 0  # a marker, no key bytes


async def test_keyring_survives_a_restart(tmp_path: Path) -> None:
    url, name = (tmp_path / "ring").as_uri(), version()
    first = open_root_key(url, production=False)
    await first.create_version(name)
    wrapped = await first.wrap(name, b"s" * 32, CONTEXT)
    assert await open_root_key(url, production=False).unwrap(name, wrapped, CONTEXT) == b"s" * 32


async def test_missing_keyring_or_version_is_root_key_missing(tmp_path: Path) -> None:
    with pytest.raises(RootKeyMissing, match="keyring .* is missing"):
        open_root_key((tmp_path / "nowhere").as_uri(), production=False, create=False)
    assert not (tmp_path / "nowhere").exists()
    provider = open_root_key((tmp_path / "ring").as_uri(), production=False)
    with pytest.raises(RootKeyMissing):
        await provider.unwrap(version(), b"\x01" + b"0" * 40, CONTEXT)


def test_old_single_key_file_url_is_refused_clearly(tmp_path: Path) -> None:
    old = tmp_path / "root.key"
    old.write_bytes(secrets.token_bytes(32))
    with pytest.raises(ProviderError, match="single root key file.*legacy epoch"):
        open_root_key(old.as_uri(), production=False)


async def test_legacy_key_is_imported_and_removed_from_its_old_place(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from keys.providers import context_aad

    old = tmp_path / "data" / "root.key"
    old.parent.mkdir()
    key = secrets.token_bytes(32)
    fd = os.open(old, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, key)
    os.close(fd)
    nonce = secrets.token_bytes(12)  # a wrap as the code before epochs made it
    legacy_blob = b"\x01" + nonce + AESGCM(key).encrypt(nonce, b"L" * 32, context_aad(CONTEXT))
    ring = open_root_key((tmp_path / "ring").as_uri(), production=False)
    assert isinstance(ring, FileKeyring) and ring.import_legacy(old)
    assert not old.exists()
    assert await ring.unwrap(LEGACY_VERSION, legacy_blob, CONTEXT) == b"L" * 32
    assert not ring.import_legacy(old)


def test_keyring_refused_in_production(tmp_path: Path) -> None:
    with pytest.raises(ProductionRefused):
        open_root_key((tmp_path / "ring").as_uri(), production=True)
    assert not (tmp_path / "ring").exists()


def test_keyring_warns_that_it_is_for_development(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="keys.keyring"):
        open_root_key((tmp_path / "ring").as_uri(), production=False)
        open_root_key((tmp_path / "ring").as_uri(), production=False)  # a second runtime of the process
    assert sum("development only" in r.getMessage() for r in caplog.records) == 1


async def test_keyring_readable_by_others_is_refused(tmp_path: Path) -> None:
    ring = tmp_path / "ring"
    provider = open_root_key(ring.as_uri(), production=False)
    name = version()
    await provider.create_version(name)
    os.chmod(ring / f"{name}.key", 0o644)
    with pytest.raises(ProviderError, match="chmod 600"):
        await open_root_key(ring.as_uri(), production=False).wrap(name, b"k" * 32, CONTEXT)
    os.chmod(ring, 0o755)
    with pytest.raises(ProviderError, match="chmod 700"):
        open_root_key(ring.as_uri(), production=False)


@pytest.mark.parametrize("url", ["file://host/tmp/ring", "file:ring", "file:///tmp/ring?x=1"])
def test_file_url_must_be_a_local_absolute_path(url: str) -> None:
    with pytest.raises(ProviderError):
        FileKeyring.from_url(url, production=False)


# -- aws-kms: the calls, on moto's server -------------------------------------------------


async def test_kms_one_key_per_version_named_by_alias(moto) -> None:
    client, prefix = moto.client("kms"), f"alias/vault-{secrets.token_hex(4)}"
    provider = open_root_key(kms_url(moto, prefix), production=True)
    assert isinstance(provider, AwsKmsEpochs)
    first, second = "i1.tenant-a.kek-1.aa", "i1.tenant-a.kek-2.bb"
    await provider.create_version(first)
    await provider.create_version(second)
    aliases = {a["AliasName"]: a["TargetKeyId"] for a in client.list_aliases()["Aliases"]}
    assert aliases[f"{prefix}/i1/tenant-a/kek-1/aa"] != aliases[f"{prefix}/i1/tenant-a/kek-2/bb"]
    wrapped = await provider.wrap(first, b"k" * 32, CONTEXT)
    # A real KMS ciphertext under the version's own key, bound to the context and version.
    plain = client.decrypt(CiphertextBlob=wrapped, EncryptionContext={**CONTEXT, "root_version": first})
    assert plain["Plaintext"] == b"k" * 32 and plain["KeyId"].endswith(aliases[f"{prefix}/i1/tenant-a/kek-1/aa"])
    await provider.close()


async def test_kms_destroy_schedules_deletion_of_that_key_only(moto) -> None:
    client, prefix = moto.client("kms"), f"alias/vault-{secrets.token_hex(4)}"
    provider = open_root_key(kms_url(moto, prefix, pending_days="9"), production=True)
    doomed, kept = "i1.t.kek-1.aa", "i1.t.kek-2.bb"
    await provider.create_version(doomed)
    await provider.create_version(kept)
    before = datetime.now(UTC)
    when = await provider.destroy_version(doomed)
    assert before + timedelta(days=9) - timedelta(minutes=1) <= when <= before + timedelta(days=9, minutes=1)
    states = {a["AliasName"]: client.describe_key(KeyId=a["TargetKeyId"])["KeyMetadata"]["KeyState"]
              for a in client.list_aliases()["Aliases"] if a["AliasName"].startswith(prefix)}
    assert states == {f"{prefix}/i1/t/kek-1/aa": "PendingDeletion", f"{prefix}/i1/t/kek-2/bb": "Enabled"}
    assert await provider.destroy_version(doomed) == when  # idempotent
    await provider.close()


@pytest.mark.parametrize("days", ["1", "6", "31"])
def test_kms_pending_window_must_be_7_to_30_days(moto, days: str) -> None:
    with pytest.raises(ProviderError, match="7..30"):
        open_root_key(kms_url(moto, "alias/x", pending_days=days), production=True)


async def test_kms_strict_fake_uses_the_minimum_window_by_default() -> None:
    fake = StrictKms()
    provider = AwsKmsEpochs(fake, prefix="alias/v")
    await provider.create_version("i.t.kek-1.a")
    await provider.destroy_version("i.t.kek-1.a")
    assert [c for c in fake.calls if c[0] == "ScheduleKeyDeletion"][0][1]["PendingWindowInDays"] == 7


async def test_kms_legacy_key_only_with_legacy_key(moto) -> None:
    client = moto.client("kms")
    old = client.create_key()["KeyMetadata"]["KeyId"]
    blob = client.encrypt(KeyId=old, Plaintext=b"L" * 32, EncryptionContext=CONTEXT)["CiphertextBlob"]
    with pytest.raises(RootKeyMissing, match="legacy_key"):
        await open_root_key(kms_url(moto, "alias/v"), production=True).unwrap(LEGACY_VERSION, blob, CONTEXT)
    provider = open_root_key(kms_url(moto, "alias/v", legacy_key=old), production=True)
    assert await provider.unwrap(LEGACY_VERSION, blob, CONTEXT) == b"L" * 32


async def test_kms_vendor_errors_are_translated(moto) -> None:
    provider = open_root_key(kms_url(moto, "alias/none"), production=True)
    with pytest.raises(ProviderError) as caught:
        await provider.wrap("i.t.kek-9.z", b"k" * 32, CONTEXT)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert str(caught.value) == "KMS Encrypt: the root key version does not exist"
    await provider.close()


async def test_kms_unreachable_endpoint_is_a_provider_error() -> None:
    provider = open_root_key("aws-kms://alias/v?region=eu-west-1&endpoint_url=http://127.0.0.1:9", production=True)
    with pytest.raises(ProviderError, match="KMS Encrypt failed"):
        await provider.wrap("i.t.kek-1.a", b"k" * 32, CONTEXT)
    await provider.close()


@pytest.mark.parametrize("url", ["aws-kms://?region=eu-west-1", "aws-kms://alias/k?region=eu-west-1&profile=dev",
                                 "aws-kms://some-key-id?region=eu-west-1"])
def test_kms_url_is_validated(url: str) -> None:
    with pytest.raises(ProviderError):
        open_root_key(url, production=True)
