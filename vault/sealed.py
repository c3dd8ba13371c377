"""Sealed blobs: the one place that joins the key store and the blob store.

Every blob gets a fresh random id, which is both its storage key (no patient
identifier in any path) and its key-store object id: a new 256-bit object key,
wrapped by the patient DEK, so no (key, nonce) pair is ever reused and one blob
can be shredded alone. Decryption binds the ids the caller got from the database.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from keys.blob import Binding, decrypt_bytes, decrypt_range_stream, encrypt_bytes, encrypt_stream
from keys.blobio import ciphertext_size
from keys.errors import KeyDestroyed, KeyNotFound
from vault.db import new_id
from vault.errors import Gone
from vault.instruments import timed_stage
from vault.shredding.models import OBJECT_DELETE, UPLOAD_ROLLBACK

if TYPE_CHECKING:
    from vault.leftovers.leases import WriteLeases
    from vault.shredding.service import ShredLedger


@dataclass(frozen=True)
class SealedRef:
    """What the database keeps about a stored blob."""

    id: str
    tenant_id: str
    patient_id: str
    plain_size: int

    @cached_property
    def binding(self) -> Binding:
        return Binding(tenant_id=self.tenant_id, patient_id=self.patient_id, object_id=self.id, key_id=self.id)


@dataclass(frozen=True)
class Reserved:
    """A blob id with its lease and object key, not written yet (:meth:`SealedBlobs.reserve`)."""

    ref: SealedRef  # plain_size 0 until written
    key: bytes = field(repr=False)


class SealedBlobs:
    def __init__(self, keys, store, *, ledger: ShredLedger | None = None, leases: WriteLeases | None = None) -> None:
        self.keys = keys
        self.store = store
        # Writer leases (docs/storage.md, "Leftovers"): None for tools and tests without
        # a metadata database, which then have no leftover sweep either.
        self.leases = leases
        # Records every destroyed object key in the shred ledger (None: tools and tests
        # that run without a metadata database).
        self.ledger = ledger

    async def _new(self, tenant_id: str, patient_id: str, plain_size: int) -> tuple[SealedRef, bytes]:
        (reserved,) = await self.reserve(tenant_id, patient_id, 1)
        return dataclasses.replace(reserved.ref, plain_size=plain_size), reserved.key

    async def reserve(self, tenant_id: str, patient_id: str, count: int) -> list[Reserved]:
        """Ids and object keys for ``count`` blobs of one patient about to be written: one
        lease commit and one key-store commit for all of them. Each is written once
        (:meth:`put_reserved`); one left unwritten is given back with :meth:`destroy`
        (its key shredded, its lease ended), as is a written one whose row never commits."""
        refs = [SealedRef(id=new_id(), tenant_id=tenant_id, patient_id=patient_id, plain_size=0) for _ in range(count)]
        if self.leases is not None:
            # Before the keys exist: the leftover sweep never sees a live write's key or blob.
            await self.leases.begin_many([ref.id for ref in refs], tenant_id, patient_id)
        try:
            keys = await self.keys.new_object_keys(tenant_id, patient_id, [ref.id for ref in refs])
        except BaseException:
            if self.leases is not None:  # no key, no blob: nothing left for the leases to guard
                await asyncio.gather(*(self.leases.end(ref.id) for ref in refs), return_exceptions=True)
            raise
        return [Reserved(ref=ref, key=key) for ref, key in zip(refs, keys, strict=True)]

    @timed_stage("seal")
    async def put_bytes(self, tenant_id: str, patient_id: str, data: bytes) -> SealedRef:
        ref, key = await self._new(tenant_id, patient_id, len(data))
        return await self._put(ref, key, data)

    @timed_stage("seal")
    async def put_reserved(self, reserved: Reserved, data: bytes) -> SealedRef:
        """Encrypt and store ``data`` under a reservation; its key is shredded if the write fails."""
        return await self._put(dataclasses.replace(reserved.ref, plain_size=len(data)), reserved.key, data)

    async def _put(self, ref: SealedRef, key: bytes, data: bytes) -> SealedRef:
        sealed = encrypt_bytes(key, ref.binding, data)

        async def one():
            yield sealed

        try:
            await self.store.put(ref.id, one(), size_hint=len(sealed))
        except BaseException:
            await self._shred(ref, cause=UPLOAD_ROLLBACK)
            raise
        return ref

    @timed_stage("seal.stream")
    async def put_stream(self, tenant_id: str, patient_id: str, chunks: AsyncIterable[bytes]) -> SealedRef:
        """Encrypt and store a stream; the plaintext size is known only at the end."""
        ref, key = await self._new(tenant_id, patient_id, 0)
        counted = _Counter(chunks)
        try:
            await self.store.put(ref.id, encrypt_stream(key, ref.binding, counted))
        except BaseException:
            await self._shred(ref, cause=UPLOAD_ROLLBACK)
            raise
        return SealedRef(id=ref.id, tenant_id=tenant_id, patient_id=patient_id, plain_size=counted.size)

    async def _key(self, ref: SealedRef) -> bytes:
        try:
            return await self.keys.object_key(ref.tenant_id, ref.patient_id, ref.id)
        except (KeyDestroyed, KeyNotFound):
            raise Gone("the data has been erased") from None

    async def open_key(self, ref: SealedRef) -> bytes:
        """The blob's object key, after reading its key row (410 when it was shredded).
        A caller that checks before it answers (a 304, a status line) passes it on to
        :meth:`read` or :meth:`stream`, so one read checks the row once."""
        return await self._key(ref)

    async def read(self, ref: SealedRef, *, key: bytes | None = None) -> bytes:
        key = await self._key(ref) if key is None else key
        return decrypt_bytes(key, ref.binding, await self.store.read(ref.id))

    async def stream(self, ref: SealedRef, start: int = 0, end: int | None = None, *,
                     key: bytes | None = None) -> AsyncIterator[bytes]:
        """Plaintext ``[start, end)``; reads and decrypts only the segments it touches."""
        key = await self._key(ref) if key is None else key
        end = ref.plain_size if end is None else end

        async def fetch(cstart: int, cend: int) -> bytes:
            return await self.store.read(ref.id, start=cstart, end=cend)

        return decrypt_range_stream(key, ref.binding, fetch, start, end, ref.plain_size)

    async def destroy(self, ref: SealedRef, *, cause: str = OBJECT_DELETE) -> None:
        """Shred first (the key, then its ledger row), then delete the bytes; a crash in
        between leaves only ciphertext. ``cause``: ``object_delete`` or ``upload_rollback``."""
        await self._shred(ref, cause=cause)
        await self.store.delete(ref.id)

    async def _shred(self, ref: SealedRef, *, cause: str) -> None:
        if self.ledger is None:
            await self.keys.destroy_object(ref.tenant_id, ref.patient_id, ref.id)
        else:
            await self.ledger.shred_object(ref.tenant_id, ref.patient_id, ref.id, cause=cause)
        if self.leases is not None:
            # A rolled-back write ends here; any bytes left are ciphertext under no key,
            # which the leftover sweep deletes.
            await self.leases.end(ref.id)

    @staticmethod
    def stored_size(plain_size: int) -> int:
        return ciphertext_size(plain_size)


class _Counter:
    def __init__(self, chunks: AsyncIterable[bytes]) -> None:
        self.chunks = chunks
        self.size = 0

    def __aiter__(self):
        return self._run()

    async def _run(self):
        async for chunk in self.chunks:
            self.size += len(chunk)
            yield chunk
