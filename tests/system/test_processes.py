"""``vault serve --processes 2``: one node serving from two real processes that share the
port (SO_REUSEPORT), on SQLite and on PostgreSQL (vault/http/processes.py).

- Both processes listen (their pids hold the listening sockets, the parent's does not) and
  both answer: /metrics counts requests per process.
- /metrics reports the node's totals, whichever process answers the scrape.
- A token revoked through the API, and an erased patient's thumbnail, are refused on every
  following request, whichever process it lands on (each request on a new connection).
- Only one process runs the in-process job runner; every process's /readyz sees it.
- Every read is audited whichever process serves it, and every chain verifies: on PostgreSQL by
  the node's one audit writer process (vault/audit/node.py) — while it is dead reads fail (503,
  no 200 without its entry) and succeed again once it is restarted; on SQLite by each process.
- A serving process killed is restarted; SIGTERM stops every process and the parent exits 0,
  and no read answered 200 during the stop lacks its entry.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.databases import backends, fresh_database
from tests.system.cluster import ROOT, Node, jpeg, vault
from tests.system.test_multinode import _tokens

METRICS_TOKEN = "mp-metrics-" + "y" * 24
ROLES = ("admin", "practitioner", "dpo")
SPREAD = 24  # requests, each on a new connection, to reach both processes


class MultiNode(Node):
    def start(self) -> None:
        self.starts += 1
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vault.cli", "serve", "--port", str(self.port), "--processes", "2"],
                env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    def listeners(self) -> set[int]:
        """Pids holding a listening socket on the node's port."""
        out = subprocess.run(["ss", "-Htlnp", f"sport = :{self.port}"], capture_output=True, text=True,
                             check=True).stdout
        return {int(pid) for pid in re.findall(r"pid=(\d+)", out)}

    def wait_listeners(self, count: int, *, other_than: set[int] = frozenset(), timeout: float = 90) -> set[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.tail()
            pids = self.listeners()
            if len(pids) == count and not pids & other_than:
                return pids
            time.sleep(0.1)
        raise AssertionError(f"never {count} listeners: {self.listeners()} {self.tail()}")

    def scrape(self) -> dict[str, float]:
        status, raw = self.request("GET", "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert status == 200, raw[:200]
        samples = {}
        for line in raw.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples


@dataclass
class Vault:
    env: dict[str, str]
    node: MultiNode
    tokens: dict[str, str]

    def patient(self, ref: str) -> str:
        status, body = self.node.json("POST", "/v1/patients", self.tokens["practitioner"], {"external_ref": ref})
        assert status == 201, body
        return body["id"]


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def _state_of(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def _writers(node: MultiNode) -> set[int]:
    """The live audit writer processes of the node (children of its parent)."""
    assert node.proc is not None
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if (entry.name.isdigit() and _parent_of(int(entry.name)) == node.proc.pid and _state_of(int(entry.name)) != "Z"
                    and b"--audit-writer" in (entry / "cmdline").read_bytes()):
                found.add(int(entry.name))
        except OSError:
            continue
    return found


def _wait_writer(node: MultiNode, *, other_than: set[int] = frozenset(), timeout: float = 90) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = _writers(node) - other_than
        if len(pids) == 1:
            return pids.pop()
        time.sleep(0.1)
    raise AssertionError(f"no audit writer: {node.tail()}")


async def _audited(env: dict[str, str], request_ids: list[str]) -> dict[str, str]:
    """request id -> action of the audit entries written for them; and every chain verifies."""
    from sqlalchemy import select

    from vault.audit.models import AuditEntry, AuditHead
    from vault.audit.service import AuditLog
    from vault.db import Database

    db = Database(env["VAULT_DATABASE_URL"], pool_size=1)
    try:
        async with db.session() as session:
            rows = (await session.execute(select(AuditEntry.request_id, AuditEntry.action)
                                          .where(AuditEntry.request_id.in_(request_ids)))).all()
            tenants = (await session.execute(select(AuditHead.tenant_id))).scalars().all()
        audit = AuditLog(db)
        for tenant in tenants:
            verdict = await audit.verify(tenant)
            assert verdict.ok, (tenant, verdict)
        found: dict[str, str] = {}
        for request_id, action in rows:
            assert request_id not in found, f"two entries for {request_id}"
            found[request_id] = action
        return found
    finally:
        await db.close()


def _thumbnail(running: Vault, ref: str) -> str:
    node, tokens = running.node, running.tokens
    patient = running.patient(ref)
    status, raw = node.request("POST", f"/v1/patients/{patient}/media?phase=before", tokens["practitioner"], jpeg(3),
                               {"Content-Type": "image/jpeg"})
    assert status == 201, raw[:300]
    return f"/v1/media/{json.loads(raw)['id']}/thumbnail?size=256"


def _read(running: Vault, path: str, request_id: str) -> int:
    return running.node.request("GET", path, running.tokens["practitioner"], headers={"X-Request-ID": request_id})[0]


@pytest.fixture(scope="module", params=backends())
def running(request, tmp_path_factory) -> Iterator[Vault]:
    folder = tmp_path_factory.mktemp(f"processes-{request.param}")
    with fresh_database(request.param, folder) as db:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "PROMETHEUS_"))}
        env.update(
            VAULT_DATA_DIR=str(folder / "data"), VAULT_DATABASE_URL=db.url, VAULT_KEYSTORE_URL=db.keystore_url,
            VAULT_ROOT_KEY_URL=(folder / "keyring").as_uri(), VAULT_LOG_LEVEL="INFO", VAULT_DECODER_WORKERS="2",
            VAULT_METRICS_TOKEN=METRICS_TOKEN, VAULT_INPROCESS_JOBS="true",
        )
        vault(env, "migrate")
        vault(env, "tenant", "create", "north")
        issued = asyncio.run(_tokens(env, {role: f"{role} system" for role in ROLES}))
        node = MultiNode(env, folder, "node")
        node.start()
        try:
            node.wait_ready()
            node.wait_listeners(2)
            yield Vault(env, node, {role: token.token for role, token in issued.items()})
        finally:
            node.kill()


