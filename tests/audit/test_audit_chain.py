import asyncio

import pytest
from sqlalchemy import text

from vault.actor import Actor
from vault.appkeys import RUNTIME
from vault.audit.service import AuditEvent


async def _make_entries(client, clinic, n: int = 5) -> None:
    for _ in range(n):
        resp = await client.get("/v1/audit", headers=clinic.auth("auditor"))
        assert resp.status == 200


async def _verify(client, clinic) -> dict:
    resp = await client.get("/v1/audit/verify", headers=clinic.auth("auditor"))
    assert resp.status == 200
    return await resp.json()


async def test_every_read_is_chained_and_verifies(client, clinic):
    await _make_entries(client, clinic)
    resp = await client.get("/v1/audit", headers=clinic.auth("dpo"))
    body = await resp.json()
    actions = [item["action"] for item in body["items"]]
    assert actions[0] == "tenant.create"
    assert actions.count("token.create") == 7
    assert actions.count("audit.read") == 5
    seqs = [item["seq"] for item in body["items"]]
    assert seqs == list(range(1, len(seqs) + 1))
    result = await _verify(client, clinic)
    assert result["ok"] is True and result["checked"] == len(seqs) + 1  # + the listing itself


async def _sql(client, sql: str, **params) -> None:
    async with client.server.app[RUNTIME].db.transaction() as session:
        await session.execute(text(sql), params)


@pytest.mark.parametrize(
    "tamper, bad_seq",
    [
        ("UPDATE audit_entries SET action = 'patient.nothing' WHERE tenant_id = :t AND seq = 3", 3),
        ("UPDATE audit_entries SET outcome = 'ok ' WHERE tenant_id = :t AND seq = 4", 4),
        ("UPDATE audit_entries SET targets = '{}' WHERE tenant_id = :t AND seq = 2", 2),
        ("DELETE FROM audit_entries WHERE tenant_id = :t AND seq = 5", 5),
        ("DELETE FROM audit_entries WHERE tenant_id = :t AND seq = (SELECT MAX(seq) FROM audit_entries WHERE tenant_id = :t)", None),
    ],
    ids=["edit-action", "edit-outcome", "edit-targets", "delete-middle", "truncate-tail"],
)
async def test_tampering_is_detected(client, clinic, tamper, bad_seq):
    await _make_entries(client, clinic)
    assert (await _verify(client, clinic))["ok"]
    head_seq = (await client.server.app[RUNTIME].audit.head(clinic.id))[0]
    await _sql(client, tamper, t=clinic.id)
    result = await _verify(client, clinic)
    assert result["ok"] is False
    assert result["first_bad_seq"] == (bad_seq if bad_seq is not None else head_seq)


async def test_reordering_entries_is_detected(client, clinic):
    await _make_entries(client, clinic)
    # Swap entries 3 and 4 by their sequence numbers (through a free number: seq is unique).
    await _sql(client, "UPDATE audit_entries SET seq = -1 WHERE tenant_id = :t AND seq = 3", t=clinic.id)
    await _sql(client, "UPDATE audit_entries SET seq = 3 WHERE tenant_id = :t AND seq = 4", t=clinic.id)
    await _sql(client, "UPDATE audit_entries SET seq = 4 WHERE tenant_id = :t AND seq = -1", t=clinic.id)
    result = await _verify(client, clinic)
    assert result["ok"] is False and result["first_bad_seq"] == 3


async def test_recomputing_one_hash_still_breaks_the_link(client, clinic):
    await _make_entries(client, clinic)
    # An attacker who edits entry 3 and fixes its hash breaks entry 4's prev_hash.
    await _sql(client, "UPDATE audit_entries SET hash = :h WHERE tenant_id = :t AND seq = 3", h="0" * 64, t=clinic.id)
    result = await _verify(client, clinic)
    assert result["ok"] is False and result["first_bad_seq"] == 3


async def test_group_commit_writes_every_entry(client, clinic):
    audit = client.server.app[RUNTIME].audit
    actor = Actor(clinic.id, "t", "auditor", "r")
    before_seq = (await audit.head(clinic.id))[0]
    before_commits = audit.commits
    await asyncio.gather(*(audit.record(AuditEvent.of(actor, "bench.read", n=str(i))) for i in range(300)))
    assert (await audit.head(clinic.id))[0] == before_seq + 300
    assert audit.commits - before_commits < 300  # entries shared commits
    assert (await _verify(client, clinic))["ok"]


