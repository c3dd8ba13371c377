"""The encrypted blob format: vectors, tampering, random access, streaming, file objects."""

from __future__ import annotations

import hashlib
import io
import random
import re
import struct
import tracemalloc
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keys.blob import (
    HEADER_SIZE,
    SEGMENT_SIZE,
    TAG_SIZE,
    Binding,
    BlobEncryptor,
    DecryptingReader,
    ciphertext_size,
    ciphertext_span,
    decrypt_bytes,
    decrypt_range,
    decrypt_range_stream,
    decrypt_stream,
    encrypt_bytes,
    encrypt_stream,
    peek_key_id,
    plaintext_size,
)
from keys.blobio import Sealer
from keys.hierarchy import ObjectKey
from keys.errors import IntegrityError

ROOT = Path(__file__).resolve().parents[2]
S = SEGMENT_SIZE
SMALL = 16  # test-only segment size: many segment borders in a few bytes
RNG = random.Random(20261122)
KEY = RNG.randbytes(32)
BINDING = Binding("tenant-a", "patient-a", "object-a", "key-a")


def data(n: int) -> bytes:
    return RNG.randbytes(n)


def segments(blob: bytes, segment_size: int) -> tuple[bytes, list[bytes]]:
    """Split a blob into its header and segment ciphertexts (the last may be short)."""
    stride = segment_size + TAG_SIZE
    body = blob[HEADER_SIZE:]
    return blob[:HEADER_SIZE], [body[i : i + stride] for i in range(0, len(body), stride)]


async def chunked(blob: bytes, sizes: Iterable[int] | None = None) -> AsyncIterator[bytes]:
    view, pos = memoryview(blob), 0
    for size in sizes or iter(lambda: RNG.randint(1, 40), None):
        if pos >= len(view):
            return
        yield view[pos : pos + size]
        pos += size
    if pos < len(view):
        yield view[pos:]


async def collect(pieces: AsyncIterator[bytes]) -> bytes:
    return b"".join([bytes(p) async for p in pieces])


async def stream_decrypt(blob: bytes, binding: Binding = BINDING, key: bytes = KEY) -> bytes:
    return await collect(decrypt_stream(key, binding, chunked(blob)))


# --- an independent implementation of docs/FORMAT.md, to check the code against the text ---


def ref_aead(key: bytes, ids: tuple[str, ...], salt: bytes) -> tuple[AESGCM, bytes]:
    encoding = b"CPVB/1 binding" + b"".join(
        len(raw).to_bytes(4, "big") + raw for raw in (i.encode() for i in ids)
    )
    digest = hashlib.sha256(encoding).digest()
    blob_key = HKDF(hashes.SHA256(), 32, salt, b"CPVB/1 segment key" + digest).derive(key)
    return AESGCM(blob_key), digest


def ref_encrypt(
    key: bytes, ids: tuple[str, ...], plain: bytes, *, segment_size: int, salt: bytes, prefix: bytes
) -> bytes:
    key_id = ids[3].encode()
    header = b"CPVB\x01\x01" + segment_size.to_bytes(4, "big") + bytes([len(key_id)])
    header += key_id.ljust(64, b"\0") + salt + prefix
    aead, digest = ref_aead(key, ids, salt)
    count = len(plain) // segment_size + 1
    out = [header]
    for i in range(count):
        nonce = prefix + i.to_bytes(4, "big") + bytes([i == count - 1])
        piece = plain[i * segment_size : (i + 1) * segment_size]
        out.append(aead.encrypt(nonce, piece, header + digest))
    return b"".join(out)


def ref_decrypt(key: bytes, ids: tuple[str, ...], blob: bytes) -> bytes:
    header = blob[:114]
    segment_size = int.from_bytes(header[6:10], "big")
    assert header[11 : 11 + header[10]] == ids[3].encode()
    aead, digest = ref_aead(key, ids, header[75:107])
    stride = segment_size + 16
    body = blob[114:]
    count = (len(body) - 16) // stride + 1
    out = []
    for i in range(count):
        nonce = header[107:114] + i.to_bytes(4, "big") + bytes([i == count - 1])
        out.append(aead.decrypt(nonce, body[i * stride : (i + 1) * stride], header + digest))
    return b"".join(out)


