"""An in-process vault for the HTTP benchmarks: SQLite in a fresh temp folder, one tenant
"bench" and a bearer header per role asked for."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any


@asynccontextmanager
async def bench_app(roles: Iterable[str]) -> AsyncIterator[tuple[Any, Any, dict[str, dict[str, str]]]]:
    """(test client, runtime, {role: auth header})."""
    from aiohttp.test_utils import TestClient, TestServer

    from keys.migrate import upgrade as upgrade_keys
    from vault.app import create_app
    from vault.appkeys import RUNTIME
    from vault.config import Settings
    from vault.migrate import upgrade

    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder)
        settings = Settings(data_dir=data, database_url=f"sqlite+aiosqlite:///{data / 'vault.sqlite3'}",
                            keystore_url=f"sqlite+aiosqlite:///{data / 'keys.sqlite3'}", storage_url=(data / "blobs").as_uri(),
                            root_key_url=(data / "root.key").as_uri(), inprocess_jobs=False)
        await asyncio.to_thread(upgrade, settings.database_url)
        await upgrade_keys(settings.keystore_url)
        async with TestClient(TestServer(create_app(settings))) as client:
            runtime = client.server.app[RUNTIME]
            await runtime.tenants.create_tenant("bench", request_id="bench")
            auth = {}
            for role in roles:
                token = (await runtime.tenants.create_token("bench", role, label=f"bench {role}", request_id="bench")).token
                auth[role] = {"Authorization": f"Bearer {token}"}
            yield client, runtime, auth
