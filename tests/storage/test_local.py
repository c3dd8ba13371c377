"""LocalStore specifics the contract cannot see: what counts as a key on disk, and how
OS errors are reported."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from vault.errors import BlobNotFound, StorageError, StorageUnavailable
from vault.storage import LocalStore, new_key
from vault.storage.local import INLINE_READ_BYTES, _os_errors


async def _one(data: bytes):
    yield data


async def test_keys_lists_only_blobs_in_their_own_shard(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    key = new_key()
    await store.put(key, _one(b"real"))
    stray = "ffff" + new_key()[4:]
    (tmp_path / "00" / "00").mkdir(parents=True)
    (tmp_path / "00" / "00" / stray).write_bytes(b"in the wrong shard")  # unreadable by key
    (tmp_path / "notes.txt").write_bytes(b"operator file at the root")
    (tmp_path / key[:2] / key[2:4] / "README").write_bytes(b"too short to be a key")
    (tmp_path / key[:2] / "odd-folder").mkdir()
    assert [k async for k in store.keys()] == [key]
    with pytest.raises(BlobNotFound):
        await store.read(stray)


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (errno.ENOSPC, StorageUnavailable),
        (errno.EDQUOT, StorageUnavailable),
        (errno.EIO, StorageError),
        (errno.EACCES, StorageError),
    ],
)
def test_os_errors_name_the_errno_not_the_path(err: int, expected: type[StorageError]) -> None:
    path = "/srv/blobs/ab/cd/abcd" + new_key()
    with pytest.raises(expected) as caught:
        with _os_errors():
            raise OSError(err, "failure", path)
    assert type(caught.value) is expected
    assert errno.errorcode[err] in caught.value.message
    assert path not in str(caught.value) and "/srv" not in str(caught.value)
    assert caught.value.__suppress_context__


def test_a_missing_file_is_a_missing_blob_and_a_missing_root_is_not(tmp_path: Path) -> None:
    key = new_key()
    with pytest.raises(BlobNotFound) as caught:
        with _os_errors(key):
            open(tmp_path / key, "rb")
    assert caught.value.key == key
    with pytest.raises(StorageError) as caught_root:
        with _os_errors():
            open(tmp_path / "gone" / key, "rb")
    assert not isinstance(caught_root.value, BlobNotFound)


async def test_a_vanished_root_is_a_storage_error(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    store = LocalStore(root)
    root.rmdir()  # e.g. an unmounted volume
    with pytest.raises(StorageError) as caught:
        await store.put(new_key(), _one(b"x"))
    assert not isinstance(caught.value, BlobNotFound)


@pytest.mark.skipif(not hasattr(os, "RWF_NOWAIT"), reason="reads without waiting need Linux's RWF_NOWAIT")
async def test_a_small_cached_read_is_answered_without_the_pool_and_a_large_one_is_not(tmp_path: Path) -> None:
    """Small reads whose bytes are in the page cache are served on the caller's thread
    (``RWF_NOWAIT``: nothing waits for the disk); larger reads, and any read whose bytes
    are not cached, take the store's own pool. With the pool shut, only the first kind
    still answers."""
    store = LocalStore(tmp_path)
    small, large = new_key(), new_key()
    small_data, large_data = os.urandom(30_000), os.urandom(INLINE_READ_BYTES + 1)
    await store.put(small, _one(small_data))
    await store.put(large, _one(large_data))
    assert await store.read(small) == small_data  # just written: in the page cache
    assert await store.read(small, start=100, end=200) == small_data[100:200]
    assert await store.read(large, start=7, end=7 + 1000) == large_data[7:1007]  # a small range of a large blob
    store._io.shutdown(wait=True)  # what is left can only be answered inline
    assert await store.read(small) == small_data
    assert await store.read(large, start=0, end=10) == large_data[:10]
    with pytest.raises(RuntimeError):
        await store.read(large)  # too large to read inline: the (shut) pool
    with pytest.raises(BlobNotFound):
        await store.read(new_key())
    await store.close()
