"""A migrated metadata database of its own per backend for the job tests; each test
starts with an empty job table (tests run one at a time)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy import delete

from tests.support.databases import TestDatabase, backends, fresh_database


@pytest.fixture(scope="session", params=backends())
def jobs_database(request, tmp_path_factory) -> Iterator[TestDatabase]:
    from vault.migrate import upgrade

    with fresh_database(request.param, tmp_path_factory.mktemp(f"jobs-{request.param}")) as database:
        upgrade(database.url)
        yield database


@pytest.fixture
async def db(jobs_database: TestDatabase) -> AsyncIterator:
    from vault.db import Database
    from vault.jobs.models import Job, JobSchedule

    database = Database(jobs_database.url)
    async with database.transaction() as session:
        await session.execute(delete(Job.__table__))
        await session.execute(delete(JobSchedule.__table__))
    yield database
    await database.close()