def test_both_processes_listen_and_answer(running):
    node = running.node
    listening = node.wait_listeners(2)
    assert node.proc is not None and node.proc.pid not in listening  # the parent supervises, serves nothing
    assert {_parent_of(pid) for pid in listening} == {node.proc.pid}
    for _ in range(SPREAD):
        assert node.request("GET", "/healthz")[0] == 200  # a new connection each
    per_process = {int(m.group(1)): value for sample, value in node.scrape().items()
                   if (m := re.fullmatch(r'vault_http_process_requests\{pid="(\d+)"\}', sample))}
    assert set(per_process) == listening, per_process
    assert all(count > 0 for count in per_process.values()), per_process
    print(f"\nrequests per process: {per_process}")


def test_metrics_report_the_node_totals_whichever_process_answers(running):
    node = running.node
    patient = running.patient("MP-METRICS")
    series = 'vault_http_requests_total{method="GET",route="/v1/patients/{patient_id}",status="200"}'
    before = node.scrape().get(series, 0.0)
    made = SPREAD
    for _ in range(made):
        assert node.request("GET", f"/v1/patients/{patient}", running.tokens["practitioner"])[0] == 200
    totals = [node.scrape()[series] for _ in range(8)]  # each scrape on a new connection: either process
    assert totals == [before + made] * 8, totals


def test_a_revoked_token_is_refused_by_every_process_at_once(running):
    node = running.node
    issued = asyncio.run(_tokens(running.env, {"practitioner": "scanner to revoke"}))["practitioner"]
    for _ in range(SPREAD):  # cached by both processes now
        assert node.request("GET", "/v1/patients", issued.token)[0] == 200
    status, raw = node.request("DELETE", f"/v1/tokens/{issued.id}", running.tokens["admin"])
    assert status == 204, raw
    after = [node.request("GET", "/v1/patients", issued.token)[0] for _ in range(SPREAD)]
    assert after == [401] * SPREAD, after


def test_an_erased_patients_thumbnail_is_refused_by_every_process_at_once(running):
    node, tokens = running.node, running.tokens
    patient = running.patient("MP-ERASE")
    status, raw = node.request("POST", f"/v1/patients/{patient}/media?phase=before", tokens["practitioner"], jpeg(3),
                               {"Content-Type": "image/jpeg"})
    assert status == 201, raw[:300]
    path = f"/v1/media/{json.loads(raw)['id']}/thumbnail?size=256"
    for _ in range(SPREAD):  # both processes hold the patient's keys in their caches
        assert node.request("GET", path, tokens["practitioner"])[0] == 200
    status, body = node.json("POST", f"/v1/patients/{patient}/erasure", tokens["dpo"], {"reason": "asked"})
    assert status == 200, body
    after = [node.request("GET", path, tokens["practitioner"])[0] for _ in range(SPREAD)]
    assert set(after) <= {404, 410}, after


def test_only_one_process_runs_the_job_runner(running):
    from vault.db import Database
    from vault.jobs.heartbeat import live_workers

    async def workers() -> int:
        db = Database(running.env["VAULT_DATABASE_URL"], pool_size=1)
        try:
            return await live_workers(db)
        finally:
            await db.close()

    assert asyncio.run(workers()) == 1
    for _ in range(8):  # each process's readiness sees the one runner
        status, body = running.node.json("GET", "/readyz", running.tokens["practitioner"])
        assert status == 200 and body["checks"]["workers"] == "ok", body


def _on_sqlite(running: Vault) -> bool:
    return running.env["VAULT_DATABASE_URL"].startswith("sqlite")