# --- test vectors from docs/FORMAT.md ------------------------------------------------


def load_vectors() -> tuple[dict[str, str], list[dict[str, str]]]:
    text = (ROOT / "docs" / "FORMAT.md").read_text()
    inputs: dict[str, str] = {}
    vectors = []
    for kind, body in re.findall(r"```(vector(?:-inputs)?)\n(.*?)```", text, re.S):
        fields: dict[str, str] = {}
        name = ""
        for line in body.splitlines():
            if "=" in line and not line.startswith(" "):
                name, _, value = line.partition("=")
                name = name.strip()
                fields[name] = value.strip()
            elif line.strip():
                fields[name] += line.strip()
        if kind == "vector-inputs":
            inputs = fields
        else:
            vectors.append(fields)
    return inputs, vectors


def test_vectors_match_the_code_and_an_independent_reading_of_the_spec() -> None:
    inputs, vectors = load_vectors()
    key = bytes.fromhex(inputs["object_key"])
    salt = bytes.fromhex(inputs["salt"])
    prefix = bytes.fromhex(inputs["nonce_prefix"])
    ids = (inputs["tenant_id"], inputs["patient_id"], inputs["object_id"], inputs["key_id"])
    binding = Binding(*ids)
    full = [v for v in vectors if "ciphertext_hex" in v or "ciphertext_sha256" in v]
    assert len(full) >= 3, "FORMAT.md lost its test vectors"

    intermediates = next(v for v in vectors if "binding_digest" in v)
    assert binding.encode().hex() == intermediates["binding_encoding"]
    assert binding.digest().hex() == intermediates["binding_digest"]
    blob_key = HKDF(hashes.SHA256(), 32, salt, b"CPVB/1 segment key" + binding.digest()).derive(key)
    assert blob_key.hex() == intermediates["blob_key"]

    for vector in full:
        size = int(vector["segment_size"])
        if "plaintext_hex" in vector:
            plain = bytes.fromhex(vector["plaintext_hex"])
        else:
            assert vector["plaintext_rule"] == "i mod 251"
            plain = bytes(i % 251 for i in range(int(vector["plaintext_size"])))
        ours = []
        small_steps = (1, 7) if len(plain) < 4096 else (65536 + 7,)
        # Chunking must not change the bytes.
        for chunk in (len(plain) or 1, *small_steps, size + 3):
            sealer = Sealer(key, binding, segment_size=size, salt=salt, nonce_prefix=prefix)
            pieces = [sealer.header.raw]
            for i in range(0, len(plain), chunk):
                pieces.extend(sealer.feed(plain[i : i + chunk]))
            pieces.append(sealer.finish())
            ours.append(b"".join(pieces))
        assert len(set(ours)) == 1
        blob = ours[0]
        assert blob == ref_encrypt(key, ids, plain, segment_size=size, salt=salt, prefix=prefix)
        if "ciphertext_hex" in vector:
            assert blob.hex() == vector["ciphertext_hex"]
        else:
            assert len(blob) == int(vector["ciphertext_size"])
            assert hashlib.sha256(blob).hexdigest() == vector["ciphertext_sha256"]
            assert blob[-16:].hex() == vector["last_tag"]
        if "header" in vector:
            assert blob[:HEADER_SIZE].hex() == vector["header"]
            assert (blob[:HEADER_SIZE] + binding.digest()).hex() == vector["aad"]
        count = len(plain) // size + 1
        for i in range(count):
            if f"nonce_{i}" in vector:
                expected = prefix + i.to_bytes(4, "big") + bytes([i == count - 1])
                assert vector[f"nonce_{i}"] == expected.hex()
        assert decrypt_bytes(key, binding, blob) == plain
        assert ref_decrypt(key, ids, blob) == plain
        assert len(blob) == ciphertext_size(len(plain), segment_size=size)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 47, 48, 49, 200])
def test_random_blobs_agree_with_the_reference(size: int) -> None:
    plain = data(size)
    ids = ("t-1", "p-ü", "o-1", "k-1")
    blob = encrypt_bytes(KEY, Binding(*ids), plain, segment_size=SMALL)
    assert ref_decrypt(KEY, ids, blob) == plain
    salt, prefix = blob[75:107], blob[107:114]
    assert blob == ref_encrypt(KEY, ids, plain, segment_size=SMALL, salt=salt, prefix=prefix)


