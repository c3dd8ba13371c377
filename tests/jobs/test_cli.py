"""``vault jobs list`` and ``vault worker`` as an operator runs them (real processes)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from vault.jobs import enqueue
from vault.jobs.queue import claim, fail

ROOT = Path(__file__).resolve().parents[2]
LEASE = timedelta(minutes=1)


def vault(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vault.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def environment(database, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    env.update(VAULT_DATA_DIR=str(tmp_path), VAULT_DATABASE_URL=database.url, VAULT_KEYSTORE_URL=database.keystore_url)
    return env


async def test_jobs_list_shows_counts_and_the_last_error_of_dead_jobs(db, jobs_database, tmp_path):
    async with db.transaction() as session:
        dead_id = await enqueue(session, "media.process", {"media_id": "m1"})
        await enqueue(session, "media.process", {"media_id": "m2"})
    [job] = await claim(db, kinds=["media.process"], limit=1, lease=LEASE, worker="w1")
    assert job.id == dead_id
    await fail(db, job.id, job.fence, error="CorruptMedia: the media is damaged", retry_at=None)

    result = await asyncio.to_thread(vault, "jobs", "list", env=environment(jobs_database, tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "queued           1" in lines and "dead             1" in lines and "running          0" in lines
    assert any(line.split() == ["media.process", "1", "0", "0", "1"] for line in lines)
    [dead_line] = [line for line in lines if dead_id in line]
    assert "attempts 1" in dead_line and dead_line.endswith("CorruptMedia: the media is damaged")
    assert "m1" not in result.stdout  # payloads are never printed


def test_worker_refuses_a_concurrency_below_one(tmp_path, monkeypatch, capsys):
    from vault.cli import main

    for name in [name for name in os.environ if name.startswith("VAULT_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("VAULT_DATA_DIR", str(tmp_path))
    assert main(["worker", "--concurrency", "0"]) == 2
    assert "--concurrency must be at least 1" in capsys.readouterr().err
