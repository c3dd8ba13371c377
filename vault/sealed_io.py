"""Sealed blobs as blocking file objects, for libraries that read and write files in a
worker thread (PyAV): a seekable decrypting reader and an encrypting writer, both
bridged to the async blob store on the event loop. Nothing touches a disk in plaintext.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from typing import TypeVar

from keys.blob import BlobEncryptor, DecryptingReader
from vault.sealed import SealedBlobs, SealedRef

T = TypeVar("T")
QUEUE_DEPTH = 4  # encrypted segments in flight between the thread and the store
WAIT_SECONDS = 120  # every wait of a thread on the loop is bounded (invariant 11)


async def reader_factory(sealed: SealedBlobs, ref: SealedRef) -> Callable[[], DecryptingReader]:
    """Make, in a worker thread only, seekable readers of the plaintext: a reader
    fetches synchronously through the event loop, so it must never run on it."""
    key = await sealed._key(ref)
    loop = asyncio.get_running_loop()

    def fetch(start: int, end: int) -> bytes:
        return asyncio.run_coroutine_threadsafe(sealed.store.read(ref.id, start=start, end=end), loop).result(WAIT_SECONDS)

    return functools.partial(DecryptingReader, key, ref.binding, fetch, ref.plain_size)


async def write_in_thread(
    sealed: SealedBlobs, tenant_id: str, patient_id: str, produce: Callable[[BlobEncryptor], T]
) -> tuple[SealedRef, T]:
    """Run ``produce(writer)`` in a thread; what it writes is encrypted under a new object
    key and streamed into the store. If it raises, nothing is stored and the key is shredded."""
    ref, key = await sealed._new(tenant_id, patient_id, 0)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=QUEUE_DEPTH)

    store_failed = threading.Event()

    def sink(piece: bytes) -> None:
        if store_failed.is_set():
            raise OSError("the blob store stopped accepting data")
        asyncio.run_coroutine_threadsafe(queue.put(piece), loop).result(WAIT_SECONDS)

    def on_put_done(task: asyncio.Task) -> None:
        if task.cancelled() or task.exception() is not None:
            store_failed.set()
            while not queue.empty():  # unblock a writer waiting for room
                queue.get_nowait()

    async def pieces():
        while (piece := await queue.get()) is not None:
            yield piece

    class _Failed(Exception):
        pass

    async def failing_pieces():
        async for piece in pieces():
            yield piece
        if failed:
            raise _Failed  # makes the store abort the put: nothing partial is visible

    failed = False

    def run() -> tuple[T, int]:
        nonlocal failed
        encryptor = BlobEncryptor(key, ref.binding, sink)
        try:
            result = produce(encryptor)
            encryptor.close()
            return result, encryptor.plain_size
        except BaseException:
            failed = True
            encryptor.abort()
            raise
        finally:
            if not store_failed.is_set():
                asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()

    put = asyncio.create_task(sealed.store.put(ref.id, failing_pieces()))
    put.add_done_callback(on_put_done)
    try:
        result, size = await asyncio.to_thread(run)
        await put
    except BaseException:
        if not put.done():
            put.cancel()
        await asyncio.gather(put, return_exceptions=True)
        await sealed._shred(ref, cause="upload_rollback")
        raise
    return SealedRef(id=ref.id, tenant_id=tenant_id, patient_id=patient_id, plain_size=size), result