# --- sizes and round trips ------------------------------------------------------------


@pytest.mark.parametrize("segment_size", [1, SMALL, 1000])
def test_size_functions_are_inverse_and_reject_impossible_sizes(segment_size: int) -> None:
    for plain in range(0, 3 * segment_size + 3):
        cipher = ciphertext_size(plain, segment_size=segment_size)
        assert plaintext_size(cipher, segment_size=segment_size) == plain
    top = ciphertext_size(3 * segment_size + 2, segment_size=segment_size)
    valid = 0
    for cipher in range(0, top + 1):
        try:
            plain = plaintext_size(cipher, segment_size=segment_size)
        except IntegrityError:
            continue
        valid += 1
        assert ciphertext_size(plain, segment_size=segment_size) == cipher
    assert valid == 3 * segment_size + 3  # exactly one ciphertext size per plaintext size


def test_size_functions_at_production_segment_borders() -> None:
    for full in range(4):
        for plain in range(max(0, full * S - 3), full * S + 4):
            cipher = ciphertext_size(plain)
            assert cipher == HEADER_SIZE + plain + TAG_SIZE * (full + (plain >= full * S))
            assert plaintext_size(cipher) == plain
    # One byte more than a full segment's ciphertext, and no room for the last tag: impossible.
    impossible = (HEADER_SIZE + S + 2 * TAG_SIZE - 1, HEADER_SIZE + 2 * (S + TAG_SIZE), HEADER_SIZE + 15)
    for cipher in impossible:
        with pytest.raises(IntegrityError):
            plaintext_size(cipher)
    assert ciphertext_size(5 * S + 7) == HEADER_SIZE + 5 * S + 7 + 6 * TAG_SIZE


@pytest.mark.parametrize("segment_size", [SMALL, S])
@pytest.mark.parametrize("extra", [-1, 0, 1])
@pytest.mark.parametrize("full", [0, 1, 2])
def test_bytes_round_trip_at_segment_borders(segment_size: int, full: int, extra: int) -> None:
    plain = data(max(0, full * segment_size + extra))
    blob = encrypt_bytes(KEY, BINDING, plain, segment_size=segment_size)
    assert len(blob) == ciphertext_size(len(plain), segment_size=segment_size)
    assert decrypt_bytes(KEY, BINDING, blob) == plain


async def test_empty_blob_is_one_empty_last_segment() -> None:
    blob = encrypt_bytes(KEY, BINDING, b"")
    assert len(blob) == HEADER_SIZE + TAG_SIZE
    assert decrypt_bytes(KEY, BINDING, blob) == b""
    assert await stream_decrypt(blob) == b""
    assert DecryptingReader(KEY, BINDING, lambda a, b: blob[a:b], 0).read() == b""


def test_every_blob_gets_a_fresh_salt_and_nonce_prefix() -> None:
    first, second = (encrypt_bytes(KEY, BINDING, b"same bytes") for _ in range(2))
    assert first[75:107] != second[75:107]
    assert first[107:114] != second[107:114]
    assert first[HEADER_SIZE:] != second[HEADER_SIZE:]


def test_header_names_the_key_for_operators_only() -> None:
    blob = encrypt_bytes(KEY, BINDING, b"x")
    assert peek_key_id(blob[:HEADER_SIZE]) == "key-a"
    assert b"patient-a" not in blob and b"tenant-a" not in blob and b"object-a" not in blob


def test_binding_ids_are_validated() -> None:
    with pytest.raises(TypeError):
        Binding("t", "p", "o", 7)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Binding("t", "", "o", "k")
    with pytest.raises(ValueError):
        Binding("t", "p", "o", "k" * 65)
    # Length prefixes: moving a character between ids changes the binding.
    assert Binding("ab", "c", "o", "k").digest() != Binding("a", "bc", "o", "k").digest()


# --- tampering: every failure is an IntegrityError ------------------------------------


