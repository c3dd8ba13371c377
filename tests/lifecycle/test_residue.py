"""What an erasure leaves on disk, and what it is not held up by.

- A byte scan of every file of both SQLite databases (main file, WAL, shared memory)
  after an erasure finds neither the patient's wrapped DEK nor their blind index
  (hex as stored, or raw). On PostgreSQL there are no files of ours to scan: docs/keys.md
  says what ``pg_wal`` keeps and why the destroyed epoch makes it moot.
- With a backup-style reader holding a snapshot of the key store (and of the metadata
  database) the erasure returns within 2 s; the checkpoints complete after the reader
  has gone, through the ``shred.checkpoint`` job.
- The erased patient's treatments (with their dates) and consent events (with their
  scopes) are deleted by the clean-up job.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.lifecycle.support import Api, drain
from vault.jobs import enqueue
from vault.lifecycle.erasure import PURGE_PATIENT
from vault.patients.service import REF_INDEX, normalise_ref

BOUND = 2.0
CHECKPOINT_JOB = "shred.checkpoint"


def _path(url: str) -> Path:
    return Path(make_url(url).database or "")


def _files(*databases: Path) -> dict[str, bytes]:
    out = {}
    for db in databases:
        for suffix in ("", "-wal", "-shm"):
            f = db.with_name(db.name + suffix)
            if f.exists():
                out[f.name] = f.read_bytes()
    return out


def _holding(files: dict[str, bytes], *needles: bytes) -> list[str]:
    return sorted(name for name, data in files.items() if any(n in data for n in needles))


@pytest.fixture
def sqlite_only(settings):
    if not settings.is_sqlite:
        pytest.skip("byte scan of the database files: SQLite (PostgreSQL: see docs/keys.md on pg_wal)")


async def test_erasure_with_a_reader_holding_snapshots_leaves_no_dek_or_blind_index_on_disk(
        api: Api, settings, sqlite_only):
    rt = api.rt
    metadata, keystore = _path(settings.database_url), _path(settings.keystore_url)
    mrn = "MRN-" + secrets.token_hex(8)
    pid = await api.patient(external_ref=mrn)
    treatment = await api.treatment(pid, performed_on="2019-02-03")
    await api.photo(pid, treatment_id=treatment)
    await api.consent(pid)
    ref_index = await rt.keys.blind_index(api.clinic.id, REF_INDEX, normalise_ref(mrn))
    with closing(sqlite3.connect(keystore)) as conn:
        wrapped = conn.execute("SELECT wrapped FROM patient_deks WHERE tenant_id = ? AND patient_id = ?",
                               (api.clinic.id, pid)).fetchone()[0]
    with closing(sqlite3.connect(metadata)) as conn:
        assert conn.execute("SELECT ref_index FROM patients WHERE id = ?", (pid,)).fetchone()[0] == ref_index
    needles = (wrapped, ref_index.encode(), bytes.fromhex(ref_index))
    assert _holding(_files(metadata, keystore), *needles)  # the scan does find them before

    # Backup-style readers: open read transactions pin a snapshot of each database.
    readers = [sqlite3.connect(path, isolation_level=None) for path in (keystore, metadata)]
    try:
        for reader in readers:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM sqlite_master").fetchone()
        started = time.monotonic()
        await api.json("POST", f"/v1/patients/{pid}/erasure", role="erasure", json={"reason": "Art. 17 request"})
        elapsed = time.monotonic() - started
        assert elapsed < BOUND, elapsed
        await drain(rt, PURGE_PATIENT)
        # While the readers stay, older page images may remain: that is the deferred part.
    finally:
        for reader in readers:
            if reader.in_transaction:
                reader.execute("ROLLBACK")
            reader.close()

    # The readers have gone: the periodic job finishes both checkpoints.
    async with rt.db.transaction() as session:
        await enqueue(session, CHECKPOINT_JOB, {"period_start": f"test-{pid}"})
    await drain(rt, CHECKPOINT_JOB)

    on_disk = _files(metadata, keystore)
    assert _holding(on_disk, *needles) == []
    with closing(sqlite3.connect(metadata)) as conn:
        assert conn.execute("SELECT count(*) FROM treatments WHERE patient_id = ?", (pid,)).fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM consent_events WHERE patient_id = ?", (pid,)).fetchone()[0] == 0
        assert conn.execute("SELECT treatment_id FROM media WHERE patient_id = ?", (pid,)).fetchall() == [(None,)]


async def test_treatments_and_consent_of_an_erased_patient_are_deleted(api: Api):
    rt = api.rt
    pid = await api.patient()
    treatment = await api.treatment(pid)
    media = await api.photo(pid, treatment_id=treatment)
    await api.consent(pid)
    await api.release(media)
    keep = await api.patient()
    await api.treatment(keep)
    await api.consent(keep)
    await api.json("POST", f"/v1/patients/{pid}/erasure", role="erasure", json={"reason": "Art. 17 request"})
    await drain(rt, PURGE_PATIENT)

    from sqlalchemy import func, select

    from vault.consent.models import ConsentRecord, Release
    from vault.treatments.models import Treatment

    async with rt.db.session() as s:
        for model, patient, expected in ((Treatment, pid, 0), (ConsentRecord, pid, 0), (Treatment, keep, 1),
                                         (ConsentRecord, keep, 1)):
            count = (await s.execute(select(func.count()).select_from(model).where(model.patient_id == patient))).scalar_one()
            assert count == expected, (model.__name__, patient == pid)
        release = (await s.execute(select(Release).where(Release.patient_id == pid))).scalar_one()
    assert release.consent_id is None and release.recalled_at is not None
