"""Encrypted blobs: streaming AES-256-GCM segments bound to the ids the database holds.

Every stored blob (original, rendition, thumbnail, export) is written with a fresh
256-bit object key. The format is specified, with test vectors, in docs/FORMAT.md.

- Async streaming: :func:`encrypt_stream` / :func:`decrypt_stream` (about two segments of
  memory whatever the blob size).
- Sync, for PyAV: :class:`BlobEncryptor` (a writable file object that hands ciphertext to a
  sink) and :class:`DecryptingReader` (a seekable raw reader over ciphertext ranges).
- Random access: :func:`ciphertext_span` says which ciphertext bytes a plaintext range
  needs; :func:`decrypt_range` / :func:`decrypt_range_stream` decrypt just those.
- Small blobs: :func:`encrypt_bytes` / :func:`decrypt_bytes`.

Every decryption failure (tampering, truncation, reordering, wrong ids, wrong key) raises
:class:`keys.errors.IntegrityError`, whose message never describes the plaintext.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable

from keys.blobio import (
    HEADER_SIZE,
    MAX_SEGMENTS,
    SEGMENT_SIZE,
    TAG_SIZE,
    Binding,
    Header,
    Opener,
    Sealer,
    SegmentCipher,
    cipher_for,
    ciphertext_size,
    ciphertext_span,
    open_span,
    peek_key_id,
    plaintext_size,
    segment_count,
)
from keys.errors import IntegrityError

__all__ = [
    "HEADER_SIZE", "SEGMENT_SIZE", "TAG_SIZE", "Binding", "BlobEncryptor", "DecryptingReader",
    "IntegrityError", "ciphertext_size", "ciphertext_span", "decrypt_bytes", "decrypt_range",
    "decrypt_range_stream", "decrypt_stream", "encrypt_bytes", "encrypt_stream", "peek_key_id",
    "plaintext_size",
]  # fmt: skip

BytesLike = bytes | bytearray | memoryview
AsyncFetch = Callable[[int, int], Awaitable[bytes]]
Fetch = Callable[[int, int], bytes]


async def encrypt_stream(
    key: bytes,
    binding: Binding,
    chunks: AsyncIterable[BytesLike],
    *,
    segment_size: int = SEGMENT_SIZE,
) -> AsyncIterator[bytes]:
    """Encrypt plaintext chunks of any size; yields the header, then one piece per segment.

    A chunk may be a view of a buffer the producer reuses: it is fully consumed before
    the next one is requested. The pieces yielded are new ``bytes`` the consumer owns.
    """
    sealer = Sealer(key, binding, segment_size=segment_size)
    yield sealer.header.raw
    async for chunk in chunks:
        for piece in sealer.feed(chunk):
            yield piece
    yield sealer.finish()


async def decrypt_stream(
    key: bytes, binding: Binding, chunks: AsyncIterable[BytesLike]
) -> AsyncIterator[bytes]:
    """Decrypt ciphertext chunks of any size; yields verified plaintext, one segment at a time.

    Each piece is authenticated before it is yielded, but a truncated blob is only
    detected at its end: consumers must treat the stream as failed if this raises late.
    Chunks of ``HEADER_SIZE`` and then ``SEGMENT_SIZE + TAG_SIZE`` bytes (what a storage
    reader can ask for) are opened in place; other sizes cost one copy per segment.
    """
    opener = Opener(key, binding)
    async for chunk in chunks:
        for piece in opener.feed(chunk):
            yield piece
    tail = opener.finish()
    if tail:
        yield tail


def encrypt_bytes(
    key: bytes, binding: Binding, data: BytesLike, *, segment_size: int = SEGMENT_SIZE
) -> bytes:
    """Whole-blob encryption for small objects (thumbnails, evidence forms)."""
    header = Header.new(binding, segment_size=segment_size)
    cipher = SegmentCipher(key, binding, header)
    plain = memoryview(data).cast("B")
    size = len(plain)
    count = segment_count(size, segment_size=segment_size)
    if count > MAX_SEGMENTS:
        raise ValueError("blob too large for the segment index")
    # One output buffer, sealed into in place: per-segment allocations cost more than AES.
    out = bytearray(ciphertext_size(size, segment_size=segment_size))
    view = memoryview(out)
    view[:HEADER_SIZE] = header.raw
    stride = segment_size + TAG_SIZE
    for i in range(count):
        lo = i * segment_size
        hi = min(lo + segment_size, size)
        at = HEADER_SIZE + i * stride
        cipher.seal_into(i, i == count - 1, plain[lo:hi], view[at : at + hi - lo + TAG_SIZE])
    return bytes(out)


def decrypt_bytes(key: bytes, binding: Binding, blob: BytesLike) -> bytes:
    """Whole-blob decryption for small objects; checks the size and every segment."""
    sealed = memoryview(blob).cast("B")
    cipher = cipher_for(key, binding, sealed[:HEADER_SIZE])
    segment_size = cipher.segment_size
    size = plaintext_size(len(sealed), segment_size=segment_size)
    count = segment_count(size, segment_size=segment_size)
    if count == 1:
        return cipher.open(0, True, sealed[HEADER_SIZE:])
    out = bytearray(size)
    view = memoryview(out)
    stride = segment_size + TAG_SIZE
    for i in range(count):
        lo = i * segment_size
        hi = min(lo + segment_size, size)
        at = HEADER_SIZE + i * stride
        cipher.open_into(i, i == count - 1, sealed[at : at + hi - lo + TAG_SIZE], view[lo:hi])
    return bytes(out)


def decrypt_range(
    key: bytes,
    binding: Binding,
    span: BytesLike,
    start: int,
    end: int,
    plain_size: int,
    *,
    header: BytesLike,
) -> bytes:
    """Plaintext ``[start, end)`` of a blob of ``plain_size`` bytes (from the database).

    ``span`` is ciphertext ``[cstart, cend)`` from :func:`ciphertext_span`, ``header`` its
    first ``HEADER_SIZE`` bytes: the header is authenticated with every segment, so a
    range read always needs it (a second, tiny range request).
    """
    parsed = Header.parse(memoryview(header).cast("B"), binding)
    if start == end:
        ciphertext_span(start, end, plain_size, segment_size=parsed.segment_size)
        return b""
    cipher = SegmentCipher(key, binding, parsed)
    return b"".join(open_span(cipher, memoryview(span).cast("B"), start, end, plain_size))


async def decrypt_range_stream(
    key: bytes,
    binding: Binding,
    fetch: AsyncFetch,
    start: int,
    end: int,
    plain_size: int,
    *,
    segment_size: int = SEGMENT_SIZE,
    segments_per_fetch: int = 4,
) -> AsyncIterator[bytes]:
    """Yield plaintext ``[start, end)``, fetching only the ciphertext it needs.

    ``fetch(cstart, cend)`` returns ciphertext bytes ``[cstart, cend)`` (end exclusive;
    an HTTP Range header is ``bytes=cstart-(cend-1)``). The header and the first batch of
    segments are fetched concurrently; later batches hold ``segments_per_fetch`` segments.
    """
    ciphertext_span(start, end, plain_size, segment_size=segment_size)  # validates the range
    if start == end:
        return
    if segments_per_fetch < 1:
        raise ValueError("segments_per_fetch must be >= 1")
    batch = segment_size * segments_per_fetch
    cipher: SegmentCipher | None = None
    lo = start
    while lo < end:
        hi = min(end, (lo // segment_size) * segment_size + batch)
        cstart, cend = ciphertext_span(lo, hi, plain_size, segment_size=segment_size)
        if cipher is None:
            cipher, data = await _first_fetch(key, binding, fetch, cstart, cend, segment_size)
        else:
            data = await fetch(cstart, cend)
        for piece in open_span(cipher, memoryview(data).cast("B"), lo, hi, plain_size):
            yield piece
        lo = hi


async def _first_fetch(
    key: bytes, binding: Binding, fetch: AsyncFetch, cstart: int, cend: int, segment_size: int
) -> tuple[SegmentCipher, bytes]:
    """The header and the first segments, concurrently; a fetch error propagates as is."""
    head_task = asyncio.ensure_future(fetch(0, HEADER_SIZE))
    try:
        data = await fetch(cstart, cend)
        head = await head_task
    finally:
        if not head_task.done():
            head_task.cancel()
        elif not head_task.cancelled():
            head_task.exception()  # mark it retrieved: one failure is reported, not two
    cipher = cipher_for(key, binding, memoryview(head).cast("B"))
    if cipher.segment_size != segment_size:
        raise IntegrityError("blob header is malformed (unexpected segment size)")
    return cipher, data


class BlobEncryptor:
    """A writable, non-seekable file object that encrypts into ``sink``.

    ``sink`` receives ciphertext pieces in order (header first) as new ``bytes`` it may
    keep. Made for PyAV's muxer (fragmented MP4 needs no seeking back). PyAV does not
    close it: call ``close()`` after the container is closed, to seal the final segment.
    ``abort()`` (also on an exception inside a ``with`` block) stops without the final
    segment, so a partial blob never decrypts.
    """

    def __init__(
        self,
        key: bytes,
        binding: Binding,
        sink: Callable[[bytes], object],
        *,
        segment_size: int = SEGMENT_SIZE,
    ) -> None:
        self._sealer = Sealer(key, binding, segment_size=segment_size)
        self._sink = sink
        self._closed = False
        self._header_sent = False
        self.cipher_size = 0

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def plain_size(self) -> int:
        return self._sealer.plain_bytes

    def readable(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._sealer.plain_bytes

    def flush(self) -> None:
        """Nothing to flush: a partial segment cannot be sealed early."""

    def _emit(self, piece: bytes) -> None:
        self.cipher_size += len(piece)
        self._sink(piece)

    def write(self, data: BytesLike) -> int:
        if self._closed:
            raise ValueError("I/O operation on closed file.")
        if not self._header_sent:
            self._header_sent = True
            self._emit(self._sealer.header.raw)
        view = memoryview(data).cast("B")
        for piece in self._sealer.feed(view):
            self._emit(piece)
        return len(view)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._header_sent:
            self._header_sent = True
            self._emit(self._sealer.header.raw)
        self._emit(self._sealer.finish())

    def abort(self) -> None:
        self._closed = True

    def __enter__(self) -> BlobEncryptor:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class DecryptingReader(io.RawIOBase):
    """A seekable raw reader of a blob's plaintext, for PyAV and other file consumers.

    ``fetch(cstart, cend)`` returns ciphertext bytes ``[cstart, cend)``; ``plain_size``
    comes from the database. The header is fetched and checked at construction; then each
    read fetches only the segments it touches and keeps the last one decrypted (one reused
    buffer, wiped on close).
    """

    def __init__(self, key: bytes, binding: Binding, fetch: Fetch, plain_size: int) -> None:
        super().__init__()
        # Set before anything can fail: IOBase.__del__ calls close() even then.
        self._plain = bytearray()
        self._cached = -1
        self._pos = 0
        if plain_size < 0:
            raise ValueError("plain_size must be >= 0")
        self._fetch = fetch
        header = Header.parse(self._get(0, HEADER_SIZE), binding)
        self._cipher = SegmentCipher(key, binding, header)
        self._seg = header.segment_size
        self._size = plain_size
        self._final = segment_count(plain_size, segment_size=self._seg) - 1
        self._plain = bytearray(self._seg)

    def _get(self, start: int, end: int) -> bytes:
        data = self._fetch(start, end)
        if len(data) != end - start:
            raise IntegrityError("blob is truncated")
        return data

    def _open(self, index: int, out: memoryview) -> None:
        start = HEADER_SIZE + index * (self._seg + TAG_SIZE)
        data = self._get(start, start + len(out) + TAG_SIZE)
        self._cipher.open_into(index, index == self._final, data, out)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        if whence == io.SEEK_SET:
            if offset < 0:
                raise ValueError(f"negative seek value {offset}")
            self._pos = offset
        elif whence == io.SEEK_CUR:
            self._pos = max(0, self._pos + offset)
        elif whence == io.SEEK_END:
            self._pos = max(0, self._size + offset)
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        return self._pos

    def _cached_segment(self, index: int) -> memoryview:
        seg_len = min(self._seg, self._size - index * self._seg)
        view = memoryview(self._plain)[:seg_len]
        if index != self._cached:
            self._cached = -1
            self._open(index, view)
            self._cached = index
        return view

    def readinto(self, buffer: BytesLike) -> int:  # type: ignore[override]
        self._check_open()
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            index, offset = divmod(self._pos, self._seg)
            seg_len = min(self._seg, self._size - index * self._seg)
            take = min(seg_len - offset, len(view) - done)
            if offset == 0 and take == seg_len and index != self._cached:
                # A whole segment the caller wants: decrypt straight into its buffer.
                self._open(index, view[done : done + take])
            else:
                view[done : done + take] = self._cached_segment(index)[offset : offset + take]
            done += take
            self._pos += take
        return done

    def read(self, size: int | None = -1) -> bytes:
        self._check_open()
        if size is None or size < 0:
            return self.readall()
        if size == 0:
            return b""
        index, offset = divmod(self._pos, self._seg)
        if self._pos < self._size and offset + size <= min(self._seg, self._size - index * self._seg):
            # Within one segment (PyAV's small reads): one copy out of the cached segment.
            piece = bytes(self._cached_segment(index)[offset : offset + size])
            self._pos += size
            return piece
        out = bytearray(max(0, min(size, self._size - self._pos)))
        del out[self.readinto(out) :]
        return bytes(out)

    def readall(self) -> bytes:
        return self.read(max(0, self._size - self._pos))

    def close(self) -> None:
        if not self.closed:
            self._plain[:] = bytes(len(self._plain))
            self._cached = -1
        super().close()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file.")