async def test_every_flipped_byte_fails() -> None:
    blob = encrypt_bytes(KEY, BINDING, data(40), segment_size=SMALL)  # 16 + 16 + 8
    for pos in range(len(blob)):
        for bit in (0x01, 0x80):
            bad = bytearray(blob)
            bad[pos] ^= bit
            with pytest.raises(IntegrityError):
                decrypt_bytes(KEY, BINDING, bad)
            with pytest.raises(IntegrityError):
                await stream_decrypt(bytes(bad))


def test_flipped_bytes_fail_at_production_segment_size() -> None:
    plain = data(2 * S + 1000)
    blob = encrypt_bytes(KEY, BINDING, plain)
    spots = list(range(HEADER_SIZE))
    for i in range(3):
        start = HEADER_SIZE + i * (S + TAG_SIZE)
        end = start + min(S, len(plain) - i * S) + TAG_SIZE
        spots += [start, (start + end) // 2, *range(end - TAG_SIZE, end)]  # body and every tag byte
    for pos in spots:
        bad = bytearray(blob)
        bad[pos] ^= 0x04
        with pytest.raises(IntegrityError):
            decrypt_bytes(KEY, BINDING, bad)


async def test_truncation_at_any_length_fails() -> None:
    blob = encrypt_bytes(KEY, BINDING, data(40), segment_size=SMALL)
    for length in range(len(blob)):
        with pytest.raises(IntegrityError):
            decrypt_bytes(KEY, BINDING, blob[:length])
        with pytest.raises(IntegrityError):
            await stream_decrypt(blob[:length])
    with pytest.raises(IntegrityError):
        decrypt_bytes(KEY, BINDING, blob + b"\0")
    with pytest.raises(IntegrityError):
        await stream_decrypt(blob + blob[-TAG_SIZE:])


@pytest.mark.parametrize(
    "segment_size, size", [(SMALL, 40), (SMALL, 32), (S, 2 * S + 1000), (S, 2 * S)]
)
async def test_dropping_the_final_segment_fails(segment_size: int, size: int) -> None:
    blob = encrypt_bytes(KEY, BINDING, data(size), segment_size=segment_size)
    header, segs = segments(blob, segment_size)
    assert len(segs) == size // segment_size + 1
    cut = header + b"".join(segs[:-1])
    with pytest.raises(IntegrityError):
        decrypt_bytes(KEY, BINDING, cut)
    with pytest.raises(IntegrityError):
        await stream_decrypt(cut)


async def test_reordered_or_duplicated_segments_fail() -> None:
    blob = encrypt_bytes(KEY, BINDING, data(48), segment_size=SMALL)  # 3 full + empty last
    header, segs = segments(blob, SMALL)
    assert len(segs) == 4
    variants = [
        [segs[1], segs[0], segs[2], segs[3]],
        [segs[0], segs[2], segs[1], segs[3]],
        [segs[0], segs[0], segs[2], segs[3]],  # duplicate replaces
        [segs[0], segs[0], segs[1], segs[2], segs[3]],  # duplicate inserted
        [segs[0], segs[1], segs[2], segs[2], segs[3]],
    ]
    for order in variants:
        bad = header + b"".join(order)
        with pytest.raises(IntegrityError):
            decrypt_bytes(KEY, BINDING, bad)
        with pytest.raises(IntegrityError):
            await stream_decrypt(bad)
    # A segment served from another position of a range read fails too.
    cstart, cend = ciphertext_span(SMALL, 2 * SMALL, 48, segment_size=SMALL)
    with pytest.raises(IntegrityError):
        decrypt_range(KEY, BINDING, segs[0], SMALL, 2 * SMALL, 48, header=header)


OTHERS = [
    Binding("tenant-b", "patient-a", "object-a", "key-a"),
    Binding("tenant-a", "patient-b", "object-a", "key-a"),
    Binding("tenant-a", "patient-a", "object-b", "key-a"),
    Binding("tenant-a", "patient-a", "object-a", "key-b"),
]


@pytest.mark.parametrize("other", OTHERS, ids=["tenant", "patient", "object", "key_id"])
async def test_another_objects_or_patients_ids_fail_even_with_the_same_key(other: Binding) -> None:
    plain = data(40)
    blob = encrypt_bytes(KEY, BINDING, plain, segment_size=SMALL)
    attempts = [
        lambda: decrypt_bytes(KEY, other, blob),
        lambda: decrypt_range(KEY, other, blob[HEADER_SIZE:148], 0, 16, 40, header=blob[:HEADER_SIZE]),
        lambda: DecryptingReader(KEY, other, lambda a, b: blob[a:b], 40).read(),
    ]
    for attempt in attempts:
        with pytest.raises(IntegrityError) as caught:
            attempt()
        message = str(caught.value)
        assert not any(i in message for i in ("tenant-", "patient-", "object-", "key-"))
    with pytest.raises(IntegrityError):
        await stream_decrypt(blob, binding=other)
    # A blob of the other object, put in this object's place, fails the same way.
    swapped = encrypt_bytes(KEY, other, plain, segment_size=SMALL)
    with pytest.raises(IntegrityError):
        decrypt_bytes(KEY, BINDING, swapped)


def test_segments_or_header_of_another_blob_fail() -> None:
    first = encrypt_bytes(KEY, BINDING, data(40), segment_size=SMALL)
    second = encrypt_bytes(KEY, BINDING, data(40), segment_size=SMALL)  # same key and ids
    h1, s1 = segments(first, SMALL)
    h2, s2 = segments(second, SMALL)
    for bad in (h2 + b"".join(s1), h1 + s2[0] + s1[1] + s1[2], h1 + s1[0] + s1[1] + s2[2]):
        with pytest.raises(IntegrityError):
            decrypt_bytes(KEY, BINDING, bad)


@pytest.mark.parametrize("other", OTHERS, ids=["tenant", "patient", "object", "key_id"])
async def test_a_remembered_cipher_never_opens_another_binding_or_blob(other: Binding) -> None:
    """The key store hands out cached object keys that remember the cipher derived for
    the blob last read (keys.blobio.cipher_for). After a good read, the memo must not let
    another binding, another blob under the same key, a swapped header or a flipped byte
    through; and a blob read again gives the same bytes."""
    key = ObjectKey(KEY, key_id=BINDING.key_id)
    plain = data(40)
    blob = encrypt_bytes(KEY, BINDING, plain, segment_size=SMALL)
    assert decrypt_bytes(key, BINDING, blob) == plain
    remembered = key.derived
    assert remembered is not None and remembered[0] == BINDING
    assert decrypt_bytes(key, BINDING, blob) == plain and key.derived is remembered  # reused
    with pytest.raises(IntegrityError):
        decrypt_bytes(key, other, blob)
    with pytest.raises(IntegrityError):
        await stream_decrypt(blob, binding=other, key=key)

    async def fetch(a: int, b: int) -> bytes:
        return blob[a:b]

    with pytest.raises(IntegrityError):
        await collect(decrypt_range_stream(key, other, fetch, 0, 40, 40, segment_size=SMALL))
    assert await collect(decrypt_range_stream(key, BINDING, fetch, 3, 30, 40, segment_size=SMALL)) == plain[3:30]
    other_plain = data(40)
    second = encrypt_bytes(KEY, BINDING, other_plain, segment_size=SMALL)  # same key and ids, new salt
    h1, s1 = segments(blob, SMALL)
    h2, s2 = segments(second, SMALL)
    for bad in (h2 + b"".join(s1), h1 + s2[0] + s1[1] + s1[2]):
        assert decrypt_bytes(key, BINDING, blob) == plain  # the memo is this blob's again
        with pytest.raises(IntegrityError):
            decrypt_bytes(key, BINDING, bad)
    flipped = bytearray(blob)
    flipped[HEADER_SIZE + 3] ^= 1
    assert decrypt_bytes(key, BINDING, blob) == plain
    with pytest.raises(IntegrityError):
        decrypt_bytes(key, BINDING, bytes(flipped))
    assert decrypt_bytes(key, BINDING, second) == other_plain  # derived afresh for the other blob


def test_wrong_key_and_hostile_headers_fail() -> None:
    blob = encrypt_bytes(KEY, BINDING, data(100))
    with pytest.raises(IntegrityError):
        decrypt_bytes(bytes(32), BINDING, blob)
    # A header claiming a huge segment size is refused before any buffer is sized by it.
    huge = bytearray(blob)
    huge[6:10] = struct.pack(">I", 1 << 31)
    with pytest.raises(IntegrityError):
        decrypt_bytes(KEY, BINDING, huge)
    with pytest.raises(IntegrityError):
        DecryptingReader(KEY, BINDING, lambda a, b: bytes(huge[a:b]), 100)
    with pytest.raises(IntegrityError):
        decrypt_bytes(KEY, BINDING, b"PK\x03\x04" + blob[4:])


# --- random access --------------------------------------------------------------------


def touched_bytes(start: int, end: int, size: int, segment_size: int) -> int:
    """Ciphertext bytes of the segments holding [start, end), counted segment by segment."""
    total = 0
    for index in range(size // segment_size + 1):
        lo, hi = index * segment_size, min((index + 1) * segment_size, size)
        if start < end and lo < end and start < max(hi, lo + 1):
            total += hi - lo + TAG_SIZE
    return total


def test_every_small_range_decrypts_to_the_exact_slice() -> None:
    plain = data(50)
    blob = encrypt_bytes(KEY, BINDING, plain, segment_size=SMALL)
    for start in range(51):
        for end in range(start, 51):
            cstart, cend = ciphertext_span(start, end, 50, segment_size=SMALL)
            assert cend - cstart == touched_bytes(start, end, 50, SMALL)
            span, header = blob[cstart:cend], blob[:HEADER_SIZE]
            got = decrypt_range(KEY, BINDING, span, start, end, 50, header=header)
            assert got == plain[start:end]


def production_ranges(size: int) -> list[tuple[int, int]]:
    fixed = [(0, 0), (0, 1), (0, size), (S - 1, S + 1), (S, 2 * S), (size - 1, size), (size, size)]
    fixed += [(7, 7), (S - 5, 2 * S + 5)]
    spread = [sorted((RNG.randrange(size + 1), RNG.randrange(size + 1))) for _ in range(20)]
    return fixed + [(a, b) for a, b in spread]


async def test_ranges_fetch_only_the_segments_they_touch() -> None:
    size = 3 * S + 12345
    plain = data(size)
    blob = encrypt_bytes(KEY, BINDING, plain)
    for start, end in production_ranges(size):
        asked: list[tuple[int, int]] = []

        async def fetch(a: int, b: int) -> bytes:
            asked.append((a, b))
            return blob[a:b]

        pieces = decrypt_range_stream(KEY, BINDING, fetch, start, end, size, segments_per_fetch=2)
        got = await collect(pieces)
        assert got == plain[start:end]
        needed = touched_bytes(start, end, size, S)
        assert sum(b - a for a, b in asked) == (HEADER_SIZE + needed if needed else 0)
        cstart, cend = ciphertext_span(start, end, size)
        span, header = blob[cstart:cend], blob[:HEADER_SIZE]
        assert decrypt_range(KEY, BINDING, span, start, end, size, header=header) == plain[start:end]

        reads: list[tuple[int, int]] = []
        def counted(a: int, b: int) -> bytes:
            reads.append((a, b))
            return blob[a:b]

        reader = DecryptingReader(KEY, BINDING, counted, size)
        reader.seek(start)
        assert reader.read(end - start) == plain[start:end]
        assert sum(b - a for a, b in reads) == HEADER_SIZE + needed


class StoreDown(Exception):
    pass


@pytest.mark.parametrize("failing", ["header", "segments"])
async def test_range_stream_passes_fetch_errors_through_unwrapped(failing: str) -> None:
    blob = encrypt_bytes(KEY, BINDING, data(40), segment_size=SMALL)

    async def fetch(a: int, b: int) -> bytes:
        if (a == 0) == (failing == "header"):
            raise StoreDown("storage unavailable")
        return blob[a:b]

    with pytest.raises(StoreDown):
        await collect(decrypt_range_stream(KEY, BINDING, fetch, 0, 40, 40, segment_size=SMALL))


def test_range_arguments_are_checked() -> None:
    blob = encrypt_bytes(KEY, BINDING, data(40), segment_size=SMALL)
    for start, end in [(-1, 3), (5, 4), (0, 41)]:
        with pytest.raises(ValueError):
            ciphertext_span(start, end, 40, segment_size=SMALL)
    with pytest.raises(IntegrityError):  # span of the wrong length
        decrypt_range(KEY, BINDING, blob[HEADER_SIZE:-1], 0, 40, 40, header=blob[:HEADER_SIZE])
    with pytest.raises(IntegrityError):  # the database's size disagrees with the blob
        cstart, cend = ciphertext_span(32, 39, 39, segment_size=SMALL)
        decrypt_range(KEY, BINDING, blob[cstart:cend], 32, 39, 39, header=blob[:HEADER_SIZE])


# --- streaming ------------------------------------------------------------------------


async def test_streaming_20_mib_round_trip_with_reused_buffers_and_bounded_memory() -> None:
    total = 20 * S + 123
    source = bytearray(256 << 10)
    sent = hashlib.sha256()

    async def produce() -> AsyncIterator[memoryview]:
        # One buffer, overwritten before every chunk: the encryptor must not keep views.
        done, fill = 0, 0
        while done < total:
            size = min(RNG.randint(1, len(source)), total - done)
            fill = (fill + 1) % 251
            source[:size] = bytes([fill]) * size
            sent.update(source[:size])
            yield memoryview(source)[:size]
            done += size

    async def rechunk(pieces: AsyncIterator[bytes]) -> AsyncIterator[memoryview]:
        async for piece in pieces:
            view = memoryview(piece)
            while view:
                cut = RNG.randint(1, 300_000)
                yield view[:cut]
                view = view[cut:]

    received = hashlib.sha256()
    cipher_bytes = 0

    async def count(pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        nonlocal cipher_bytes
        async for piece in pieces:
            cipher_bytes += len(piece)
            yield piece

    tracemalloc.start()
    try:
        sealed = rechunk(count(encrypt_stream(KEY, BINDING, produce())))
        async for piece in decrypt_stream(KEY, BINDING, sealed):
            received.update(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received.digest() == sent.digest()
    assert cipher_bytes == ciphertext_size(total)
    # Buffers and pieces in flight, a few segments each side; nothing near the 20 MiB.
    assert peak < 8 * S


async def test_stream_pieces_are_owned_by_the_consumer() -> None:
    source = bytearray(1000)

    async def produce() -> AsyncIterator[memoryview]:
        for i in range(40):
            source[:] = bytes([i]) * len(source)
            yield memoryview(source)

    blob = await collect(encrypt_stream(KEY, BINDING, produce(), segment_size=SMALL * 100))
    expected = b"".join(bytes([i]) * 1000 for i in range(40))
    assert decrypt_bytes(KEY, BINDING, blob) == expected
    pieces = decrypt_stream(KEY, BINDING, chunked(blob, [HEADER_SIZE, 5000, 7, 10**6]))
    kept = [p async for p in pieces]
    assert b"".join(kept) == expected


async def test_decrypting_nothing_fails() -> None:
    with pytest.raises(IntegrityError):
        await stream_decrypt(b"")


# --- file objects for PyAV ------------------------------------------------------------


def test_blob_encryptor_accepts_writes_of_any_size() -> None:
    plain = data(8 * SMALL * 64 + 3)
    pieces: list[bytes] = []
    with BlobEncryptor(KEY, BINDING, pieces.append, segment_size=SMALL * 64) as out:
        pos = 0
        for size in [0, 1, 1023, 1024, 1, 0, 5000]:
            assert out.write(memoryview(plain)[pos : pos + size]) == size
            pos += size
        out.write(plain[pos:])
    assert out.closed and out.plain_size == len(plain)
    blob = b"".join(pieces)
    assert out.cipher_size == len(blob) == ciphertext_size(len(plain), segment_size=SMALL * 64)
    assert decrypt_bytes(KEY, BINDING, blob) == plain
    out.close()  # idempotent, emits nothing more
    assert b"".join(pieces) == blob
    with pytest.raises(ValueError):
        out.write(b"late")


def test_blob_encryptor_abort_leaves_nothing_decryptable() -> None:
    pieces: list[bytes] = []
    with pytest.raises(RuntimeError):
        with BlobEncryptor(KEY, BINDING, pieces.append, segment_size=SMALL) as out:
            out.write(data(100))
            raise RuntimeError("muxer failed")
    assert out.closed
    with pytest.raises(IntegrityError):
        decrypt_bytes(KEY, BINDING, b"".join(pieces))
    empty: list[bytes] = []
    BlobEncryptor(KEY, BINDING, empty.append).close()
    assert decrypt_bytes(KEY, BINDING, b"".join(empty)) == b""


@pytest.mark.parametrize("segment_size, size", [(SMALL, 100), (SMALL, 96), (S, 2 * S + 777)])
def test_reader_matches_bytesio_on_random_seeks_and_reads(segment_size: int, size: int) -> None:
    plain = data(size)
    blob = encrypt_bytes(KEY, BINDING, plain, segment_size=segment_size)
    reader = DecryptingReader(KEY, BINDING, lambda a, b: blob[a:b], size)
    model = io.BytesIO(plain)
    assert reader.seekable() and reader.readable()
    for _ in range(300):
        op = RNG.choice(["seek0", "seek1", "seek2", "read", "readinto", "tell", "readall"])
        if op.startswith("seek"):
            whence = int(op[-1])
            offset = RNG.randint(-size - 20 if whence else 0, size + 20)
            assert reader.seek(offset, whence) == model.seek(offset, whence)
        elif op == "read":
            n = RNG.choice([0, 1, 7, segment_size - 1, segment_size, segment_size + 1])
            n = n if RNG.random() < 0.8 else 3 * segment_size + 5
            assert reader.read(n) == model.read(n)
        elif op == "readinto":
            n = RNG.randint(0, 2 * segment_size + 3)
            ours, theirs = bytearray(n), bytearray(n)
            assert reader.readinto(ours) == model.readinto(theirs)
            assert ours == theirs
        elif op == "readall":
            assert reader.read() == model.read()
        assert reader.tell() == model.tell()
    with pytest.raises(ValueError):
        reader.seek(-1)
    reader.close()
    with pytest.raises(ValueError):
        reader.read(1)


def test_reader_leaves_no_unauthenticated_plaintext_in_the_callers_buffer() -> None:
    plain = data(3 * SMALL)
    blob = bytearray(encrypt_bytes(KEY, BINDING, plain, segment_size=SMALL))
    blob[HEADER_SIZE + (SMALL + TAG_SIZE) + 3] ^= 1  # segment 1 body
    reader = DecryptingReader(KEY, BINDING, lambda a, b: bytes(blob[a:b]), len(plain))
    reader.seek(SMALL)
    buffer = bytearray(b"\xaa" * SMALL)  # a whole segment: decrypted straight into it
    with pytest.raises(IntegrityError):
        reader.readinto(buffer)
    assert buffer == bytes(SMALL)
    reader.seek(SMALL + 2)
    with pytest.raises(IntegrityError):
        reader.read(3)
    reader.seek(0)
    assert reader.read(SMALL) == plain[:SMALL]


def test_reader_refuses_short_fetches() -> None:
    blob = encrypt_bytes(KEY, BINDING, data(40), segment_size=SMALL)
    reader = DecryptingReader(KEY, BINDING, lambda a, b: blob[a : b - 1] if a else blob[a:b], 40)
    with pytest.raises(IntegrityError):
        reader.read(5)


def test_pyav_muxes_into_the_encryptor_and_demuxes_through_the_reader() -> None:
    av = pytest.importorskip("av")
    np = pytest.importorskip("numpy")
    pieces: list[bytes] = []
    out = BlobEncryptor(KEY, BINDING, pieces.append)
    options = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}
    with av.open(out, "w", format="mp4", options=options) as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(12):
            pixels = np.full((48, 64, 3), i * 20, np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    out.close()  # PyAV does not close a file object it was given
    blob = b"".join(pieces)
    reader = DecryptingReader(KEY, BINDING, lambda a, b: blob[a:b], out.plain_size)
    with av.open(reader, "r") as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 12
    assert frames[5].to_ndarray(format="rgb24").mean() == pytest.approx(100, abs=3)
