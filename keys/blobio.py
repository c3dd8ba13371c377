"""Byte-level machinery of the encrypted blob format (version 1, see docs/FORMAT.md).

Header layout, key derivation, nonces, the pure size math, and two sans-I/O engines
(``Sealer`` and ``Opener``) that the public API in :mod:`keys.blob` drives from async
iterators, file-like objects and byte strings. Callers should use :mod:`keys.blob`.

Segment rule: every segment but the last holds exactly ``segment_size`` plaintext bytes;
the last holds ``0 .. segment_size - 1``. So a blob of ``P`` bytes has ``P // S + 1``
segments, and an encryptor never needs to look ahead to know which segment is last: it
seals full segments as they fill and seals the remainder (possibly empty) on close.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keys.errors import IntegrityError

MAGIC = b"CPVB"
VERSION = 1
SUITE_AES256GCM_HKDF_SHA256 = 1
SEGMENT_SIZE = 1 << 20  # production; other sizes exist only for tests and test vectors
MAX_SEGMENT_SIZE = SEGMENT_SIZE  # bounds the buffers a hostile header can make us allocate
TAG_SIZE = 16
KEY_SIZE = 32
SALT_SIZE = 32
NONCE_PREFIX_SIZE = 7
KEY_ID_FIELD = 64
MAX_SEGMENTS = 1 << 32  # the segment index is a uint32 in the nonce

_HEADER = struct.Struct(f">4sBBIB{KEY_ID_FIELD}s{SALT_SIZE}s{NONCE_PREFIX_SIZE}s")
HEADER_SIZE = _HEADER.size  # 114
_NONCE_TAIL = struct.Struct(">IB")  # segment index, last-segment flag
_BINDING_LABEL = b"CPVB/1 binding"
_HKDF_INFO_LABEL = b"CPVB/1 segment key"


def _check_segment_size(segment_size: int) -> int:
    if not isinstance(segment_size, int) or not 1 <= segment_size <= MAX_SEGMENT_SIZE:
        raise ValueError("segment size must be an int in 1..1 MiB")
    return segment_size


@dataclass(frozen=True, slots=True)
class Binding:
    """The ids a blob is bound to; decryption takes them from the database, never the blob.

    Ids are compared as exact strings (use the canonical form the database stores).
    """

    tenant_id: str
    patient_id: str
    object_id: str
    key_id: str

    def __post_init__(self) -> None:
        for name in ("tenant_id", "patient_id", "object_id", "key_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise TypeError(f"Binding.{name} must be a non-empty str")
        if len(self.key_id.encode()) > KEY_ID_FIELD:
            raise ValueError(f"Binding.key_id must be at most {KEY_ID_FIELD} UTF-8 bytes")

    def encode(self) -> bytes:
        """Length-prefixed so no two different id tuples share an encoding."""
        parts = [_BINDING_LABEL]
        for value in (self.tenant_id, self.patient_id, self.object_id, self.key_id):
            raw = value.encode()
            parts.append(len(raw).to_bytes(4, "big"))
            parts.append(raw)
        return b"".join(parts)

    def digest(self) -> bytes:
        return hashlib.sha256(self.encode()).digest()


@dataclass(frozen=True, slots=True)
class Header:
    """The fixed 114-byte header; ``raw`` is what every segment authenticates."""

    segment_size: int
    key_id: str
    salt: bytes
    nonce_prefix: bytes
    raw: bytes

    @classmethod
    def new(
        cls,
        binding: Binding,
        *,
        segment_size: int = SEGMENT_SIZE,
        salt: bytes | None = None,
        nonce_prefix: bytes | None = None,
    ) -> Header:
        """Fresh random salt and nonce prefix; fixed ones are for test vectors only."""
        _check_segment_size(segment_size)
        salt = os.urandom(SALT_SIZE) if salt is None else salt
        nonce_prefix = os.urandom(NONCE_PREFIX_SIZE) if nonce_prefix is None else nonce_prefix
        if len(salt) != SALT_SIZE or len(nonce_prefix) != NONCE_PREFIX_SIZE:
            raise ValueError("salt must be 32 bytes and nonce prefix 7 bytes")
        key_id = binding.key_id.encode()
        raw = _HEADER.pack(
            MAGIC, VERSION, SUITE_AES256GCM_HKDF_SHA256, segment_size,
            len(key_id), key_id, salt, nonce_prefix,
        )  # fmt: skip
        return cls(segment_size, binding.key_id, bytes(salt), bytes(nonce_prefix), raw)

    @classmethod
    def parse(cls, raw: bytes | bytearray | memoryview, binding: Binding) -> Header:
        """Validate a header against the caller's binding; it is authenticated later, with
        every segment, so these checks only keep hostile values out of our arithmetic."""
        if len(raw) != HEADER_SIZE:
            raise IntegrityError("blob is truncated (incomplete header)")
        magic, version, suite, segment_size, id_len, key_id, salt, prefix = _HEADER.unpack(raw)
        if magic != MAGIC or version != VERSION or suite != SUITE_AES256GCM_HKDF_SHA256:
            raise IntegrityError("blob header is malformed (not a version 1 vault blob)")
        if not 1 <= segment_size <= MAX_SEGMENT_SIZE or not 1 <= id_len <= KEY_ID_FIELD:
            raise IntegrityError("blob header is malformed")
        if any(key_id[id_len:]):
            raise IntegrityError("blob header is malformed")
        if key_id[:id_len] != binding.key_id.encode():
            # Says which check failed, never the ids themselves.
            raise IntegrityError("blob header names a different key than the caller's")
        return cls(segment_size, binding.key_id, salt, prefix, bytes(raw))


def peek_key_id(header: bytes) -> str:
    """The key id an operator can read from a blob's first bytes. Unauthenticated:
    never use it to choose the key for decryption."""
    if len(header) < HEADER_SIZE or header[:4] != MAGIC:
        raise IntegrityError("blob header is malformed (not a version 1 vault blob)")
    id_len = header[10]
    if not 1 <= id_len <= KEY_ID_FIELD:
        raise IntegrityError("blob header is malformed")
    try:
        return bytes(header[11 : 11 + id_len]).decode()
    except UnicodeDecodeError:
        raise IntegrityError("blob header is malformed") from None


def cipher_for(key: bytes, binding: Binding, raw_header: bytes | bytearray | memoryview) -> SegmentCipher:
    """The blob's cipher: :meth:`Header.parse` (checked against ``binding``), then the
    HKDF derivation of :class:`SegmentCipher`.

    A key that offers a ``derived`` slot (``keys.hierarchy.ObjectKey`` as the key store's
    cache hands it out) remembers the last cipher derived from it, with the binding and
    header bytes it was derived for: the same blob read again within the key's cache
    lifetime skips the parse and the derivation (~15 µs of a ~10 KB thumbnail read). The
    memo lives and dies with that cached key object, so whatever evicts the key (erasure,
    shredding, expiry) drops the derived key too; a different binding or header derives
    afresh and replaces it."""
    memo: tuple[Binding, bytes, SegmentCipher] | None = getattr(key, "derived", None)
    if memo is not None and memo[0] == binding and memo[1] == raw_header:
        return memo[2]
    cipher = SegmentCipher(key, binding, Header.parse(raw_header, binding))
    if hasattr(key, "derived"):
        setattr(key, "derived", (binding, bytes(raw_header), cipher))  # noqa: B010 - a bytes subclass's slot
    return cipher


class SegmentCipher:
    """AES-256-GCM under a per-blob key; AAD = header ‖ SHA-256(binding encoding)."""

    __slots__ = ("_aead", "_aad", "_prefix", "segment_size")

    def __init__(self, key: bytes, binding: Binding, header: Header) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError("object key must be 32 bytes")
        digest = binding.digest()
        derived = HKDF(
            algorithm=hashes.SHA256(),
            length=KEY_SIZE,
            salt=header.salt,
            info=_HKDF_INFO_LABEL + digest,
        ).derive(bytes(key))
        self._aead = AESGCM(derived)
        self._aad = header.raw + digest
        self._prefix = header.nonce_prefix
        self.segment_size = header.segment_size

    def _nonce(self, index: int, last: bool) -> bytes:
        return self._prefix + _NONCE_TAIL.pack(index, last)

    def seal(self, index: int, last: bool, plain: bytes | bytearray | memoryview) -> bytes:
        return self._aead.encrypt(self._nonce(index, last), plain, self._aad)

    def seal_into(
        self, index: int, last: bool, plain: bytes | memoryview, out: bytearray | memoryview
    ) -> None:
        """``out`` must be exactly ``len(plain) + 16`` bytes."""
        self._aead.encrypt_into(self._nonce(index, last), plain, self._aad, out)

    def open(self, index: int, last: bool, cipher: bytes | bytearray | memoryview) -> bytes:
        try:
            return self._aead.decrypt(self._nonce(index, last), cipher, self._aad)
        except InvalidTag:
            raise IntegrityError("blob failed authentication") from None

    def open_into(
        self, index: int, last: bool, cipher: bytes | memoryview, out: bytearray | memoryview
    ) -> None:
        """``out`` must be exactly ``len(cipher) - 16`` bytes."""
        try:
            self._aead.decrypt_into(self._nonce(index, last), cipher, self._aad, out)
        except InvalidTag:
            # GCM writes plaintext before it checks the tag: leave none of it behind.
            memoryview(out).cast("B")[:] = bytes(len(out))
            raise IntegrityError("blob failed authentication") from None


# --- size math: pure functions of the fixed header, segment and tag sizes -------------


def segment_count(plain_size: int, *, segment_size: int = SEGMENT_SIZE) -> int:
    return plain_size // segment_size + 1


def ciphertext_size(plain_size: int, *, segment_size: int = SEGMENT_SIZE) -> int:
    if plain_size < 0:
        raise ValueError("plain_size must be >= 0")
    _check_segment_size(segment_size)
    count = segment_count(plain_size, segment_size=segment_size)
    return HEADER_SIZE + plain_size + TAG_SIZE * count


def plaintext_size(cipher_size: int, *, segment_size: int = SEGMENT_SIZE) -> int:
    """Inverse of :func:`ciphertext_size`; a size no blob can have raises IntegrityError."""
    _check_segment_size(segment_size)
    body = cipher_size - HEADER_SIZE - TAG_SIZE
    if body < 0:
        raise IntegrityError("blob is truncated")
    full, rest = divmod(body, segment_size + TAG_SIZE)
    if rest >= segment_size:  # the last segment must be shorter than a full one
        raise IntegrityError("blob is truncated or has trailing bytes")
    return full * segment_size + rest


def ciphertext_span(
    start: int, end: int, plain_size: int, *, segment_size: int = SEGMENT_SIZE
) -> tuple[int, int]:
    """Ciphertext bytes ``[cstart, cend)`` of the segments holding plaintext ``[start, end)``.

    The header (bytes ``[0, HEADER_SIZE)``) is needed too and is not included. An empty
    range touches no segment and gives an empty span.
    """
    _check_segment_size(segment_size)
    if not 0 <= start <= end <= plain_size:
        raise ValueError("range must satisfy 0 <= start <= end <= plain_size")
    stride = segment_size + TAG_SIZE
    first = start // segment_size
    cstart = HEADER_SIZE + first * stride
    if start == end:
        return cstart, cstart
    last = (end - 1) // segment_size
    last_plain = min(segment_size, plain_size - last * segment_size)
    return cstart, HEADER_SIZE + last * stride + last_plain + TAG_SIZE


def open_span(
    cipher: SegmentCipher, span: memoryview, start: int, end: int, plain_size: int
) -> Iterator[bytes]:
    """Plaintext ``[start, end)`` (non-empty) from the ciphertext of the segments it touches."""
    size = cipher.segment_size
    cstart, cend = ciphertext_span(start, end, plain_size, segment_size=size)
    if len(span) != cend - cstart:
        raise IntegrityError("blob range is truncated")
    stride = size + TAG_SIZE
    final = segment_count(plain_size, segment_size=size) - 1
    first = start // size
    for index in range(first, (end - 1) // size + 1):
        offset = (index - first) * stride
        seg_len = min(size, plain_size - index * size)
        plain = cipher.open(index, index == final, span[offset : offset + seg_len + TAG_SIZE])
        lo = max(start - index * size, 0)
        hi = min(end - index * size, seg_len)
        yield plain if lo == 0 and hi == seg_len else plain[lo:hi]


# --- sans-I/O engines ------------------------------------------------------------------


class Sealer:
    """Turns plaintext pieces of any size into ciphertext pieces (header first).

    Full segments are sealed straight from the caller's buffer when they are contiguous
    in it; only a segment split across writes is copied, into one reused buffer.
    ``salt`` and ``nonce_prefix`` are for test vectors only; production draws them fresh.
    """

    def __init__(
        self,
        key: bytes,
        binding: Binding,
        *,
        segment_size: int = SEGMENT_SIZE,
        salt: bytes | None = None,
        nonce_prefix: bytes | None = None,
    ) -> None:
        self.header = Header.new(
            binding, segment_size=segment_size, salt=salt, nonce_prefix=nonce_prefix
        )
        self._cipher = SegmentCipher(key, binding, self.header)
        self._size = segment_size
        self._acc = bytearray(segment_size)
        self._fill = 0
        self._index = 0
        self.plain_bytes = 0
        self.finished = False

    def _next_index(self) -> int:
        index = self._index
        if index >= MAX_SEGMENTS - 1:  # keep the last index free for the final segment
            raise ValueError("blob too large for the segment index")
        self._index += 1
        return index

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[bytes]:
        """Iterate the result to the end before changing ``data``: full segments are
        sealed from it in place."""
        if self.finished:
            raise ValueError("sealer already finished")
        view = memoryview(data).cast("B")
        total, pos, size = len(view), 0, self._size
        self.plain_bytes += total
        if self._fill:
            take = min(size - self._fill, total)
            self._acc[self._fill : self._fill + take] = view[:take]
            self._fill += take
            pos = take
            if self._fill < size:
                return
            self._fill = 0
            yield self._cipher.seal(self._next_index(), False, self._acc)
        while total - pos >= size:
            yield self._cipher.seal(self._next_index(), False, view[pos : pos + size])
            pos += size
        if pos < total:
            self._acc[: total - pos] = view[pos:]
            self._fill = total - pos

    def finish(self) -> bytes:
        if self.finished:
            raise ValueError("sealer already finished")
        self.finished = True
        tail = memoryview(self._acc)[: self._fill]
        return self._cipher.seal(self._index, True, tail)


class Opener:
    """Turns ciphertext pieces of any size into verified plaintext pieces.

    A full-length ciphertext segment is never the last one, so it is opened as soon as it
    is complete; whatever remains at :meth:`finish` must be the final segment. Memory is
    one reused segment buffer plus the plaintext segment handed out.
    """

    def __init__(self, key: bytes, binding: Binding) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError("object key must be 32 bytes")
        self._key = key
        self._binding = binding
        self._head = bytearray()
        self._cipher: SegmentCipher | None = None
        self._acc = bytearray()
        self._stride = 0
        self._fill = 0
        self._index = 0
        self.finished = False

    def _start(self, raw: bytes | bytearray) -> None:
        header = Header.parse(raw, self._binding)
        self._cipher = SegmentCipher(self._key, self._binding, header)
        self._stride = header.segment_size + TAG_SIZE
        self._acc = bytearray(self._stride)

    def _open_full(self, segment: bytes | bytearray | memoryview) -> bytes:
        assert self._cipher is not None
        if self._index >= MAX_SEGMENTS - 1:
            raise IntegrityError("blob is malformed (too many segments)")
        plain = self._cipher.open(self._index, False, segment)
        self._index += 1
        return plain

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[bytes]:
        if self.finished:
            raise ValueError("opener already finished")
        view = memoryview(data).cast("B")
        total, pos = len(view), 0
        if self._cipher is None:
            take = min(HEADER_SIZE - len(self._head), total)
            self._head += view[:take]
            pos = take
            if len(self._head) < HEADER_SIZE:
                return
            self._start(self._head)
        stride = self._stride
        if self._fill:
            take = min(stride - self._fill, total - pos)
            self._acc[self._fill : self._fill + take] = view[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill < stride:
                return
            self._fill = 0
            yield self._open_full(self._acc)
        while total - pos >= stride:
            yield self._open_full(view[pos : pos + stride])
            pos += stride
        if pos < total:
            self._acc[: total - pos] = view[pos:]
            self._fill = total - pos

    def finish(self) -> bytes:
        if self.finished:
            raise ValueError("opener already finished")
        self.finished = True
        if self._cipher is None:
            raise IntegrityError("blob is truncated (incomplete header)")
        if self._fill < TAG_SIZE:
            raise IntegrityError("blob is truncated (final segment missing)")
        return self._cipher.open(self._index, True, memoryview(self._acc)[: self._fill])
