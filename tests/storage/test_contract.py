"""One contract for every BlobStore: the same tests run on LocalStore (a real folder) and
S3Store (moto's S3 server over HTTP). Backend-specific facts (files on disk, multipart
uploads) are read through each backend's own real API, never through our code."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import random
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from vault.errors import BlobNotFound
from vault.storage import BlobStore, LocalStore, S3Store, new_key
from vault.storage.s3 import MIN_PART_SIZE

MiB = 1 << 20
PART = MIN_PART_SIZE  # the S3 store under test uses the smallest legal part


@dataclass
class Backend:
    name: str
    store: BlobStore
    # Everything stored or half-stored under this store: files (temp ones included) or
    # objects plus open multipart uploads.
    leftovers: Callable[[], list[str]]
    # How many parts S3 assembled the object from (ETag "-N"); None for a local file.
    parts: Callable[[str], int | None]
    # What a writer killed mid-upload leaves behind.
    make_partial: Callable[[str], None]
    # moto reports a fixed 2010 "Initiated" for every multipart upload, so age-based
    # sweeping can only be checked where the backend reports a real age.
    partial_age_is_real: bool = True


@pytest.fixture(scope="module")
def s3_client(moto):
    return moto.client("s3")


@pytest.fixture(scope="module")
def s3_bucket(moto, s3_client) -> str:
    name = f"vault-contract-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": moto.region})
    return name


def _local_backend(root: Path) -> Backend:
    def leftovers() -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    def make_partial(key: str) -> None:
        folder = root / key[:2] / key[2:4]
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{key}.0123456789ab.part"
        partial.write_bytes(b"\0" * 1000)
        old = partial.stat().st_mtime - 7200
        os.utime(partial, (old, old))

    return Backend("local", LocalStore(root), leftovers, lambda key: None, make_partial)


def _s3_backend(moto, client, bucket: str) -> Backend:
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    store = S3Store.from_url(
        f"s3://{bucket}/{prefix}?endpoint_url={moto.url}&region={moto.region}&part_size={PART}"
    )

    def leftovers() -> list[str]:
        objects = client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])
        uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=prefix + "/").get("Uploads", [])
        return sorted([o["Key"] for o in objects] + [f"upload:{u['Key']}" for u in uploads])

    def parts(key: str) -> int | None:
        etag = client.head_object(Bucket=bucket, Key=f"{prefix}/{key}")["ETag"].strip('"')
        return int(etag.rsplit("-", 1)[1]) if "-" in etag else 1

    def make_partial(key: str) -> None:
        upload = client.create_multipart_upload(Bucket=bucket, Key=f"{prefix}/{key}")
        client.upload_part(
            Bucket=bucket, Key=f"{prefix}/{key}", UploadId=upload["UploadId"], PartNumber=1,
            Body=b"\0" * 1000,
        )

    return Backend("s3", store, leftovers, parts, make_partial, partial_age_is_real=False)


@pytest.fixture(params=["local", "s3"])
async def backend(request, tmp_path) -> AsyncIterator[Backend]:
    if request.param == "local":
        b = _local_backend(tmp_path / "blobs")
    else:
        b = _s3_backend(
            request.getfixturevalue("moto"),
            request.getfixturevalue("s3_client"),
            request.getfixturevalue("s3_bucket"),
        )
    yield b
    await b.store.close()


# --- helpers ---------------------------------------------------------------------------

def payload(size: int, *, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def fetch(store: BlobStore, key: str, **rng: int | None) -> tuple[bytes, int, int]:
    async with await store.get(key, **rng) as blob:
        body = b"".join([chunk async for chunk in blob])
    return body, blob.length, blob.total_size


# --- round trips -------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 1000, 2 * MiB + 17])
async def test_round_trip(backend: Backend, size: int) -> None:
    data = payload(size, seed=size)
    key = new_key()
    assert await backend.store.put(key, chunked(data, 64 * 1024)) == size
    assert await backend.store.exists(key)
    assert await backend.store.size(key) == size
    assert await backend.store.read(key) == data
    assert await fetch(backend.store, key) == (data, size, size)


@pytest.mark.parametrize(("size", "chunk"), [(20_000, 1), (200_000, 7), (300_000, 4096), (3 * MiB, 65_537)])
async def test_many_chunk_sizes(backend: Backend, size: int, chunk: int) -> None:
    data = payload(size, seed=chunk)
    key = new_key()
    assert await backend.store.put(key, chunked(data, chunk)) == size
    assert await backend.store.read(key) == data


async def test_parts_split_across_odd_chunks(backend: Backend) -> None:
    # Chunk boundaries never line up with part boundaries: 2 full parts + a short tail.
    data = payload(2 * PART + 12_345, seed=3)
    key = new_key()
    await backend.store.put(key, chunked(data, 999_983))
    assert await backend.store.read(key) == data
    assert backend.parts(key) in (None, 3)


async def test_one_part_exactly_is_a_single_upload(backend: Backend) -> None:
    data = payload(PART, seed=4)
    key = new_key()
    await backend.store.put(key, chunked(data, MiB))
    assert await backend.store.read(key) == data
    assert backend.parts(key) in (None, 1)


async def test_producer_may_reuse_its_buffer(backend: Backend) -> None:
    # A reader doing readinto() hands out the same bytearray each time.
    data = payload(3 * MiB + 5, seed=5)

    async def reusing() -> AsyncIterator[bytearray]:
        buf = bytearray(256 * 1024)
        for i in range(0, len(data), len(buf)):
            piece = data[i : i + len(buf)]
            buf[: len(piece)] = piece
            yield buf if len(piece) == len(buf) else buf[: len(piece)]

    key = new_key()
    await backend.store.put(key, reusing())
    assert await backend.store.read(key) == data


async def test_overwrite_last_put_wins(backend: Backend) -> None:
    key = new_key()
    await backend.store.put(key, chunked(b"first version", 4))
    await backend.store.put(key, chunked(b"second", 4))
    assert await backend.store.read(key) == b"second"


async def test_concurrent_puts(backend: Backend) -> None:
    blobs = {new_key(): payload(MiB + i * 1000, seed=i) for i in range(6)}
    written = await asyncio.gather(*(backend.store.put(k, chunked(d, 100_000)) for k, d in blobs.items()))
    assert written == [len(d) for d in blobs.values()]
    for k, d in blobs.items():
        assert await backend.store.read(k) == d


# --- ranges ----------------------------------------------------------------------------

SIZE = 2 * MiB + 1000  # more than one read chunk, so ranged streams span chunks


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (0, None),          # whole
        (0, SIZE),          # whole, explicit
        (0, 10),            # head
        (MiB - 5, MiB + 5),  # middle, across a read chunk boundary
        (1000, SIZE - 1000),  # most of it
        (SIZE - 10, None),  # tail
        (SIZE - 10, SIZE + 100),  # end past the blob is clamped
        (5, 5),             # empty range
        (SIZE, None),       # start at the end
        (SIZE + 10, SIZE + 20),  # wholly past the end
    ],
)
async def test_ranges(backend: Backend, start: int, end: int | None) -> None:
    data = payload(SIZE, seed=7)
    key = new_key()
    await backend.store.put(key, chunked(data, 300_000))
    expected = data[start:end]
    assert await backend.store.read(key, start=start, end=end) == expected
    assert await fetch(backend.store, key, start=start, end=end) == (expected, len(expected), SIZE)


async def test_ranges_of_an_empty_blob(backend: Backend) -> None:
    key = new_key()
    await backend.store.put(key, chunked(b"", 1))
    assert await backend.store.read(key, start=0, end=10) == b""
    assert await fetch(backend.store, key, start=3) == (b"", 0, 0)


@pytest.mark.parametrize(("start", "end"), [(-1, None), (10, 5), (0, -1), (1.5, None), (True, None)])
async def test_bad_ranges_are_rejected(backend: Backend, start, end) -> None:
    key = new_key()
    await backend.store.put(key, chunked(b"0123456789", 3))
    with pytest.raises(ValueError):
        await backend.store.read(key, start=start, end=end)
    with pytest.raises(ValueError):
        await backend.store.get(key, start=start, end=end)


async def test_reader_closed_early_releases_the_blob(backend: Backend) -> None:
    key = new_key()
    await backend.store.put(key, chunked(payload(3 * MiB), MiB))
    reader = await backend.store.get(key)
    first = await anext(reader)
    assert len(first) == MiB
    await reader.aclose()
    assert [c async for c in reader] == []  # closed readers yield nothing more
    await backend.store.delete(key)
    assert backend.leftovers() == []


# --- a large blob ------------------------------------------------------------------------

async def test_64_mib_streams_through_multipart(backend: Backend) -> None:
    size = 64 * MiB
    sent = hashlib.sha256()

    async def generate() -> AsyncIterator[bytes]:
        block = payload(MiB + 7, seed=64)  # odd size: chunks straddle part boundaries
        left = size
        counter = 0
        while left:
            # Vary each chunk so a repeated or dropped chunk changes the hash.
            chunk = counter.to_bytes(8, "big") + block[: min(len(block), left) - 8]
            counter += 1
            left -= len(chunk)
            sent.update(chunk)
            yield chunk

    key = new_key()
    assert await backend.store.put(key, generate()) == size
    assert await backend.store.size(key) == size
    received = hashlib.sha256()
    async with await backend.store.get(key) as blob:
        async for chunk in blob:
            received.update(chunk)
    assert received.hexdigest() == sent.hexdigest()
    assert backend.parts(key) in (None, -(-size // PART))


# --- missing, delete, exists, keys -------------------------------------------------------

async def test_missing_key(backend: Backend) -> None:
    key = new_key()
    assert not await backend.store.exists(key)
    for call in (backend.store.get(key), backend.store.read(key), backend.store.size(key),
                 backend.store.get(key, start=3, end=3), backend.store.read(key, start=10**9)):
        with pytest.raises(BlobNotFound) as caught:
            await call
        assert caught.value.key == key
        assert caught.value.__suppress_context__  # raised "from None": no vendor traceback


async def test_delete_is_idempotent(backend: Backend) -> None:
    key = new_key()
    await backend.store.put(key, chunked(b"to be deleted", 5))
    await backend.store.delete(key)
    assert not await backend.store.exists(key)
    await backend.store.delete(key)
    await backend.store.delete(new_key())
    assert backend.leftovers() == []


async def test_keys_enumerates_by_prefix(backend: Backend) -> None:
    rnd = new_key()[:20]
    names = ["aa00" + rnd, "aa01" + rnd, "aa0Z" + rnd, "ab00" + rnd, "f_-x" + rnd, "Zz00" + rnd]
    for name in names:
        await backend.store.put(name, chunked(b"x", 1))
    backend.make_partial("aa02" + rnd)  # half-written blobs are not keys

    async def listed(prefix: str = "") -> list[str]:
        return [k async for k in backend.store.keys(prefix)]

    assert await listed() == sorted(names)
    assert await listed("aa") == sorted(names[:3])
    assert await listed("aa0") == sorted(names[:3])
    assert await listed("aa00") == [names[0]]
    assert await listed("aa00" + rnd[:5]) == [names[0]]
    assert await listed("a") == sorted(names[:4])
    assert await listed("zz") == []
    with pytest.raises(ValueError):
        await listed("../")


async def test_sweep_partials_removes_what_crashed_writers_left(backend: Backend) -> None:
    kept = new_key()
    await backend.store.put(kept, chunked(b"complete blob", 4))
    backend.make_partial(new_key())
    before = backend.leftovers()
    assert len(before) == 2
    if backend.partial_age_is_real:
        # make_partial backdates by 2 h: younger than 3 h is kept, older than 1 h is not.
        assert await backend.store.sweep_partials(older_than_s=3 * 3600) == 0
        assert backend.leftovers() == before
        assert await backend.store.sweep_partials(older_than_s=3600) == 1
        assert len(backend.leftovers()) == 1
        backend.make_partial(new_key())
    await asyncio.sleep(0.01)
    assert await backend.store.sweep_partials(older_than_s=0) == 1
    assert len(backend.leftovers()) == 1
    assert await backend.store.read(kept) == b"complete blob"


# --- keys are validated ------------------------------------------------------------------

@pytest.mark.parametrize(
    "key",
    ["", "short", "../../etc/passwd", "a" * 15, "a" * 129, "abcdefgh/ijklmnop", "abcdefghijklmnop.part",
     ".abcdefghijklmnop", "abcdefghijklmnop\n", "abcdéfghijklmnop", "abcdefgh ijklmnop", 12345678901234567],
)
async def test_bad_keys_are_rejected(backend: Backend, key) -> None:
    store = backend.store
    for call in (lambda: store.put(key, chunked(b"x", 1)), lambda: store.get(key), lambda: store.read(key),
                 lambda: store.delete(key), lambda: store.exists(key), lambda: store.size(key)):
        with pytest.raises(ValueError):
            await call()
    assert backend.leftovers() == []


# --- interrupted writes leave nothing ----------------------------------------------------

class ProducerFailed(Exception):
    pass


async def failing_after(data: bytes, *, fail_at: int) -> AsyncIterator[bytes]:
    for i in range(0, fail_at, MiB):
        yield data[i : i + MiB]
    raise ProducerFailed("the upload connection dropped")


@pytest.mark.parametrize("fail_at", [0, 2 * MiB, 3 * PART])
async def test_interrupted_write_leaves_nothing(backend: Backend, fail_at: int) -> None:
    data = payload(fail_at + MiB, seed=11)
    key = new_key()
    with pytest.raises(ProducerFailed):
        await backend.store.put(key, failing_after(data, fail_at=fail_at))
    assert not await backend.store.exists(key)
    assert [k async for k in backend.store.keys()] == []
    assert backend.leftovers() == []


async def test_interrupted_overwrite_keeps_the_old_blob(backend: Backend) -> None:
    key = new_key()
    await backend.store.put(key, chunked(b"old and whole", 3))
    with pytest.raises(ProducerFailed):
        await backend.store.put(key, failing_after(payload(3 * PART), fail_at=2 * PART + MiB))
    assert await backend.store.read(key) == b"old and whole"
    assert len(backend.leftovers()) == 1


async def test_cancelled_write_leaves_nothing(backend: Backend) -> None:
    stalled = asyncio.Event()
    data = payload(2 * PART, seed=12)

    async def stalls() -> AsyncIterator[bytes]:
        for i in range(0, len(data), MiB):
            yield data[i : i + MiB]
        stalled.set()
        await asyncio.Event().wait()  # the client went quiet
        yield b"never"

    task = asyncio.create_task(backend.store.put(new_key(), stalls()))
    await stalled.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert backend.leftovers() == []


@pytest.mark.parametrize("size", [1000, 2 * PART + 1])
@pytest.mark.parametrize("delay", [0.0, 0.001, 0.01, 0.05])
async def test_cancelled_while_committing_leaves_nothing(backend: Backend, size: int, delay: float) -> None:
    # The producer is done; the cancel lands in the final write, rename, PutObject or
    # CompleteMultipartUpload, depending on timing. Whichever: the put failed, so no blob.
    finished = asyncio.Event()
    data = payload(size, seed=13)

    async def then_signal() -> AsyncIterator[bytes]:
        async for chunk in chunked(data, MiB):
            yield chunk
        finished.set()

    key = new_key()
    task = asyncio.create_task(backend.store.put(key, then_signal()))
    await finished.wait()
    await asyncio.sleep(delay)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        assert backend.leftovers() == []
        assert not await backend.store.exists(key)
    else:  # the put won the race and returned: then the blob is whole
        assert await backend.store.read(key) == data


# --- the store's own thread pool ---------------------------------------------------------

class _NoDefaultPool(concurrent.futures.ThreadPoolExecutor):
    """Stands in for the loop's default executor: records (and refuses) any use of it."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.used: list[str] = []

    def submit(self, fn, /, *args, **kwargs):
        self.used.append(getattr(fn, "__qualname__", repr(fn)))
        raise RuntimeError("the loop's default executor is not for blob stores")


