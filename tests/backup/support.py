"""A vault of its own per test (backup and restore replace whole databases, so never
the shared one), the real CLI in a subprocess, and the HTTP app in front of it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.databases import fresh_database


@dataclass
class Vault:
    settings: object
    env: dict[str, str]
    tokens: dict[str, str] = field(default_factory=dict)
    slug: str = "north"
    tenant_id: str = ""

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "vault.cli", *args], env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=300)

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


@asynccontextmanager
async def own_vault(backend: str, tmp_path: Path, **options) -> AsyncIterator[Vault]:
    """For async tests: the databases are made and migrated (each its own event loop) in a thread."""
    manager = own_vault_sync(backend, tmp_path, **options)
    vault = await asyncio.to_thread(manager.__enter__)
    try:
        yield vault
    finally:
        await asyncio.to_thread(manager.__exit__, None, None, None)


@contextmanager
def own_vault_sync(backend: str, tmp_path: Path, *, storage_url: str | None = None, root_key_url: str | None = None,
                   extra_env: dict[str, str] | None = None, journal_s3: str | None = None) -> Iterator[Vault]:
    from keys.migrate import upgrade as upgrade_keys
    from vault.config import Settings
    from vault.migrate import upgrade

    with fresh_database(backend, tmp_path) as db:
        data = tmp_path / "data"
        data.mkdir()
        upgrade(db.url)
        asyncio.run(upgrade_keys(db.keystore_url))
        settings = Settings(
            data_dir=data, database_url=db.url, keystore_url=db.keystore_url,
            storage_url=storage_url or (data / "blobs").as_uri(),
            root_key_url=root_key_url or (tmp_path / "keyring").as_uri(),
            shred_journal=tmp_path / "keyring.shred-journal", shred_journal_s3=journal_s3, inprocess_jobs=False,
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
        env.update(VAULT_DATA_DIR=str(data), VAULT_DATABASE_URL=db.url, VAULT_KEYSTORE_URL=db.keystore_url,
                   VAULT_STORAGE_URL=settings.storage_url, VAULT_ROOT_KEY_URL=settings.root_key_url,
                   VAULT_SHRED_JOURNAL=str(settings.shred_journal), VAULT_LOG_LEVEL="WARNING",
                   VAULT_INPROCESS_JOBS="false", **(extra_env or {}))
        if journal_s3:
            env["VAULT_SHRED_JOURNAL_S3"] = journal_s3
        yield Vault(settings=settings, env=env)


async def start(vault: Vault, aiohttp_client):
    """The HTTP app on the vault's settings; on the first start, tenant ``north`` and a token per role."""
    from tests.conftest import VaultTestServer
    from vault.app import create_app
    from vault.appkeys import RUNTIME
    from vault.permissions import ROLES

    client = await aiohttp_client(VaultTestServer(create_app(vault.settings)))
    if not vault.tokens:
        tenants = client.server.app[RUNTIME].tenants
        vault.tenant_id = (await tenants.create_tenant(vault.slug, request_id="test")).id
        for role in ROLES:
            vault.tokens[role] = (await tenants.create_token(vault.slug, role, label=f"test {role}",
                                                             request_id="test")).token
    return client
