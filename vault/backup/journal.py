"""The shred journal: every shred, appended to a file kept apart from the backups.

The shred ledger lives in the metadata database, so a restored backup brings back the
ledger *of its time*: it cannot know what was erased after the backup. The journal
does. Every shred the vault makes (patient erasure, one object, an upload rollback, a
leftover) is also appended here, after the key store destroyed the key:

- a directory (``VAULT_SHRED_JOURNAL``; by default beside the ``file:`` root keyring,
  never inside the data folder) holding one file per host, ``<host>.jsonl``: processes
  on one host share it under an exclusive ``flock``; nodes on other machines write
  their own file in the same shared directory, and a restore reads them all;
- and/or, for nodes on several machines without a shared folder, objects in an S3
  bucket (``VAULT_SHRED_JOURNAL_S3``, :class:`StoreJournal`): one object per append;
- one JSON line per entry, ``fsync``-ed before the shred call returns: ids, cause and
  time, never key bytes or patient data;
- hash-chained: each line carries ``prev`` (the hash of the line before, 64 zeros for
  the first) and ``hash`` = SHA-256(prev || canonical JSON of the entry without
  ``hash``), so an edited, removed or reordered line breaks verification. A torn last
  line (a crash mid-append) is ignored. What a chain cannot show: the loss of the last
  lines, or a whole file rewritten by someone who can write it — keep the directory on
  storage that keeps its history (docs/operations.md).

:class:`JournaledLedger` is the one hook into the shredding path: the runtime builds
the shred ledger from it, and its two shred calls append to the journal once the key
is destroyed. If the append fails the shred call raises (the key is already gone); the
erasure stays pending and is finished — and journaled — by the reconcile job.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import logging
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from vault.db import utcnow
from vault.shredding.models import OBJECT, PATIENT_DEK
from vault.shredding.service import ShredLedger

log = logging.getLogger("vault.backup")

GENESIS = "0" * 64
SUFFIX = ".jsonl"
_TAIL = 8192


class JournalError(Exception):
    """The journal cannot be read or written, or its chain is broken."""


@dataclass(frozen=True)
class JournalEntry:
    kind: str  # patient_dek | object
    key_id: str | None  # None: the key was already gone (a marker, re-shred by ids)
    tenant_id: str
    patient_id: str
    object_id: str | None
    cause: str
    at: datetime


def _canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _digest(prev: str, body: dict[str, Any]) -> str:
    return hashlib.sha256(prev.encode() + _canonical(body)).hexdigest()


class ShredJournal:
    """One journal directory. Appends go to this host's file; reads cover every file."""

    def __init__(self, directory: Path, *, host: str | None = None) -> None:
        self.directory = directory
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in (host or socket.gethostname()))[:100] or "host"
        self.path = directory / f"{name}{SUFFIX}"

    # -- writing --------------------------------------------------------------------------
    async def append(self, entries: list[JournalEntry]) -> None:
        if entries:
            await asyncio.to_thread(self._append_blocking, entries)

    def _append_blocking(self, entries: list[JournalEntry]) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise JournalError(f"cannot open the shred journal in {self.directory}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # other processes of this host append to the same file
            prev, seq = _tail(fd)
            lines = []
            for entry in entries:
                seq += 1
                body = {"v": 1, "seq": seq, "at": entry.at.isoformat(timespec="microseconds"), "kind": entry.kind,
                        "key_id": entry.key_id, "tenant_id": entry.tenant_id, "patient_id": entry.patient_id,
                        "object_id": entry.object_id, "cause": entry.cause, "prev": prev}
                prev = _digest(prev, body)
                lines.append(_canonical({**body, "hash": prev}) + b"\n")
            os.write(fd, b"".join(lines))
            os.fsync(fd)
        except OSError as exc:
            raise JournalError(f"cannot append to the shred journal {self.path}: {exc.strerror}") from None
        finally:
            os.close(fd)  # releases the lock

    # -- reading --------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.directory.is_dir() and any(self.directory.glob(f"*{SUFFIX}"))

    def read(self) -> list[JournalEntry]:
        """Every entry of every host's file, each chain verified (``JournalError`` names
        the first bad line)."""
        entries: list[JournalEntry] = []
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            entries.extend(read_file(path))
        return entries

    def writable(self) -> bool:
        """Whether an append could succeed (the directory, or the nearest existing folder
        above it, is writable); creates nothing."""
        if self.directory.is_dir():
            return os.access(self.directory, os.W_OK) and (not self.path.exists() or os.access(self.path, os.W_OK))
        parent = self.directory.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        return parent.is_dir() and os.access(parent, os.W_OK)


def _tail(fd: int) -> tuple[str, int]:
    """The hash and sequence number of the file's last complete line; a torn last line
    (a crash mid-append) is cut off first, so the next line starts clean."""
    size = os.lseek(fd, 0, os.SEEK_END)
    window = _TAIL
    while size:
        start = max(0, size - window)
        data = os.pread(fd, size - start, start)
        end = data.rfind(b"\n")
        if end == -1 and start == 0:  # nothing but a torn line
            os.ftruncate(fd, 0)
            return GENESIS, 0
        begin = data.rfind(b"\n", 0, max(end, 0)) + 1
        if end == -1 or (begin == 0 and start > 0):
            window *= 2  # the last line starts before this window
            continue
        if start + end + 1 < size:
            os.ftruncate(fd, start + end + 1)
        last = json.loads(data[begin:end])
        return str(last["hash"]), int(last["seq"])
    return GENESIS, 0


def read_file(path: Path) -> list[JournalEntry]:
    entries: list[JournalEntry] = []
    prev, seq = GENESIS, 0
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise JournalError(f"cannot read the shred journal {path}: {exc.strerror}") from None
    lines = raw.split(b"\n")
    torn = lines.pop() if lines else b""  # after the last newline: empty, or a torn append
    if torn.strip():
        log.warning("ignoring a torn last line of the shred journal", extra={"journal": str(path)})
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            document = json.loads(line)
            claimed = document.pop("hash")
            ok = (document.get("prev") == prev and document.get("seq") == seq + 1
                  and _digest(prev, document) == claimed)
        except (ValueError, KeyError, AttributeError, TypeError):
            ok = False
        if not ok:
            raise JournalError(f"the shred journal {path.name} is broken at line {number}: "
                               "an entry was edited, removed or reordered")
        prev, seq = claimed, seq + 1
        entries.append(JournalEntry(kind=document["kind"], key_id=document["key_id"], tenant_id=document["tenant_id"],
                                    patient_id=document["patient_id"], object_id=document["object_id"],
                                    cause=document["cause"], at=datetime.fromisoformat(document["at"])))
    return entries


class StoreJournal:
    """The journal as objects in an S3 bucket (``VAULT_SHRED_JOURNAL_S3``), for nodes on
    several machines without a shared folder: one object per append, named
    ``sj<chain><seq>`` (a chain per process: 24 random hex, then a 12-digit sequence), the
    same hash chain inside each chain. A missing object in the middle of a chain breaks
    it; keep the bucket versioned (and apart from the blob store's prefix: the leftover
    sweep would take journal objects for blobs without a row)."""

    PREFIX = "sj"

    def __init__(self, store) -> None:
        import secrets

        self.store = store
        self.chain = secrets.token_hex(12)
        self._seq = 0
        self._prev = GENESIS
        self._lock = asyncio.Lock()

    async def append(self, entries: list[JournalEntry]) -> None:
        if not entries:
            return
        async with self._lock:
            body = {"v": 1, "chain": self.chain, "seq": self._seq + 1, "prev": self._prev,
                    "entries": [_entry_document(e) for e in entries]}
            digest = _digest(self._prev, body)
            data = _canonical({**body, "hash": digest})

            async def chunks():
                yield data

            try:
                await self.store.put(f"{self.PREFIX}{self.chain}{self._seq + 1:012d}", chunks(), size_hint=len(data))
            except Exception as exc:  # a vendor error: named by type only
                raise JournalError(f"cannot append to the S3 shred journal: {type(exc).__name__}") from None
            self._seq, self._prev = self._seq + 1, digest

    async def read(self) -> list[JournalEntry]:
        chains: dict[str, list[str]] = {}
        try:
            async for key in self.store.keys(self.PREFIX):
                chains.setdefault(key[2:26], []).append(key)
            documents = {key: json.loads(await self.store.read(key)) for keys in chains.values() for key in keys}
        except ValueError:
            raise JournalError("the S3 shred journal holds an unreadable object") from None
        except Exception as exc:  # noqa: BLE001 - unreachable bucket: a restore must not go on
            raise JournalError(f"cannot read the S3 shred journal: {type(exc).__name__}") from None
        entries: list[JournalEntry] = []
        for chain, keys in sorted(chains.items()):
            prev = GENESIS
            for number, key in enumerate(sorted(keys), start=1):
                document = documents[key]
                claimed = document.pop("hash", None)
                if document.get("seq") != number or document.get("prev") != prev or _digest(prev, document) != claimed:
                    raise JournalError(f"the S3 shred journal chain {chain} is broken at object {number}: "
                                       "an object was edited, removed or reordered")
                prev = claimed
                entries.extend(_entry_of(d) for d in document["entries"])
        return entries

    async def close(self) -> None:
        await self.store.close()


def _entry_document(entry: JournalEntry) -> dict[str, Any]:
    return {"at": entry.at.isoformat(timespec="microseconds"), "kind": entry.kind, "key_id": entry.key_id,
            "tenant_id": entry.tenant_id, "patient_id": entry.patient_id, "object_id": entry.object_id,
            "cause": entry.cause}


def _entry_of(document: dict[str, Any]) -> JournalEntry:
    return JournalEntry(kind=document["kind"], key_id=document["key_id"], tenant_id=document["tenant_id"],
                        patient_id=document["patient_id"], object_id=document["object_id"], cause=document["cause"],
                        at=datetime.fromisoformat(document["at"]))


class Journals:
    """Every configured journal: a shred is appended to each (file and/or S3)."""

    def __init__(self, *, file: ShredJournal | None, store: StoreJournal | None) -> None:
        self.file = file
        self.store = store

    async def append(self, entries: list[JournalEntry]) -> None:
        if self.file is not None:
            await self.file.append(entries)
        if self.store is not None:
            await self.store.append(entries)

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()


class JournaledLedger(ShredLedger):
    """The shred ledger, with every shred also appended to the journal."""

    def __init__(self, db, keys, *, journal: ShredJournal | Journals | None) -> None:
        super().__init__(db, keys)
        self.journal = journal

    async def shred_patient(self, tenant_id: str, patient_id: str, **kwargs: Any) -> list[str]:
        ids = await super().shred_patient(tenant_id, patient_id, **kwargs)
        key_id = ids[0] if ids else None  # None: already gone, recorded as a marker
        await self._journal([JournalEntry(PATIENT_DEK, key_id, tenant_id, patient_id, None, kwargs["cause"], utcnow())])
        return ids

    async def shred_object(self, tenant_id: str, patient_id: str, object_id: str, **kwargs: Any) -> str | None:
        key_id = await super().shred_object(tenant_id, patient_id, object_id, **kwargs)
        await self._journal([JournalEntry(OBJECT, key_id, tenant_id, patient_id, object_id, kwargs["cause"], utcnow())])
        return key_id

    async def _journal(self, entries: list[JournalEntry]) -> None:
        if self.journal is None:
            return
        try:
            await self.journal.append(entries)
        except JournalError:
            # Key ids are random, not patient data: the operator can re-shred from this line.
            log.error("shred journal append failed after the keys were destroyed",
                      extra={"destroyed_key_ids": [e.key_id for e in entries if e.key_id]})
            raise


def journal_for(settings) -> ShredJournal | None:
    """The configured journal folder, or None when there is none."""
    return ShredJournal(settings.shred_journal) if settings.shred_journal is not None else None


def journals_for(settings) -> Journals | None:
    """Every configured journal (folder and/or S3), or None when there is none (a restore
    then needs ``--accept-resurrection-risk``). The caller closes it."""
    store = None
    if settings.shred_journal_s3:
        from vault.storage import open_store

        store = StoreJournal(open_store(settings.shred_journal_s3))
    file = journal_for(settings)
    return Journals(file=file, store=store) if file is not None or store is not None else None
