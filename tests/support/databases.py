"""Databases for tests: SQLite always, PostgreSQL whenever VAULT_TEST_DATABASE_URL is
set. When it is set and the server cannot be reached the tests fail — they never
skip — so CI cannot go green without having run on PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

PG_ENV = "VAULT_TEST_DATABASE_URL"


def backends() -> list[str]:
    return ["sqlite", "postgresql"] if os.environ.get(PG_ENV) else ["sqlite"]


@dataclass(frozen=True)
class TestDatabase:
    backend: str
    url: str
    keystore_url: str


async def _admin(sql: str) -> None:
    import asyncpg

    url = make_url(os.environ[PG_ENV])
    conn = await asyncpg.connect(
        host=url.host or "127.0.0.1", port=url.port or 5432, user=url.username or "postgres",
        password=url.password, database=url.database or "postgres", timeout=10,
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def fresh_database(backend: str, folder: Path) -> Iterator[TestDatabase]:
    """A new, empty database (not migrated) that is dropped afterwards."""
    if backend == "sqlite":
        yield TestDatabase(
            backend,
            f"sqlite+aiosqlite:///{folder / 'vault.sqlite3'}",
            f"sqlite+aiosqlite:///{folder / 'keys.sqlite3'}",
        )
        return
    name = "vault_test_" + secrets.token_hex(6)
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        url = make_url(os.environ[PG_ENV]).set(database=name).render_as_string(hide_password=False)
        yield TestDatabase(backend, url, url)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
