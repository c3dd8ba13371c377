"""The blob store contract shared by every backend, and the helpers they share.

Blobs are opaque ciphertext addressed by random keys the caller chooses (:func:`new_key`).
A key never carries a patient id, name or date (invariant 5), so backends validate it
strictly instead of escaping it: only ``[A-Za-z0-9_-]``, 16 to 128 characters.

Ranges follow Python slice rules on ``[start, end)``: ``end=None`` means "to the end",
an ``end`` past the blob is clamped, and a ``start`` at or past the end gives no bytes.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Callable, Collection
from concurrent.futures import Executor
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar, runtime_checkable

from vault.errors import StorageError

T = TypeVar("T")

KEY_MIN_LEN = 16
KEY_MAX_LEN = 128
_KEY = re.compile(rf"[A-Za-z0-9_-]{{{KEY_MIN_LEN},{KEY_MAX_LEN}}}")
_PREFIX = re.compile(rf"[A-Za-z0-9_-]{{0,{KEY_MAX_LEN}}}")

DEFAULT_CHUNK_SIZE = 1 << 20


def new_key() -> str:
    """A fresh random blob key (32 hex characters, 128 bits)."""
    return secrets.token_hex(16)


def check_key(key: str) -> str:
    # fullmatch, not match: "$" would accept a trailing newline.
    if not isinstance(key, str) or _KEY.fullmatch(key) is None:
        raise ValueError(
            f"blob keys are {KEY_MIN_LEN}-{KEY_MAX_LEN} characters of [A-Za-z0-9_-]"
        )
    return key


def check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or _PREFIX.fullmatch(prefix) is None:
        raise ValueError(f"key prefixes are at most {KEY_MAX_LEN} characters of [A-Za-z0-9_-]")
    return prefix


def check_range(start: int, end: int | None) -> None:
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError("range start must be an int >= 0")
    if end is not None and (isinstance(end, bool) or not isinstance(end, int) or end < start):
        raise ValueError("range end must be None or an int >= start")


def check_size_hint(size_hint: int | None) -> None:
    if size_hint is not None and (not isinstance(size_hint, int) or size_hint < 0):
        raise ValueError("size_hint must be None or an int >= 0")


def clamp_range(start: int, end: int | None, size: int) -> tuple[int, int]:
    """The ``[start, end)`` actually served from a blob of ``size`` bytes."""
    lo = min(start, size)
    hi = size if end is None else min(end, size)
    return lo, max(lo, hi)


class ThreadLane:
    """Blocking calls on one resource (a file, an HTTP body, an upload), run in worker
    threads strictly one after another.

    A thread cannot be stopped: when the awaiting task is cancelled, the call it started
    keeps running. Every await is therefore shielded and the lane remembers the last call,
    so clean-up can :meth:`settle` it before closing the resource under its feet (closing
    an fd another thread still reads could hit a reused fd).
    """

    __slots__ = ("_executor", "_last")

    def __init__(self, executor: Executor | None = None) -> None:
        # The store's own bounded executor: never the loop's default pool, whose threads
        # may be waiting on us (a blocking reader bridged back to the loop).
        self._executor = executor
        self._last: asyncio.Future[Any] | None = None

    def start(self, fn: Callable[..., T], /, *args: Any) -> asyncio.Future[T]:
        if self._last is not None and not self._last.done():
            raise RuntimeError("the previous call on this lane is still running")
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        # Same as asyncio.to_thread, but we need the future itself to settle it later.
        fut = loop.run_in_executor(self._executor, ctx.run, fn, *args)
        self._last = fut
        return fut

    async def wait(self) -> Any:
        """Result of the last call (raising its error), once it has finished."""
        if self._last is None:
            return None
        return await asyncio.shield(self._last)

    async def run(self, fn: Callable[..., T], /, *args: Any) -> T:
        await self.wait()
        return await asyncio.shield(self.start(fn, *args))

    async def settle(self) -> None:
        """Wait for the last call to end, ignoring its outcome (for clean-up paths)."""
        fut = self._last
        if fut is None:
            return
        if not fut.done():
            await asyncio.wait([fut])
        if not fut.cancelled():
            fut.exception()  # marks it retrieved: no "never retrieved" noise at exit


async def open_off_loop(
    open_fn: Callable[[], T], close_fn: Callable[[T], None], executor: Executor | None = None
) -> T:
    """Open a resource in a worker thread; if the caller is cancelled meanwhile, the
    thread still finishes, so close what it opened instead of leaking it."""
    lane = ThreadLane(executor)
    fut = lane.start(open_fn)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        await lane.settle()
        if not fut.cancelled() and fut.exception() is None:
            await asyncio.shield(lane.start(close_fn, fut.result()))
        raise


class BlobReader:
    """An open blob or byte range, returned by ``await store.get(...)``.

    Iterate it for chunks (at most ``chunk_size`` bytes each; the next one is read ahead
    in a thread while the caller handles this one). It closes itself at the end or on an
    error; a caller that may stop early uses ``async with`` or :meth:`aclose`.

    ``length`` is how many bytes iteration yields, ``total_size`` the whole blob's size.
    """

    def __init__(self, *, length: int, total_size: int, chunk_size: int, executor: Executor | None = None) -> None:
        self.length = length
        self.total_size = total_size
        self._chunk_size = chunk_size
        self._remaining = length
        self._lane = ThreadLane(executor)
        self._ahead: asyncio.Future[bytes] | None = None
        self._closed = False

    # Backends implement these two; both run in a worker thread and raise vault errors.
    def _read_blocking(self, n: int) -> bytes:
        raise NotImplementedError

    def _close_blocking(self) -> None:
        raise NotImplementedError

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        if self._closed or self._remaining <= 0:
            await self.aclose()
            raise StopAsyncIteration
        fut = self._ahead or self._lane.start(self._read_blocking, self._next_size())
        self._ahead = None
        try:
            chunk = await asyncio.shield(fut)
            if not chunk:
                raise StorageError("a stored object ended before its length")
        except asyncio.CancelledError:
            raise  # the caller owns clean-up now (async with / aclose)
        except BaseException:
            await self.aclose()
            raise
        self._remaining -= len(chunk)
        if self._remaining > 0:
            self._ahead = self._lane.start(self._read_blocking, self._next_size())
        return chunk

    def _next_size(self) -> int:
        return min(self._chunk_size, self._remaining)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ahead = None
        await self._lane.settle()
        await asyncio.shield(self._lane.start(self._close_blocking))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


@runtime_checkable
class BlobStore(Protocol):
    """Where encrypted blobs live. Every method may raise
    :class:`~vault.errors.StorageUnavailable` (retryable) or another
    :class:`~vault.errors.StorageError`; invalid keys or ranges raise ``ValueError``.
    """

    async def put(
        self, key: str, chunks: AsyncIterable[bytes], *, size_hint: int | None = None
    ) -> int:
        """Store the chunks under ``key`` and return the byte count.

        Streams (memory is bounded, whatever the blob size) and is atomic: readers see
        the old blob or the whole new one, and if ``chunks`` raises, or the call is
        cancelled, nothing of the new blob remains. The last complete put wins.
        """
        ...

    async def get(self, key: str, *, start: int = 0, end: int | None = None) -> BlobReader:
        """Open the blob, or its ``[start, end)`` range, for streaming.

        Raises :class:`~vault.errors.BlobNotFound` here, before any byte is yielded, so an
        HTTP handler can still choose its status.
        """
        ...

    async def read(self, key: str, *, start: int = 0, end: int | None = None) -> bytes:
        """The blob or range as bytes, in one go: for headers and small blobs."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the blob; a missing one is not an error."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def size(self, key: str) -> int:
        """Size in bytes; :class:`~vault.errors.BlobNotFound` if missing."""
        ...

    def keys(self, prefix: str = "") -> AsyncIterator[str]:
        """Every stored key starting with ``prefix``, in ascending order (for clean-up)."""
        ...

    async def sweep_partials(self, older_than_s: float = 3600.0, *, keep: Collection[str] = ()) -> int:
        """Remove what crashed writers left (temp files, open multipart uploads) with no
        write for ``older_than_s`` seconds, except writes of the keys in ``keep``;
        returns how many were removed."""
        ...

    async def close(self) -> None: ...
