"""The worker tests share the job tests' database fixtures, plus an open runtime
and a clean effect table."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.jobs.conftest import db, jobs_database  # noqa: F401  (fixtures)
from tests.workers.effects import reset_effects


@pytest.fixture
async def rt(db, jobs_database, tmp_path) -> AsyncIterator:  # noqa: F811
    from vault.config import Settings
    from vault.runtime import runtime

    settings = Settings(
        data_dir=tmp_path,
        database_url=jobs_database.url,
        keystore_url=jobs_database.keystore_url,
        storage_url=(tmp_path / "blobs").as_uri(),
        root_key_url=(tmp_path / "root.key").as_uri(),
        inprocess_jobs=False,
    )
    await reset_effects(db)
    async with runtime(settings, group_commit=False) as opened:
        yield opened