async def test_group_commits_and_appends_in_other_transactions_keep_one_chain(client, clinic, other_clinic):
    """The PostgreSQL writer appends a tenant's batch in one statement while the head is
    where it left it (vault/audit/writer.py); an entry appended inside another
    transaction moves the head behind its back. Interleaved rounds of both, plus batches
    naming two tenants: every entry is written once, each chain verifies, and on
    PostgreSQL both of the writer's paths were taken."""
    runtime = client.server.app[RUNTIME]
    audit = runtime.audit
    mine, theirs = Actor(clinic.id, "t", "auditor", "r"), Actor(other_clinic.id, "t", "auditor", "r")
    before = (await audit.head(clinic.id))[0], (await audit.head(other_clinic.id))[0]
    for round_ in range(4):
        await asyncio.gather(*(audit.record(AuditEvent.of(mine, "bench.read", n=f"{round_}-{i}")) for i in range(10)))
        async with runtime.db.transaction() as session:  # as a business transaction does
            await audit.append(session, AuditEvent.of(mine, "bench.write", n=str(round_)))
        await asyncio.gather(*(audit.record(AuditEvent.of(who, "bench.read", n=f"{round_}-mixed-{i}"))
                               for i in range(6) for who in (mine, theirs)))
    assert (await audit.head(clinic.id))[0] == before[0] + 4 * (10 + 1 + 6)
    assert (await audit.head(other_clinic.id))[0] == before[1] + 4 * 6
    assert (await _verify(client, clinic))["ok"]
    resp = await client.get("/v1/audit/verify", headers=other_clinic.auth("auditor"))
    assert (await resp.json())["ok"] is True
    writer = audit._batches
    if runtime.db.dialect == "postgresql":
        assert writer.chained > 0 and writer.locked >= 4


async def test_a_held_commit_leaves_with_the_callers_it_waited_for(client, clinic, monkeypatch):
    """Under steady load the writer holds a commit until the callers the last one released
    are back (vault/audit/groupcommit.py, GroupCommit._gather). With the hold's bound made far
    longer than the test may take, rounds of concurrent readers still complete: the
    commit leaves when their entries are all there, not when the bound runs out; and
    every entry is in the verified chain."""
    from vault.audit import groupcommit

    monkeypatch.setattr(groupcommit, "GATHER_MAX_SECONDS", 600.0)
    audit = client.server.app[RUNTIME].audit
    actor = Actor(clinic.id, "t", "auditor", "r")
    before_seq = (await audit.head(clinic.id))[0]
    audit._group.commit_seconds = 600.0  # as if commits were slow: the hold is bounded by the patched maximum only

    async def reader(n: int) -> None:
        for i in range(5):  # each reader asks again as soon as its entry is durable
            await audit.record(AuditEvent.of(actor, "bench.read", n=f"{n}-{i}"))

    await asyncio.wait_for(asyncio.gather(*(reader(n) for n in range(8))), timeout=120)
    monkeypatch.undo()  # the callers below come one by one: no commit is held for long after this
    audit._group.commit_seconds = 0.0
    assert (await audit.head(clinic.id))[0] == before_seq + 40
    assert (await _verify(client, clinic))["ok"]


async def test_denials_are_audited_with_ids_only(client, clinic, other_clinic):
    resp = await client.get("/v1/patients/" + "a" * 32, headers=clinic.auth("records"))
    assert resp.status == 404
    resp = await client.get("/v1/audit", headers=clinic.auth("records"))
    assert resp.status == 403
    entries = await client.server.app[RUNTIME].audit.entries(clinic.id, limit=1000)
    outcomes = {(e.action, e.outcome) for e in entries}
    assert ("GET /v1/patients/{patient_id}", "not_found") in outcomes
    assert ("GET /v1/audit", "forbidden") in outcomes


def test_the_canonical_form_is_sorted_compact_json_byte_for_byte():
    """Chains written before stay verifiable: the canonical bytes are exactly those of
    ``json.dumps(entry, sort_keys=True, separators=(",", ":"))``, awkward strings included."""
    import json
    import random
    import string
    from datetime import UTC, datetime

    from vault.audit.service import canonical, canonical_targets

    rng = random.Random(7)
    ats: list[datetime] = []
    alphabet = string.printable + "é\u2028\x00\"\\\u00ff\U0001F600"
    for _ in range(500):
        fields = {k: "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
                  for k in ("tenant_id", "actor", "role", "action", "outcome", "request_id")}
        targets = {rng.choice(["media_id", "patient_id", "z", "é"]): rng.choice(alphabet) * 3 for _ in range(3)}
        fields["targets"] = canonical_targets(targets)
        assert fields["targets"] == json.dumps(targets, sort_keys=True, separators=(",", ":"))
        ats.append(datetime.now(UTC))
        at, seq = rng.choice(ats[-3:]), rng.randint(0, 10**12)  # the timestamp of a batch is remembered
        expected = json.dumps({**fields, "seq": seq, "at": at.isoformat()}, sort_keys=True, separators=(",", ":")).encode()
        assert canonical(seq=seq, at=at, **fields) == expected
