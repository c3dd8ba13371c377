"""kill -9 in the middle of an erasure: a real process runs the erasure and is killed
while it hangs before or after the key shred; the periodic ``lifecycle.reconcile`` job
(run through the worker) then finishes it: key gone, receipt stored, clean-up queued."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from keys.models import patient_deks
from tests.lifecycle.support import Api, drain, job_states
from tests.shredding.support import keystore_engine
from vault.jobs import enqueue
from vault.lifecycle.erasure import PURGE_PATIENT
from vault.lifecycle.models import ErasureReceipt, ErasureRequest
from vault.receipts import verify_receipt

ROOT = Path(__file__).resolve().parents[2]


def _env(settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    env.update(VAULT_DATA_DIR=str(settings.data_dir), VAULT_DATABASE_URL=settings.database_url,
               VAULT_KEYSTORE_URL=settings.keystore_url, VAULT_STORAGE_URL=settings.storage_url,
               VAULT_ROOT_KEY_URL=settings.root_key_url, VAULT_LOG_LEVEL="ERROR")
    return env


async def _dek_ids(settings, patient_id: str) -> list[str]:
    engine = keystore_engine(settings)
    try:
        async with engine.connect() as conn:
            query = select(patient_deks.c.dek_id).where(patient_deks.c.patient_id == patient_id)
            return list((await conn.execute(query)).scalars())
    finally:
        await engine.dispose()


@pytest.mark.parametrize("point", ["after_intent", "after_shred"])
async def test_a_killed_erasure_is_finished_after_restart(api: Api, settings, point):
    pid = await api.patient()
    for seed in range(2):
        await api.photo(pid, seed=seed)
    (dek_id,) = await _dek_ids(settings, pid)

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.lifecycle.crash_erasure", api.clinic.id, pid, point,
        cwd=ROOT, env=_env(settings), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line.strip() == b"HANGING", (line, await proc.stderr.read())
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        await proc.stderr.read()
    assert proc.returncode == -signal.SIGKILL

    # The intent committed before the crash: the patient is a tombstone already, the
    # request is pending, no receipt exists yet.
    await api.call("GET", f"/v1/patients/{pid}", role="records", status=410)
    assert await _dek_ids(settings, pid) == ([] if point == "after_shred" else [dek_id])
    async with api.rt.db.session() as s:
        request = (await s.execute(select(ErasureRequest).where(ErasureRequest.patient_id == pid))).scalar_one()
        assert request.state == "pending" and request.dek_id == dek_id
        assert await s.get(ErasureReceipt, pid) is None

    # The restart: the periodic reconcile job, through the real worker.
    async with api.rt.db.transaction() as s:
        await enqueue(s, "lifecycle.reconcile", {"period_start": "test"})
    await drain(api.rt, "lifecycle.reconcile")

    assert await _dek_ids(settings, pid) == []
    async with api.rt.db.session() as s:
        assert (await s.get(ErasureRequest, request.id)).state == "done"
    assert await job_states(api.rt, PURGE_PATIENT, pid) == ["queued"]
    signed = await api.json("POST", f"/v1/patients/{pid}/erasure", role="erasure", json={"reason": "asked again"})
    assert signed["receipt"]["destroyed_key_ids"] == [dek_id]
    assert signed["receipt"]["object_count"] == 6
    public = await api.json("GET", "/v1/erasure-receipts/public-key")
    assert verify_receipt(signed["receipt"], signed["signature"], public["public_key_pem"])
    assert json.loads(json.dumps(signed)) == await api.json("POST", f"/v1/patients/{pid}/erasure", json={"reason": "x"})
