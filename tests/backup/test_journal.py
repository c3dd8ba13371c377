"""The shred journal on its own: hash chain, torn appends, several processes of one host."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from vault.backup.journal import JournalEntry, JournalError, ShredJournal


def _entry(i: int) -> JournalEntry:
    return JournalEntry("object", f"key-{i}", "tenant", "patient", f"object-{i}", "object_delete", datetime.now(UTC))


async def test_entries_read_back_in_order_and_chained(tmp_path):
    journal = ShredJournal(tmp_path / "journal", host="node-a")
    await journal.append([_entry(1), _entry(2)])
    await journal.append([_entry(3)])
    assert [e.key_id for e in journal.read()] == ["key-1", "key-2", "key-3"]
    lines = [json.loads(line) for line in journal.path.read_text().splitlines()]
    assert [d["seq"] for d in lines] == [1, 2, 3]
    assert lines[0]["prev"] == "0" * 64 and lines[1]["prev"] == lines[0]["hash"]
    assert (journal.path.stat().st_mode & 0o777) == 0o600


@pytest.mark.parametrize("tamper", ["edit", "remove", "swap"])
async def test_a_changed_line_breaks_the_chain(tmp_path, tamper):
    journal = ShredJournal(tmp_path / "journal", host="node-a")
    await journal.append([_entry(i) for i in range(4)])
    lines = journal.path.read_text().splitlines()
    if tamper == "edit":
        lines[1] = lines[1].replace("key-1", "key-9")
    elif tamper == "remove":
        del lines[1]
    else:
        lines[1], lines[2] = lines[2], lines[1]
    journal.path.write_text("\n".join(lines) + "\n")
    with pytest.raises(JournalError, match="broken at line 2"):
        journal.read()


async def test_a_torn_append_is_cut_off_and_the_chain_goes_on(tmp_path):
    journal = ShredJournal(tmp_path / "journal", host="node-a")
    await journal.append([_entry(1)])
    with journal.path.open("ab") as f:
        f.write(b'{"v":1,"seq":2,"kind":"obj')  # a crash in the middle of a line
    assert [e.key_id for e in journal.read()] == ["key-1"]  # ignored when read
    await journal.append([_entry(2)])
    assert [e.key_id for e in journal.read()] == ["key-1", "key-2"]


def test_processes_of_one_host_share_one_chain_and_hosts_have_their_own(tmp_path):
    code = (
        "import asyncio, sys\n"
        "from datetime import UTC, datetime\n"
        "from pathlib import Path\n"
        "from vault.backup.journal import JournalEntry, ShredJournal\n"
        "j = ShredJournal(Path(sys.argv[1]), host='node-a')\n"
        "async def main():\n"
        "    for i in range(40):\n"
        "        await j.append([JournalEntry('object', f'{sys.argv[2]}-{i}', 't', 'p', 'o', 'leftover', datetime.now(UTC))])\n"
        "asyncio.run(main())\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "journal"), name]) for name in "abc"]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    other = ShredJournal(tmp_path / "journal", host="node-b")
    import asyncio

    asyncio.run(other.append([_entry(99)]))
    entries = ShredJournal(tmp_path / "journal").read()
    assert len(entries) == 121 and len({e.key_id for e in entries}) == 121
    assert sorted(p.name for p in (tmp_path / "journal").iterdir()) == ["node-a.jsonl", "node-b.jsonl"]


async def test_the_s3_journal_chains_each_process_and_a_restore_reads_it(tmp_path, moto, aiohttp_client):
    from tests.backup.support import own_vault, start
    from tests.shredding.support import new_patient, upload_photo
    from vault.backup.journal import StoreJournal
    from vault.storage import open_store

    bucket = "journal-" + secrets.token_hex(4)
    s3 = moto.client("s3")
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": moto.region})
    url = f"s3://{bucket}/shreds/?endpoint_url={moto.url}&region={moto.region}"

    # three appends of one process: one chain; a missing object in the middle breaks it
    journal = StoreJournal(open_store(url))
    for i in range(3):
        await journal.append([_entry(i)])
    assert [e.key_id for e in await journal.read()] == ["key-0", "key-1", "key-2"]
    s3.delete_object(Bucket=bucket, Key=f"shreds/sj{journal.chain}{2:012d}")
    with pytest.raises(JournalError, match="broken at object 2"):
        await journal.read()
    await journal.close()

    # a vault journaling to S3 only: its restore re-erases from the bucket
    url = f"s3://{bucket}/vault/?endpoint_url={moto.url}&region={moto.region}"
    async with own_vault("sqlite", tmp_path, journal_s3=url) as vault:
        client = await start(vault, aiohttp_client)
        patient = await new_patient(client, vault)
        await upload_photo(client, vault, patient)
        await client.close()
        assert vault.cli("backup", "--to", str(tmp_path / "backup")).returncode == 0
        client = await start(vault, aiohttp_client)
        resp = await client.post(f"/v1/patients/{patient}/erasure", json={"reason": "Art. 17"}, headers=vault.auth("dpo"))
        assert resp.status == 200
        await client.close()
        no_folder = {"VAULT_SHRED_JOURNAL": str(tmp_path / "nowhere")}
        restored = vault.cli("restore", "--from", str(tmp_path / "backup"), "--force", env=no_folder)
        assert restored.returncode == 0, restored.stderr
        assert "1 patients erased again" in restored.stdout
        client = await start(vault, aiohttp_client)
        assert (await client.get(f"/v1/patients/{patient}", headers=vault.auth("practitioner"))).status == 410
        await client.close()