def test_reads_through_both_processes_are_audited(running):
    """On PostgreSQL by the node's one audit writer process; on SQLite each serving process
    writes its own entries (taking turns on the audit lock file) and there is no writer."""
    node = running.node
    path = _thumbnail(running, "MP-AUDIT")
    serving = node.wait_listeners(2)
    if _on_sqlite(running):
        assert _writers(node) == set()
    else:
        _wait_writer(node)
    per_process = re.compile(r'vault_http_process_requests\{pid="(\d+)"\}')
    before = {int(m.group(1)): v for k, v in node.scrape().items() if (m := per_process.fullmatch(k))}
    ids = [f"mp-audit-read-{i:03d}" for i in range(SPREAD)]
    assert [_read(running, path, request_id) for request_id in ids] == [200] * SPREAD
    after = {int(m.group(1)): v for k, v in node.scrape().items() if (m := per_process.fullmatch(k))}
    assert all(after[pid] - before.get(pid, 0.0) > 1 for pid in serving), (before, after)  # > the scrape itself
    assert asyncio.run(_audited(running.env, ids)) == dict.fromkeys(ids, "media.thumbnail")


def test_reads_fail_cleanly_while_the_audit_writer_is_dead_and_recover_after_its_restart(running):
    """The writer is killed while the supervisor is stopped (SIGSTOP), so it cannot be
    restarted yet: every read fails with a 503 (retry) and leaves no entry. Once the supervisor
    runs again it restarts the writer, and reads are answered and audited again."""
    if _on_sqlite(running):
        pytest.skip("PostgreSQL's: on SQLite each serving process writes its own audit entries")
    node = running.node
    assert node.proc is not None
    path = _thumbnail(running, "MP-WRITER")
    writer = _wait_writer(node)
    assert _read(running, path, "mp-writer-before") == 200
    os.kill(node.proc.pid, signal.SIGSTOP)
    try:
        os.kill(writer, signal.SIGKILL)
        while _state_of(writer) != "Z":  # dead; its parent is stopped and cannot reap it
            time.sleep(0.05)
        down = [f"mp-writer-down-{i:03d}" for i in range(SPREAD)]
        assert [_read(running, path, request_id) for request_id in down] == [503] * SPREAD
    finally:
        os.kill(node.proc.pid, signal.SIGCONT)
    _wait_writer(node, other_than={writer})
    statuses: dict[str, int] = {}
    for i in range(600):  # the serving processes reconnect at their next batch
        request_id = f"mp-writer-up-{i:03d}"
        statuses[request_id] = _read(running, path, request_id)
        if list(statuses.values())[-SPREAD:] == [200] * SPREAD:
            break
        time.sleep(0.05)
    assert list(statuses.values())[-SPREAD:] == [200] * SPREAD, statuses
    assert set(statuses.values()) <= {200, 503}, statuses
    audited = asyncio.run(_audited(running.env, ["mp-writer-before", *down, *statuses]))
    assert set(audited) == {"mp-writer-before", *(r for r, status in statuses.items() if status == 200)}
    assert "the audit writer exited unexpectedly; it is restarted" in node.log.read_text()


def test_a_killed_process_is_restarted_and_sigterm_stops_every_process(running):
    node = running.node
    first = node.wait_listeners(2)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    serving = node.wait_listeners(2, other_than={victim})
    assert len(serving & first) == 1
    assert all(node.request("GET", "/healthz")[0] == 200 for _ in range(8))

    runtime = Path(re.search(r"--runtime-dir\x00([^\x00]+)", Path(f"/proc/{max(serving)}/cmdline").read_text()).group(1))
    assert runtime.is_dir() and (runtime.stat().st_mode & 0o777) == 0o700
    writer = None if _on_sqlite(running) else _wait_writer(node)

    # Reads keep coming while the node stops: every one answered 200 has its entry.
    path = _thumbnail(running, "MP-STOP")
    answered: dict[str, int] = {}
    started = threading.Event()

    def reader(n: int) -> None:
        for i in range(10_000):
            request_id = f"mp-stop-{n}-{i:05d}"
            try:
                answered[request_id] = _read(running, path, request_id)
            except OSError:  # refused: the node no longer listens
                return
            started.set()

    readers = [threading.Thread(target=reader, args=(n,)) for n in range(4)]
    for thread in readers:
        thread.start()
    assert started.wait(60)
    node.terminate()
    assert node.wait_exit() == 0, node.tail()
    for thread in readers:
        thread.join(60)
    ok = [request_id for request_id, status in answered.items() if status == 200]
    assert ok and set(answered.values()) == {200}, answered
    assert set(asyncio.run(_audited(running.env, list(answered)))) == set(ok)
    for pid in (*serving, *([writer] if writer else [])):
        assert not Path(f"/proc/{pid}").exists(), f"process {pid} outlived the parent"
    assert node.listeners() == set()
    assert not runtime.exists()
    assert node.log.read_text().count("clinical photo vault listening on") == 1  # the preparation ran once
