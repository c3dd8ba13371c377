"""The PKCS#11 root-key provider on a real SoftHSM2 token (tests/support/softhsm.py).

Each test uses its own object-label prefix on the one token of the test process.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keys.errors import IntegrityError, KeyDestroyed, KeyExists, ProviderError
from keys.pkcs11 import Pkcs11RootKey, Pkcs11Url
from keys.providers import open_root_key
from tests.support.softhsm import softhsm  # noqa: F401  (session fixture)

CONTEXT = {"purpose": "tenant-kek", "tenant": "clinic-a", "kek_version": "1"}


@pytest.fixture
async def hsm(softhsm) -> Pkcs11RootKey:  # noqa: F811
    provider = Pkcs11RootKey.from_url(softhsm.url())
    yield provider
    await provider.close()


async def test_round_trip_inside_the_token(hsm):
    await hsm.create_version("v1")
    secret = secrets.token_bytes(32)
    blob = await hsm.wrap("v1", secret, CONTEXT)
    assert secret not in blob and len(blob) == 1 + 12 + 32 + 16
    assert await hsm.unwrap("v1", blob, dict(reversed(list(CONTEXT.items())))) == secret
    assert await hsm.wrap("v1", secret, CONTEXT) != blob  # a fresh IV every time


async def test_wrong_context_or_tampered_blob_fails(hsm):
    await hsm.create_version("v1")
    blob = await hsm.wrap("v1", b"k" * 32, CONTEXT)
    with pytest.raises(IntegrityError):
        await hsm.unwrap("v1", blob, {**CONTEXT, "tenant": "clinic-b"})
    with pytest.raises(IntegrityError):
        await hsm.unwrap("v1", blob, {**CONTEXT, "kek_version": "2"})
    with pytest.raises(IntegrityError):
        await hsm.unwrap("v1", blob[:-1] + bytes([blob[-1] ^ 1]), CONTEXT)
    with pytest.raises(IntegrityError):
        await hsm.unwrap("v1", b"\x02" + blob[1:], CONTEXT)
    with pytest.raises(ProviderError):
        await hsm.wrap("v1", b"k", {"tenant": 1})  # type: ignore[dict-item]


async def test_destroyed_version_no_longer_unwraps_a_copy(hsm):
    await hsm.create_version("v1")
    blob = await hsm.wrap("v1", b"s" * 32, CONTEXT)
    copy = bytes(blob)  # what a backup of the key store would hold
    before = datetime.now(UTC)
    destroyed_at = await hsm.destroy_version("v1")
    assert destroyed_at.tzinfo is not None and before <= destroyed_at <= datetime.now(UTC) + timedelta(seconds=1)
    with pytest.raises(KeyDestroyed):
        await hsm.unwrap("v1", copy, CONTEXT)
    with pytest.raises(KeyDestroyed):
        await hsm.wrap("v1", b"s" * 32, CONTEXT)
    await hsm.destroy_version("v1")  # idempotent
    # A new provider (another node, a restarted process) sees the same thing.
    other = Pkcs11RootKey(hsm.url)
    try:
        with pytest.raises(KeyDestroyed):
            await other.unwrap("v1", copy, CONTEXT)
    finally:
        await other.close()


async def test_versions_are_independent(hsm):
    await hsm.create_version("t1.v1")
    await hsm.create_version("t1.v2")
    one = await hsm.wrap("t1.v1", b"1" * 32, CONTEXT)
    two = await hsm.wrap("t1.v2", b"2" * 32, CONTEXT)
    with pytest.raises(IntegrityError):
        await hsm.unwrap("t1.v2", one, CONTEXT)  # another version's key
    await hsm.destroy_version("t1.v1")
    assert await hsm.unwrap("t1.v2", two, CONTEXT) == b"2" * 32
    with pytest.raises(KeyDestroyed):
        await hsm.unwrap("t1.v1", one, CONTEXT)


async def test_create_refuses_an_existing_version_and_bad_ids(hsm):
    await hsm.create_version("v1")
    with pytest.raises(KeyExists):
        await hsm.create_version("v1")
    for bad in ("", "a/b", "a b", "a:b", "x" * 201, "é", ".."):
        with pytest.raises(ProviderError):
            await hsm.create_version(bad)


async def test_label_is_exact_prefix_plus_version(softhsm):  # noqa: F811
    # RFC 7512 object= is an exact label: "p-1" must never match "p-10" or "p-".
    a = Pkcs11RootKey.from_url(softhsm.url(prefix="exact-"))
    try:
        await a.create_version("1")
        await a.create_version("10")
        blob = await a.wrap("10", b"x" * 32, CONTEXT)
        await a.destroy_version("1")
        assert await a.unwrap("10", blob, CONTEXT) == b"x" * 32
        labels = await a._run("list", _labels)
        assert "exact-10" in labels and "exact-1" not in labels
    finally:
        await a.close()


async def test_key_objects_are_sensitive_and_never_extractable(hsm):
    await hsm.create_version("v1")
    attrs = await hsm._run("inspect", lambda s: _attributes(s, hsm.label("v1")))
    assert attrs["EXTRACTABLE"] is False
    assert attrs["SENSITIVE"] is True
    assert attrs["NEVER_EXTRACTABLE"] is True and attrs["ALWAYS_SENSITIVE"] is True
    assert attrs["TOKEN"] is True and attrs["PRIVATE"] is True
    assert attrs["WRAP"] is False and attrs["UNWRAP"] is False
    assert attrs["VALUE"] == "refused"
    assert attrs["VALUE_LEN"] == 32


async def test_concurrent_use_from_many_tasks(hsm):
    await hsm.create_version("a")
    await hsm.create_version("b")

    async def one(i: int) -> None:
        version = "a" if i % 2 else "b"
        context = {**CONTEXT, "kek_version": str(i)}
        secret = secrets.token_bytes(32)
        blob = await hsm.wrap(version, secret, context)
        assert await hsm.unwrap(version, blob, context) == secret

    await asyncio.gather(*(one(i) for i in range(300)))


async def test_loop_is_not_blocked_and_default_pool_unused(hsm, monkeypatch):
    await hsm.create_version("v1")
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "_default_executor", None)
    blob = await hsm.wrap("v1", b"k" * 32, CONTEXT)
    await hsm.unwrap("v1", blob, CONTEXT)
    assert loop._default_executor is None  # type: ignore[attr-defined]


def _fork_child(url: Pkcs11Url, blob: bytes, queue) -> None:
    async def run(provider: Pkcs11RootKey) -> bytes:
        return await provider.unwrap("v1", blob, CONTEXT)

    try:
        queue.put(asyncio.run(run(_inherited["provider"])))
    except Exception as exc:  # reported to the parent, which fails the test
        queue.put(repr(exc))


_inherited: dict[str, Pkcs11RootKey] = {}


async def test_a_forked_child_opens_its_own_session(hsm):
    await hsm.create_version("v1")
    blob = await hsm.wrap("v1", b"f" * 32, CONTEXT)  # the parent's session is open now
    _inherited["provider"] = hsm
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_fork_child, args=(hsm.url, blob, queue))
    child.start()
    try:
        result = await asyncio.to_thread(queue.get, True, 60)
    finally:
        await asyncio.to_thread(child.join, 60)
        _inherited.clear()
    assert result == b"f" * 32
    assert child.exitcode == 0
    assert await hsm.unwrap("v1", blob, CONTEXT) == b"f" * 32  # the parent still works


# -- configuration -------------------------------------------------------------------


async def test_open_root_key_accepts_pkcs11_in_production(softhsm):  # noqa: F811
    provider = open_root_key(softhsm.url(), production=True)
    try:
        assert provider.name == "pkcs11"
        assert isinstance(provider, Pkcs11RootKey)
    finally:
        await provider.close()


def test_production_settings_accept_pkcs11(softhsm, tmp_path):  # noqa: F811
    from vault.config import Settings

    settings = Settings.from_env({
        "VAULT_ENV": "production", "VAULT_DATA_DIR": str(tmp_path),
        "VAULT_ROOT_KEY_URL": softhsm.url(prefix="prod-"),
        "VAULT_DATABASE_URL": "postgresql+asyncpg://vault@db/vault",
    })
    assert settings.production and settings.root_key_url.startswith("pkcs11:")


@pytest.mark.parametrize("url, message", [
    ("pkcs11:object=p-?module-path=/m.so&pin-source=file:/p", "token"),
    ("pkcs11:token=t?module-path=/m.so&pin-source=file:/p", "object"),
    ("pkcs11:token=t;object=p-?pin-source=file:/p", "module-path"),
    ("pkcs11:token=t;object=p-?module-path=/m.so", "pin-source"),
    ("pkcs11:token=t;object=p-?module-path=/m.so&pin-value=1234", "pin-value is refused"),
    ("pkcs11:token=t;object=p-;serial=1?module-path=/m.so&pin-source=file:/p", "serial"),
    ("pkcs11:token=t;object=p-;type=private?module-path=/m.so&pin-source=file:/p", "secret-key"),
    ("pkcs11:token=t;object=p-?module-path=m.so&pin-source=file:/p", "absolute"),
    ("pkcs11:token=t;object=p-?module-path=/m.so&pin-source=pin", "absolute"),
])
def test_url_errors(url, message):
    with pytest.raises(ProviderError, match=message) as info:
        Pkcs11RootKey.from_url(url)
    assert "1234" not in str(info.value)


def test_url_parsing_percent_decodes():
    url = Pkcs11Url.parse("pkcs11:token=My%20Token;object=vault%3Broot-;type=secret-key"
                          "?module-path=/usr/lib/x.so&pin-source=file:/etc/vault/pin")
    assert (url.token, url.prefix, url.module_path, url.pin_file) == (
        "My Token", "vault;root-", "/usr/lib/x.so", Path("/etc/vault/pin"))
    assert "pin" not in repr(url).replace("pin_file", "")


async def test_wrong_pin_unknown_token_and_open_pin_file_fail_cleanly(softhsm, tmp_path):  # noqa: F811
    wrong = tmp_path / "wrong.pin"
    wrong.write_text("not-the-pin-0000\n")
    wrong.chmod(0o600)
    loose = tmp_path / "loose.pin"
    loose.write_text(softhsm.pin_file.read_text())
    loose.chmod(0o644)
    for url, message in (
        (softhsm.url(token="no-such-token"), "NoSuchToken"),
        (softhsm.url(pin_file=loose), "chmod 600"),
        (softhsm.url(pin_file=tmp_path / "missing.pin"), "cannot read"),
    ):
        provider = Pkcs11RootKey.from_url(url)
        try:
            with pytest.raises(ProviderError, match=message) as info:
                await provider.create_version("v1")
            assert softhsm.pin_file.read_text().strip() not in str(info.value)
        finally:
            await provider.close()
    with pytest.raises(ProviderError, match="does not exist"):
        Pkcs11RootKey.from_url(softhsm.url().replace(softhsm.module, "/nonexistent/module.so"))
    del wrong  # a wrong PIN cannot be tested while this process is logged in: login is per application


async def test_closed_provider_refuses(softhsm):  # noqa: F811
    provider = Pkcs11RootKey.from_url(softhsm.url())
    await provider.close()
    await provider.close()
    with pytest.raises(ProviderError, match="closed"):
        await provider.wrap("v1", b"k", CONTEXT)


# -- helpers run on the provider's own executor thread --------------------------------


def _attributes(session, label: str) -> dict[str, object]:
    import pkcs11
    from pkcs11 import Attribute, KeyType, ObjectClass

    key = session.get_key(object_class=ObjectClass.SECRET_KEY, key_type=KeyType.AES, label=label)
    names = ("EXTRACTABLE", "SENSITIVE", "NEVER_EXTRACTABLE", "ALWAYS_SENSITIVE", "TOKEN", "PRIVATE",
             "WRAP", "UNWRAP", "VALUE_LEN")
    out: dict[str, object] = {name: key[getattr(Attribute, name)] for name in names}
    try:
        key[Attribute.VALUE]
        out["VALUE"] = "readable"
    except (pkcs11.AttributeSensitive, pkcs11.PKCS11Error):
        out["VALUE"] = "refused"
    return out


def _labels(session) -> set[str]:
    from pkcs11 import Attribute, ObjectClass

    return {obj[Attribute.LABEL] for obj in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY})}

