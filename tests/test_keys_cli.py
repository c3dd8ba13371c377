"""KEK operations as an operator runs them (`vault keys ...`) and as the periodic job does."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.shredding.support import fetch_all, new_patient, run_cli, upload_photo
from vault.appkeys import RUNTIME
from vault.config import Settings
from vault.errors import ConfigError


class Interrupted(Exception):
    pass


def _interrupt(done: int, total: int) -> None:
    raise Interrupted  # a rotation dying after the new version exists, before any rewrap


async def _photos(client, clinic, n: int = 2) -> dict[str, dict]:
    patients = [await new_patient(client, clinic) for _ in range(n)]
    media = [await upload_photo(client, clinic, p, seed=i) for i, p in enumerate(patients)]
    return {m: await fetch_all(client, clinic, m) for m in media}


async def _actions(client, clinic, prefix: str = "keys.") -> list[tuple[str, str, str]]:
    entries = await client.server.app[RUNTIME].audit.entries(clinic.id, limit=1000)
    return [(e.action, e.actor, e.outcome) for e in entries if e.action.startswith(prefix)]


async def test_rotation_keeps_every_object_readable(client, clinic, settings, monkeypatch):
    before = await _photos(client, clinic)
    assert all(isinstance(v, bytes) for got in before.values() for v in got.values())

    rotated = await run_cli(settings, "keys", "rotate", "--tenant", clinic.slug, monkeypatch=monkeypatch)

    assert rotated.code == 0, rotated.err
    assert f"{clinic.slug}: KEK version 2 is current; 2 patient keys rewrapped" in rotated.out
    assert "rewrapping patient keys" in rotated.err  # the progress bar
    for media_id, got in before.items():
        assert await fetch_all(client, clinic, media_id) == got
    versions = await client.server.app[RUNTIME].keys.kek_versions(clinic.id)
    assert [(v.version, v.state, v.dek_count) for v in versions] == [(1, "retired", 0), (2, "active", 2)]
    listing = await run_cli(settings, "keys", "versions", "--tenant", clinic.slug, monkeypatch=monkeypatch)
    assert listing.code == 0
    rows = [line.split() for line in listing.out.splitlines()[1:]]
    assert [(r[0], r[1], r[-1]) for r in rows] == [("1", "retired", "0"), ("2", "active", "2")]
    assert await _actions(client, clinic) == [("keys.rotate", "cli", "ok"), ("keys.versions", "cli", "ok")]


async def test_destroying_a_kek_version_is_refused_while_any_dek_uses_it(client, clinic, settings, monkeypatch):
    before = await _photos(client, clinic)
    keys = client.server.app[RUNTIME].keys
    with pytest.raises(Interrupted):
        await keys.rotate_kek(clinic.id, progress=_interrupt)
    assert [(v.version, v.dek_count) for v in await keys.kek_versions(clinic.id)] == [(1, 2), (2, 0)]

    refused = await run_cli(settings, "keys", "destroy-kek-version", "--tenant", clinic.slug, "--version", "1", monkeypatch=monkeypatch)
    assert refused.code == 1
    assert "KEK version 1 cannot be destroyed" in refused.err and "rewrap" in refused.err
    current = await run_cli(settings, "keys", "destroy-kek-version", "--tenant", clinic.slug, "--version", "2", monkeypatch=monkeypatch)
    assert current.code == 1 and "current" in current.err
    missing = await run_cli(settings, "keys", "destroy-kek-version", "--tenant", clinic.slug, "--version", "9", monkeypatch=monkeypatch)
    assert missing.code == 1 and "no KEK version 9" in missing.err
    for media_id, got in before.items():  # DEKs under the retired version still unwrap
        assert await fetch_all(client, clinic, media_id) == got

    rewrapped = await run_cli(settings, "keys", "rewrap", "--tenant", clinic.slug, monkeypatch=monkeypatch)
    assert rewrapped.code == 0 and "2 patient keys rewrapped" in rewrapped.out
    # The restore horizon: inside the backup window only with --force.
    young = await run_cli(settings, "keys", "destroy-kek-version", "--tenant", clinic.slug, "--version", "1", monkeypatch=monkeypatch)
    assert young.code == 1 and "younger than the backup window" in young.err and "--force" in young.err
    destroyed = await run_cli(settings, "keys", "destroy-kek-version", "--tenant", clinic.slug, "--version", "1", "--force",
                              monkeypatch=monkeypatch)
    assert destroyed.code == 0, destroyed.err
    assert "irrecoverable from" in destroyed.out

    versions = await keys.kek_versions(clinic.id)
    assert [(v.version, v.state, v.dek_count) for v in versions] == [(1, "destroyed", 0), (2, "active", 2)]
    for media_id, got in before.items():
        assert await fetch_all(client, clinic, media_id) == got
    assert await _actions(client, clinic) == [
        ("keys.destroy_kek_version", "cli", "key_in_use"),
        ("keys.destroy_kek_version", "cli", "key_in_use"),
        ("keys.rewrap", "cli", "ok"),
        ("keys.destroy_kek_version", "cli", "ok"),
    ]


async def test_unknown_tenant_is_a_clear_error(client, settings, monkeypatch):
    result = await run_cli(settings, "keys", "rotate", "--tenant", "no-such-clinic", monkeypatch=monkeypatch)
    assert result.code == 1 and "no such tenant" in result.err


async def test_periodic_upkeep_rotates_when_due_and_destroys_versions_past_the_backup_window(client, clinic, settings):
    from vault.keyops import KeyOperations, rotate_and_expire
    from vault.runtime import runtime

    before = await _photos(client, clinic, n=1)
    keys = client.server.app[RUNTIME].keys
    created = (await keys.kek_versions(clinic.id))[0].created_at
    async with runtime(settings, group_commit=False) as rt:
        ops = KeyOperations(keys=rt.keys, audit=rt.audit, ledger=rt.ledger)
        periods = {"rotate_after": timedelta(days=settings.kek_rotation_days),
                   "backup_window": timedelta(days=settings.backup_window_days)}
        quiet = await rotate_and_expire(ops, clinic.id, now=created + timedelta(days=settings.kek_rotation_days - 1), **periods)
        assert (quiet.rotated_to, quiet.destroyed) == (None, ())
        due = await rotate_and_expire(ops, clinic.id, now=created + timedelta(days=settings.kek_rotation_days), **periods)
        assert (due.rotated_to, due.rewrapped, due.destroyed) == (2, 1, ())
        expired = await rotate_and_expire(ops, clinic.id, now=created + timedelta(days=settings.backup_window_days + 1), **periods)
        # both versions are past the window then: v2 is rotated out first, then v1 and v2 go
        assert (expired.rotated_to, expired.destroyed) == (3, (1, 2))
    versions = await keys.kek_versions(clinic.id)
    assert [(v.version, v.state, v.dek_count) for v in versions] == [(1, "destroyed", 0), (2, "destroyed", 0), (3, "active", 1)]
    for media_id, got in before.items():
        assert await fetch_all(client, clinic, media_id) == got
    actors = {actor for _, actor, _ in await _actions(client, clinic)}
    assert actors == {"job:keys.rotate"}


def test_the_periodic_jobs_are_declared():
    from workers.jobs import load

    schedule = load().schedule
    assert schedule["keys.rotate"] == timedelta(hours=1) and schedule["audit.checkpoint"] == timedelta(hours=1)


@pytest.mark.parametrize(
    "env, expected",
    [({}, 7), ({"VAULT_KEK_ROTATION_DAYS": "3"}, 3), ({"VAULT_KEK_ROTATION_DAYS": "35"}, 35)],
)
def test_rotation_interval_setting(tmp_path, env, expected):
    settings = Settings.from_env({"VAULT_DATA_DIR": str(tmp_path), **env})
    assert settings.kek_rotation_days == expected


@pytest.mark.parametrize(
    "env",
    [{"VAULT_KEK_ROTATION_DAYS": "0"}, {"VAULT_KEK_ROTATION_DAYS": "weekly"},
     {"VAULT_KEK_ROTATION_DAYS": "36"}, {"VAULT_KEK_ROTATION_DAYS": "10", "VAULT_BACKUP_WINDOW": "7"}],
)
def test_bad_rotation_interval_names_the_setting(tmp_path, env):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"VAULT_DATA_DIR": str(tmp_path), **env})
    assert caught.value.setting == "VAULT_KEK_ROTATION_DAYS"
