"""The node's one audit writer (vault/audit/node.py), in process: a real WriterServer on a
unix socket with the backend's real batch writer, and AuditLogs of "serving processes"
that hand it their batches (RemoteBatchWriter). The processes themselves:
tests/system/test_processes.py."""

from __future__ import annotations

import asyncio
import shutil
import struct
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from vault.actor import Actor
from vault.appkeys import RUNTIME
from vault.audit.node import (
    ACK_COMMITTED,
    SOCKET_NAME,
    AuditWriterError,
    FrameError,
    RemoteBatchWriter,
    WriterServer,
    decode,
    encode,
)
from vault.audit.service import AuditEvent, AuditLog
from vault.audit.writer import batch_writer_for


def test_a_frame_round_trips_and_other_shapes_are_refused():
    events = [
        AuditEvent(tenant_id="t1", actor="tok", role="records", action="media.thumbnail", request_id="r1",
                   targets={"media_id": "m", "é\u2028": "\x00\"\\\U0001F600"}),
        AuditEvent(tenant_id="t2", actor="cli", role="admin", action="jobs.retry", request_id="r2", outcome="none"),
    ]
    frame = encode(events)
    (size,) = struct.unpack("!I", frame[:4])
    assert size == len(frame) - 4
    assert decode(frame[4:]) == events
    for bad in (b"", b"not json", b"{}", b"[1]", b'[["t","a","r","x","q","ok"]]',
                b'[["t","a","r","x","q","ok",{"k":1}]]', b'[["t","a","r",2,"q","ok",{}]]',
                b'[["t","a","r","x","q","ok",[]]]', b"[" * 100_000):
        with pytest.raises(FrameError):
            decode(bad)


@pytest.fixture
async def node_writer(client) -> AsyncIterator[tuple[WriterServer, Path]]:
    folder = Path(tempfile.mkdtemp(prefix="vault-na-"))  # short: a unix socket path has ~100 bytes
    path = folder / SOCKET_NAME
    server = WriterServer(batch_writer_for(client.server.app[RUNTIME].db.url))
    await server.start(path)
    try:
        yield server, path
    finally:
        await server.stop()
        shutil.rmtree(folder, ignore_errors=True)


async def _serving_process(client, path: Path) -> AuditLog:
    audit = AuditLog(client.server.app[RUNTIME].db)
    await audit.start(node_writer=path)
    return audit


async def _verify(client, clinic) -> dict:
    resp = await client.get("/v1/audit/verify", headers=clinic.auth("auditor"))
    assert resp.status == 200
    return await resp.json()


async def test_two_processes_share_the_node_writer_and_every_chain_verifies(client, clinic, other_clinic, node_writer):
    """Two serving processes' group commits go through the node's writer, interleaved with
    entries appended inside other transactions (the head moves behind the writer's back)
    and batches naming two tenants: every entry is written once and each chain verifies."""
    server, path = node_writer
    runtime = client.server.app[RUNTIME]
    first, second = await _serving_process(client, path), await _serving_process(client, path)
    mine, theirs = Actor(clinic.id, "t", "auditor", "r"), Actor(other_clinic.id, "t", "auditor", "r")
    before = (await runtime.audit.head(clinic.id))[0], (await runtime.audit.head(other_clinic.id))[0]
    try:
        for round_ in range(4):
            await asyncio.gather(*(log.record(AuditEvent.of(mine, "bench.read", n=f"{round_}-{i}"))
                                   for i in range(20) for log in (first, second)))
            async with runtime.db.transaction() as session:  # as a business transaction does
                await runtime.audit.append(session, AuditEvent.of(mine, "bench.write", n=str(round_)))
            await asyncio.gather(*(log.record(AuditEvent.of(who, "bench.read", n=f"{round_}-mixed-{i}"))
                                   for i in range(5) for who in (mine, theirs) for log in (first, second)))
    finally:
        await first.stop()
        await second.stop()
    assert (await runtime.audit.head(clinic.id))[0] == before[0] + 4 * (40 + 1 + 10)
    assert (await runtime.audit.head(other_clinic.id))[0] == before[1] + 4 * 10
    assert 0 < server.commits <= first.commits + second.commits  # frames shared commits, never more commits than frames
    if runtime.db.dialect == "postgresql":  # the node writer's remembered head held between the moves
        assert server._batches.chained > 0 and server._batches.locked >= 4
    assert (await _verify(client, clinic))["ok"]
    resp = await client.get("/v1/audit/verify", headers=other_clinic.auth("auditor"))
    assert (await resp.json())["ok"] is True


async def test_a_failed_commit_fails_its_reads_and_the_next_batch_is_written(client, clinic, node_writer):
    _, path = node_writer
    audit = await _serving_process(client, path)
    runtime = client.server.app[RUNTIME]
    before = (await runtime.audit.head(clinic.id))[0]
    try:
        with pytest.raises(AuditWriterError):  # a tenant without a head: the writer's commit fails
            await audit.record(AuditEvent.of(Actor("no-such-tenant", "t", "auditor", "r"), "bench.read"))
        await audit.record(AuditEvent.of(Actor(clinic.id, "t", "auditor", "r"), "bench.read"))
    finally:
        await audit.stop()
    assert (await runtime.audit.head(clinic.id))[0] == before + 1
    assert (await _verify(client, clinic))["ok"]


async def test_reads_fail_while_the_writer_is_gone_and_reconnect_when_it_is_back(client, clinic, node_writer):
    server, path = node_writer
    runtime = client.server.app[RUNTIME]
    actor = Actor(clinic.id, "t", "auditor", "r")
    audit = await _serving_process(client, path)
    before = (await runtime.audit.head(clinic.id))[0]
    try:
        await audit.record(AuditEvent.of(actor, "bench.read", n="1"))
        await server.stop()  # its connection closes; then the socket refuses
        with pytest.raises(AuditWriterError):
            await audit.record(AuditEvent.of(actor, "bench.read", n="lost"))
        with pytest.raises(AuditWriterError):
            await audit.record(AuditEvent.of(actor, "bench.read", n="refused"))
        again = WriterServer(batch_writer_for(runtime.db.url))
        await again.start(path)
        try:
            await audit.record(AuditEvent.of(actor, "bench.read", n="2"))
        finally:
            await again.stop()
    finally:
        await audit.stop()
    entries = await runtime.audit.entries(clinic.id, after_seq=before, action="bench.read")
    assert [entry.targets for entry in entries] == ['{"n":"1"}', '{"n":"2"}']
    assert (await _verify(client, clinic))["ok"]


async def test_a_malformed_frame_closes_only_its_connection(client, clinic, node_writer):
    _, path = node_writer
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(struct.pack("!I", 8) + b"not json")
    await writer.drain()
    assert await reader.read() == b""  # closed, nothing answered
    writer.close()
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(struct.pack("!I", 1 << 30))  # over the size bound: refused before reading it
    await writer.drain()
    assert await reader.read() == b""
    writer.close()
    remote = RemoteBatchWriter(path)  # others are served
    try:
        await remote.write([AuditEvent.of(Actor(clinic.id, "t", "auditor", "r"), "bench.read")])
    finally:
        await remote.close()
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(struct.pack("!I", 2) + b"[]")  # an empty batch is answered at once
    await writer.drain()
    assert await reader.readexactly(1) == ACK_COMMITTED
    writer.close()
