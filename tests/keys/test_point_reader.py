"""keys.db.PointReader: the single-statement reads of the hot path (a key row on every
media read), on both backends; on PostgreSQL its own few asyncpg connections."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from keys.db import POINT_POOL_SIZE, PointBatches, PointReader, _Connections
from tests.support.databases import backends, fresh_database

_rows = sa.Table("point_rows", sa.MetaData(), sa.Column("id", sa.String(20), primary_key=True), sa.Column("n", sa.Integer))
_BY_ID = sa.select(_rows.c.id, _rows.c.n).where(_rows.c.id == sa.bindparam("id"))
_BY_IDS = sa.select(_rows.c.id, _rows.c.n).where(_rows.c.n >= sa.bindparam("low"),
                                                  _rows.c.id == sa.any_(sa.bindparam("ids", type_=sa.ARRAY(sa.String))))


@pytest.fixture(params=backends())
def database(request, tmp_path: Path):
    with fresh_database(request.param, tmp_path) as db:
        yield db


async def test_concurrent_point_reads_answer_each_caller_and_stay_within_the_connections(database) -> None:
    engine = create_async_engine(database.url)
    async with engine.begin() as conn:
        await conn.run_sync(_rows.metadata.create_all)  # a table of this test's own, not the schema
        await conn.execute(_rows.insert(), [{"id": f"row-{i}", "n": i} for i in range(50)])
    reader = PointReader(engine)
    try:
        rows = await asyncio.gather(*(reader.first(_BY_ID, {"id": f"row-{i % 60}"}) for i in range(200)))
        assert [None if r is None else r.n for r in rows] == [i % 60 if i % 60 < 50 else None for i in range(200)]
        if database.backend == "postgresql":
            pool = reader._pool
            assert pool is not None and 1 <= pool._opened <= POINT_POOL_SIZE
            async with engine.connect() as conn:
                mine = await conn.scalar(sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"))
            assert mine <= POINT_POOL_SIZE + 1  # the reader's own, plus this one
    finally:
        reader.close()
        await engine.dispose()


async def test_a_cancelled_statement_closes_its_connection_and_the_next_one_works(database) -> None:
    if database.backend != "postgresql":
        pytest.skip("the asyncpg connections are PostgreSQL's; SQLite reads run on the loop and cannot be cancelled midway")
    dsn = database.url.replace("postgresql+asyncpg", "postgresql")
    pool = _Connections(dsn, 2)
    try:
        sleeper = asyncio.ensure_future(pool.fetchrow("SELECT pg_sleep(30)"))
        waiting = [asyncio.ensure_future(pool.fetchrow("SELECT $1::int", i)) for i in range(5)]
        await asyncio.sleep(0.5)
        sleeper.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sleeper
        assert [r[0] for r in await asyncio.gather(*waiting)] == list(range(5))
        assert pool._opened <= 2
        # a caller cancelled while it waited for a connection does not lose one for the others
        hold = [asyncio.ensure_future(pool.fetchrow("SELECT pg_sleep(0.3)")) for _ in range(2)]
        await asyncio.sleep(0.1)
        gave_up = asyncio.ensure_future(pool.fetchrow("SELECT 1"))
        await asyncio.sleep(0.05)
        gave_up.cancel()
        await asyncio.gather(*hold)
        assert (await pool.fetchrow("SELECT 2"))[0] == 2
    finally:
        pool.terminate()
    import asyncpg

    with pytest.raises(asyncpg.InterfaceError):
        await pool.fetchrow("SELECT 1")


async def test_point_reads_asked_together_share_one_statement_per_group_and_never_join_one_sent(database) -> None:
    """keys.db.PointBatches (the key row of concurrent media reads on PostgreSQL): reads that
    ask in the same turn of the event loop are one statement per group, each caller gets
    its own rows; a read that asks while that statement is out gets a statement of its own
    (an erasure committed before it asked is seen); a cancelled caller leaves the others."""
    if database.backend != "postgresql":
        pytest.skip("statements side by side are PostgreSQL's; SQLite's point read is a call on the loop")
    engine = create_async_engine(database.url)
    async with engine.begin() as conn:
        await conn.run_sync(_rows.metadata.create_all)  # a table of this test's own, not the schema
        await conn.execute(_rows.insert(), [{"id": f"row-{i}", "n": i} for i in range(50)])
    reader = PointReader(engine)
    batches = PointBatches(reader, _BY_IDS, group=("low",), many="ids", column="id")
    try:
        asks = [asyncio.ensure_future(batches.first((i % 2 * 25,), f"row-{i % 60}")) for i in range(200)]
        await asyncio.sleep(0)  # every ask is in the batch, not sent yet
        asks[7].cancel()
        await asyncio.gather(*asks, return_exceptions=True)
        assert batches.statements == 2  # two groups (low 0 and low 25), one turn
        for i, ask in enumerate(asks):
            if i == 7:
                assert ask.cancelled()
                continue
            expected = [(f"row-{i % 60}", i % 60)] if i % 2 * 25 <= i % 60 < 50 else []
            assert [(r.id, r.n) for r in ask.result()] == expected

        # A statement held out by a lock; a read asking meanwhile is not folded into it.
        async with engine.connect() as blocker:
            await blocker.execute(sa.text("LOCK TABLE point_rows IN ACCESS EXCLUSIVE MODE"))
            first = asyncio.ensure_future(batches.first((0,), "row-1"))
            while batches.statements < 3:
                await asyncio.sleep(0.01)
            await blocker.execute(_rows.delete().where(_rows.c.id == "row-1"))
            await blocker.commit()
            second = asyncio.ensure_future(batches.first((0,), "row-1"))
            assert await second == []  # its own statement, after the delete committed
            assert batches.statements == 4
            await first  # either answer: it asked before the delete committed
    finally:
        reader.close()
        await engine.dispose()
