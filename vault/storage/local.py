"""Blobs as files in a local folder: the embedded default (``file:`` URLs).

Layout: ``<root>/<key[0:2]>/<key[2:4]>/<key>``, so no folder grows past a few thousand
entries. A write goes to ``.<key>.<random>.part`` in the blob's own folder (keys never
contain ``.``, so the name cannot collide with a key), is fsynced, renamed over the final
name and the folder fsynced: after a crash the blob is either whole or absent, and a
stray ``.part`` file is invisible to :meth:`LocalStore.keys` until
:meth:`LocalStore.sweep_partials` removes it. Shard folders are never removed, so a
concurrent writer never finds its folder gone.

Keys differing only in case are different files: on a case-insensitive filesystem
(macOS, Windows defaults) use lowercase keys such as :func:`~vault.storage.base.new_key`.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Collection, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from vault.errors import BlobNotFound, ConfigError, StorageError, StorageUnavailable
from vault.storage.base import (
    DEFAULT_CHUNK_SIZE,
    BlobReader,
    ThreadLane,
    check_key,
    check_prefix,
    check_range,
    check_size_hint,
    clamp_range,
    open_off_loop,
)

T = TypeVar("T")
IO_THREADS = 8  # concurrent file operations per store; more only queue in the kernel
_PART_SUFFIX = ".part"
# Small chunks are gathered so one thread hop writes about this much.
_WRITE_BATCH = 1 << 20
# A full disk or quota is an operator fix, not a bug: callers may retry later.
_TRANSIENT = {errno.ENOSPC, errno.EDQUOT, errno.EAGAIN, errno.EINTR}
_DIR_MODE = 0o700
_FILE_MODE = 0o600
#: ``read()`` of at most this many bytes is tried on the caller's thread first, and only
#: served there when every byte is already in the page cache (``RWF_NOWAIT``): a
#: thumbnail read costs ~20 us inline against a thread hop of 100 us or more on a busy
#: host. Anything that would wait for the disk, and every larger read, goes to the pool.
INLINE_READ_BYTES = 256 * 1024
_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)  # Linux 4.14+; elsewhere every read takes the pool


@contextmanager
def _os_errors(key: str | None = None) -> Iterator[None]:
    """OS errors become vault errors; the message names only the errno, never a path."""
    try:
        yield
    except (FileNotFoundError, NotADirectoryError):
        if key is None:
            raise StorageError("local storage folder is missing") from None
        raise BlobNotFound(key) from None
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0, "EIO")
        if exc.errno in _TRANSIENT:
            raise StorageUnavailable(f"local storage unavailable ({name})") from None
        raise StorageError(f"local storage failed ({name})") from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _TempBlob:
    """One in-progress write; every method runs in a worker thread."""

    def __init__(self, folder: Path, key: str) -> None:
        self.folder = folder
        self.final = folder / key
        self.tmp = folder / f".{key}.{secrets.token_hex(6)}{_PART_SUFFIX}"
        self.renamed = False
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
        self.file = open(os.open(self.tmp, flags, _FILE_MODE), "wb")

    def write(self, batch: list[bytes]) -> None:
        for chunk in batch:
            self.file.write(chunk)

    def commit(self, batch: list[bytes]) -> None:
        self.write(batch)
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.final)
        self.renamed = True
        _fsync_dir(self.folder)

    def discard(self) -> None:
        with suppress(OSError):
            self.file.close()
        # Renamed but failed or cancelled after: the caller was told the put failed.
        with suppress(OSError):
            os.unlink(self.final if self.renamed else self.tmp)


class _LocalReader(BlobReader):
    def __init__(self, fd: int, key: str, *, offset: int, length: int, total_size: int, chunk_size: int,
                 executor: Executor | None = None) -> None:
        super().__init__(length=length, total_size=total_size, chunk_size=chunk_size, executor=executor)
        self._fd = fd
        self._key = key
        self._offset = offset

    def _read_blocking(self, n: int) -> bytes:
        with _os_errors(self._key):
            data = os.pread(self._fd, n, self._offset)
        self._offset += len(data)
        return data

    def _close_blocking(self) -> None:
        os.close(self._fd)


class LocalStore:
    """A :class:`~vault.storage.base.BlobStore` on a local filesystem."""

    def __init__(self, root: str | os.PathLike[str], *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 io_threads: int = IO_THREADS) -> None:
        if chunk_size <= 0:
            raise ValueError("chunk_size must be > 0")
        self.root = Path(root).absolute()
        self._root_name = str(self.root)
        self._chunk_size = chunk_size
        # File I/O gets its own bounded pool, closed with the store: a thread of the loop's
        # default pool (or of any pool) blocked on a blob read must never be what the read
        # itself is queued behind (issue 11 item 3).
        self._io = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="blob-file")
        self._inline = _NOWAIT is not None
        # Shard folders (``key[0:4]``) this store has made or found: at most 65,536 names.
        self._folders: set[str] = set()
        # Blocking, but only once at start-up, where failing early names the setting.
        try:
            self.root.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError("VAULT_STORAGE_URL", f"cannot create the blob folder ({exc.strerror})") from None

    @classmethod
    def from_url(cls, url: str) -> LocalStore:
        """``file:///absolute/path`` or ``file:relative/path`` (relative to the working folder)."""
        parts = urlsplit(url)
        if parts.scheme != "file":
            raise ConfigError("VAULT_STORAGE_URL", "a local store needs a file: URL")
        if parts.netloc not in ("", "localhost"):
            raise ConfigError("VAULT_STORAGE_URL", "file: URLs must not name a remote host")
        if parts.query or parts.fragment:
            raise ConfigError("VAULT_STORAGE_URL", "file: URLs take no query or fragment")
        path = unquote(parts.path)
        if not path:
            raise ConfigError("VAULT_STORAGE_URL", "file: URL has no path")
        return cls(path)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _folder(self, key: str) -> Path:
        return self.root / key[0:2] / key[2:4]

    def _path(self, key: str) -> Path:
        return self._folder(key) / key

    def _make_folder(self, key: str) -> Path:
        # A new directory entry is only durable once its parent is fsynced.
        if key[0:4] in self._folders:  # made (or found) before: no mkdir calls per write
            return self.root / key[0:2] / key[2:4]
        parent = self.root
        for name in (key[0:2], key[2:4]):
            child = parent / name
            try:
                child.mkdir(mode=_DIR_MODE)
            except FileExistsError:
                pass
            else:
                _fsync_dir(parent)
            parent = child
        self._folders.add(key[0:4])
        return parent

    def _open_temp(self, key: str) -> _TempBlob:
        with _os_errors():
            try:
                return _TempBlob(self._make_folder(key), key)
            except FileNotFoundError:
                # A shard folder is never removed by the vault; one removed by hand is made again.
                self._folders.discard(key[0:4])
                return _TempBlob(self._make_folder(key), key)

    async def put(
        self, key: str, chunks: AsyncIterable[bytes], *, size_hint: int | None = None
    ) -> int:
        check_key(key)
        check_size_hint(size_hint)
        lane = ThreadLane(self._io)
        opening = lane.start(self._open_temp, key)
        total = 0
        batch: list[bytes] = []
        batched = 0
        try:
            blob = await asyncio.shield(opening)
            async for chunk in chunks:
                if not chunk:
                    continue
                # Producers may reuse a buffer once we ask for the next chunk; the write
                # happens later in a thread, so keep an immutable copy.
                data = chunk if isinstance(chunk, bytes) else bytes(chunk)
                batch.append(data)
                batched += len(data)
                total += len(data)
                if batched >= _WRITE_BATCH:
                    # One write in flight while the next batch arrives.
                    await lane.wait()
                    lane.start(self._write, blob, batch)
                    batch, batched = [], 0
            await lane.wait()
            await lane.run(self._commit, blob, batch)
        except BaseException:
            # Cancelled awaits leave their thread running: wait for it before cleaning.
            await lane.settle()
            if not opening.cancelled() and opening.exception() is None:
                await asyncio.shield(lane.start(opening.result().discard))
            raise
        return total

    @staticmethod
    def _write(blob: _TempBlob, batch: list[bytes]) -> None:
        with _os_errors():
            blob.write(batch)

    @staticmethod
    def _commit(blob: _TempBlob, batch: list[bytes]) -> None:
        with _os_errors():
            blob.commit(batch)

    async def get(self, key: str, *, start: int = 0, end: int | None = None) -> BlobReader:
        check_key(key)
        check_range(start, end)
        fd, size = await open_off_loop(lambda: self._open_blob(key), lambda opened: os.close(opened[0]), self._io)
        lo, hi = clamp_range(start, end, size)
        return _LocalReader(fd, key, offset=lo, length=hi - lo, total_size=size, chunk_size=self._chunk_size,
                            executor=self._io)

    def _open_blob(self, key: str) -> tuple[int, int]:
        with _os_errors(key):
            # _path(key) as a string: pathlib's joins cost more than the read of a thumbnail
            fd = os.open(f"{self._root_name}/{key[0:2]}/{key[2:4]}/{key}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                return fd, os.fstat(fd).st_size
            except BaseException:
                os.close(fd)
                raise

    async def read(self, key: str, *, start: int = 0, end: int | None = None) -> bytes:
        check_key(key)
        check_range(start, end)
        if self._inline and (end is None or end - start <= INLINE_READ_BYTES):
            data = self._read_cached(key, start, end)
            if data is not None:
                return data
        return await self._run(self._read_range, key, start, end)

    def _read_cached(self, key: str, start: int, end: int | None) -> bytes | None:
        """The range when it is small and wholly in the page cache, read on the caller's
        thread without waiting for the disk; None to take the pool instead. The open and
        fstat are metadata lookups of a file the vault wrote or read recently."""
        try:
            fd, size = self._open_blob(key)
        except BlobNotFound:
            raise
        except StorageError:
            return None  # the pool's read gives the precise error
        try:
            lo, hi = clamp_range(start, end, size)
            if hi - lo > INLINE_READ_BYTES:
                return None
            buffer = bytearray(hi - lo)
            try:
                got = os.preadv(fd, [buffer], lo, _NOWAIT or 0) if hi > lo else 0
            except BlockingIOError:
                return None  # not (all) cached: a thread waits for the disk instead
            except OSError as exc:
                if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                    self._inline = False  # this filesystem cannot answer without waiting
                return None
            return bytes(buffer) if got == hi - lo else None  # a short read: the pool loops
        finally:
            os.close(fd)

    def _read_range(self, key: str, start: int, end: int | None) -> bytes:
        fd, size = self._open_blob(key)
        try:
            lo, hi = clamp_range(start, end, size)
            parts: list[bytes] = []
            with _os_errors(key):
                while lo < hi:
                    data = os.pread(fd, hi - lo, lo)
                    if not data:
                        raise StorageError("a stored object ended before its length")
                    parts.append(data)
                    lo += len(data)
            return b"".join(parts)
        finally:
            os.close(fd)

    async def delete(self, key: str) -> None:
        check_key(key)
        await self._run(self._unlink, key)

    def _unlink(self, key: str) -> None:
        with _os_errors():
            with suppress(FileNotFoundError, NotADirectoryError):
                os.unlink(self._path(key))

    async def exists(self, key: str) -> bool:
        check_key(key)
        return await self._run(self._exists, key)

    def _exists(self, key: str) -> bool:
        try:
            self._stat(key)
        except BlobNotFound:
            return False
        return True

    async def size(self, key: str) -> int:
        check_key(key)
        return await self._run(self._stat, key)

    def _stat(self, key: str) -> int:
        with _os_errors(key):
            return os.stat(self._path(key)).st_size

    async def keys(self, prefix: str = "") -> AsyncIterator[str]:
        check_prefix(prefix)
        for first in await self._run(self._subfolders, self.root, prefix[0:2]):
            for second in await self._run(self._subfolders, self.root / first, prefix[2:4]):
                for key in await self._run(self._keys_in, first, second, prefix):
                    yield key

    @staticmethod
    def _subfolders(folder: Path, prefix: str) -> list[str]:
        # Shard names are exactly two key characters; anything else is not ours.
        with _os_errors():
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                return []
        return sorted(
            e.name
            for e in entries
            if len(e.name) == 2 and e.name.startswith(prefix) and "." not in e.name
            and e.is_dir(follow_symlinks=False)
        )

    def _keys_in(self, first: str, second: str, prefix: str) -> list[str]:
        shard = first + second
        with _os_errors():
            try:
                entries = list(os.scandir(self.root / first / second))
            except FileNotFoundError:
                return []
        found = []
        for e in entries:
            name = e.name
            # Temp files start with "." and fail check_key; a file outside its shard
            # could not be read back by key, so it is not a key either.
            if name.startswith(prefix) and name[0:4] == shard and e.is_file(follow_symlinks=False):
                try:
                    check_key(name)
                except ValueError:
                    continue
                found.append(name)
        return sorted(found)

    async def sweep_partials(self, older_than_s: float = 3600.0, *, keep: Collection[str] = ()) -> int:
        """Delete temp files untouched (mtime: the last write) for ``older_than_s``,
        except those of the keys in ``keep`` (writes whose writer still holds a lease:
        a stalled upload may resume)."""
        if older_than_s < 0:
            raise ValueError("older_than_s must be >= 0")
        return await self._run(self._sweep, time.time() - older_than_s, frozenset(keep))

    def _sweep(self, cutoff: float, keep: frozenset[str]) -> int:
        removed = 0
        for first in self._subfolders(self.root, ""):
            for second in self._subfolders(self.root / first, ""):
                folder = self.root / first / second
                with _os_errors():
                    entries = list(os.scandir(folder))
                for e in entries:
                    if not (e.name.startswith(".") and e.name.endswith(_PART_SUFFIX)):
                        continue
                    # ".<key>.<12 hex>.part": keys hold no dot, so the key is the first field.
                    if e.name[1:].split(".", 1)[0] in keep:
                        continue
                    with suppress(FileNotFoundError):
                        if e.stat(follow_symlinks=False).st_mtime < cutoff:
                            os.unlink(e.path)
                            removed += 1
        return removed

    async def _run(self, fn: Callable[..., T], /, *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, functools.partial(fn, *args))

    async def close(self) -> None:
        self._inline = False  # a closed store refuses every call, as its closed pool does
        # A thread still running finishes its one call (bounded: a single file operation).
        self._io.shutdown(wait=False, cancel_futures=True)