def _store_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(("blob-file", "blob-s3"))]


async def test_blocking_calls_run_on_the_stores_own_bounded_pool(backend: Backend) -> None:
    loop = asyncio.get_running_loop()
    default = _NoDefaultPool()
    loop.set_default_executor(default)
    store = backend.store
    data = payload(2 * PART + 3, seed=21)
    keys = [new_key() for _ in range(24)]
    # More concurrent calls than the pool has threads: they queue, none runs elsewhere.
    await asyncio.gather(*(store.put(k, chunked(data if i == 0 else b"small %d" % i, MiB)) for i, k in enumerate(keys)))
    assert await fetch(store, keys[0]) == (data, len(data), len(data))
    assert await asyncio.gather(*(store.read(k, start=0, end=5) for k in keys[1:])) == [b"small"] * 23
    assert await store.size(keys[0]) == len(data) and await store.exists(keys[1])
    assert sorted([k async for k in store.keys()]) == sorted(keys)
    backend.make_partial(new_key())
    assert await store.sweep_partials(older_than_s=0) == 1
    await asyncio.gather(*(store.delete(k) for k in keys))
    assert default.used == []
    threads = _store_threads()
    assert 0 < len(threads) <= 16

    await store.close()  # the pool goes with the store: its threads end
    for _ in range(200):
        if not any(t.is_alive() for t in threads):
            break
        await asyncio.sleep(0.05)
    assert not any(t.is_alive() for t in threads)
    with pytest.raises(RuntimeError):
        await store.read(new_key())
