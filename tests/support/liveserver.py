"""A vault served on a real socket in a thread of its own, with a token of every role of a
fresh tenant: for clients that call it synchronously (schemathesis, generated clients).
The server runs on the runner ``vault serve`` uses."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from aiohttp import web

from vault.permissions import ROLES


class LiveServer:
    def __init__(self, settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz server", daemon=True)
        self.tokens: dict[str, str] = {}

    def __enter__(self) -> LiveServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(120)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(120)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()

    async def _start(self) -> None:
        import secrets

        from vault.app import create_app
        from vault.appkeys import RUNTIME
        from vault.http.server import VaultRunner

        self.app = create_app(self.settings)
        self.runner = VaultRunner(self.app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        tenants = self.app[RUNTIME].tenants
        slug = "fuzz-" + secrets.token_hex(4)
        await tenants.create_tenant(slug, request_id="fuzz")
        for role in ROLES:
            self.tokens[str(role)] = (await tenants.create_token(slug, role, label=f"fuzz {role}", request_id="fuzz")).token

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)


@pytest.fixture(scope="module")
def live(migrated_db, tmp_path_factory) -> Iterator[LiveServer]:
    from vault.config import Settings

    data = tmp_path_factory.mktemp("fuzz")
    fuzz_settings = Settings(
        data_dir=data, database_url=migrated_db.url, keystore_url=migrated_db.keystore_url,
        storage_url=(data / "blobs").as_uri(),
        root_key_url=(tmp_path_factory.getbasetemp() / f"root-{migrated_db.backend}.key").as_uri(),
        inprocess_jobs=False, http_body_timeout=5.0, http_header_timeout=5.0,
    )
    with LiveServer(fuzz_settings) as server:
        yield server
