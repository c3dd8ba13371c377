"""Blob format throughput against a bare AES-GCM loop measured in the same run.

    .venv/bin/python bench/bench_blob.py            # 12 MB photo + 1 GiB stream (~20 s)
    .venv/bin/python bench/bench_blob.py --quick    # 12 MB photo + 128 MiB stream

The baseline is ``AESGCM.encrypt_into`` / ``decrypt_into`` over the same bytes in 1 MiB
segments with one reused output buffer: the cost of the cipher alone. Ours adds the
header, key derivation, chunk reassembly and handing out owned ``bytes``. Input chunks
are views of one reused buffer (64 KiB like an aiohttp body read, or 1 MiB). The big
stream is never held whole: its decryption is measured as a round trip (encrypt ->
64 KiB re-chunking -> decrypt) against a bare encrypt+decrypt loop. Peak memory of the
big round trip is taken with tracemalloc in a separate, untimed pass.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from keys.blob import (  # noqa: E402
    HEADER_SIZE,
    SEGMENT_SIZE,
    TAG_SIZE,
    Binding,
    DecryptingReader,
    decrypt_bytes,
    decrypt_stream,
    encrypt_bytes,
    encrypt_stream,
)

MiB = 1 << 20
KEY = os.urandom(32)
BINDING = Binding("tenant-bench", "patient-bench", "object-bench", "key-bench")


def bare_encrypt(total: int, block: memoryview) -> None:
    """Walks ``block`` (wrapping round) so it reads the same memory the stream reads."""
    aead = AESGCM(os.urandom(32))
    out = bytearray(SEGMENT_SIZE + 16)
    nonce, aad = os.urandom(12), os.urandom(146)
    done = 0
    while done < total:
        at = done % len(block)
        n = min(SEGMENT_SIZE, total - done, len(block) - at)
        aead.encrypt_into(nonce, block[at : at + n], aad, memoryview(out)[: n + 16])
        done += n


def bare_roundtrip(total: int, block: memoryview) -> None:
    aead = AESGCM(os.urandom(32))
    sealed = bytearray(SEGMENT_SIZE + 16)
    plain = bytearray(SEGMENT_SIZE)
    nonce, aad = os.urandom(12), os.urandom(146)
    done = 0
    while done < total:
        n = min(SEGMENT_SIZE, total - done)
        aead.encrypt_into(nonce, block[:n], aad, memoryview(sealed)[: n + 16])
        aead.decrypt_into(nonce, memoryview(sealed)[: n + 16], aad, memoryview(plain)[:n])
        done += n


def bare_decrypter(data: bytes) -> Callable[[], None]:
    """Decrypt-only baseline over its own segments of ``data`` (as much memory to read)."""
    aead = AESGCM(os.urandom(32))
    nonce, aad = os.urandom(12), os.urandom(146)
    sealed = [
        aead.encrypt(nonce, data[i : i + SEGMENT_SIZE], aad)
        for i in range(0, len(data), SEGMENT_SIZE)
    ]
    plain = bytearray(SEGMENT_SIZE)

    def go() -> None:
        for segment in sealed:
            aead.decrypt_into(nonce, segment, aad, memoryview(plain)[: len(segment) - 16])

    return go


async def views(total: int, block: memoryview, chunk: int) -> AsyncIterator[memoryview]:
    """``total`` bytes as views of one reused buffer (``block`` holds at least ``chunk``)."""
    done = 0
    while done < total:
        n = min(chunk, total - done)
        yield block[:n]
        done += n


async def slices(data: bytes, chunk: int) -> AsyncIterator[memoryview]:
    view = memoryview(data)
    for i in range(0, len(view), chunk):
        yield view[i : i + chunk]


async def aligned(blob: bytes) -> AsyncIterator[memoryview]:
    """The header, then one piece per ciphertext segment, as a storage reader can ask for."""
    view = memoryview(blob)
    yield view[:HEADER_SIZE]
    for i in range(HEADER_SIZE, len(view), SEGMENT_SIZE + TAG_SIZE):
        yield view[i : i + SEGMENT_SIZE + TAG_SIZE]


async def rechunk(pieces: AsyncIterator[bytes], chunk: int) -> AsyncIterator[memoryview]:
    async for piece in pieces:
        view = memoryview(piece)
        for i in range(0, len(view), chunk):
            yield view[i : i + chunk]


async def drain(pieces: AsyncIterator[bytes | memoryview]) -> int:
    n = 0
    async for piece in pieces:
        n += len(piece)
    return n


Case = Callable[[], Awaitable[object]]


def sync(fn: Callable[[], object]) -> Case:
    async def go() -> object:
        return fn()

    return go


async def measure(cases: dict[str, Case], rounds: int) -> dict[str, float]:
    """Median seconds per case, all in one event loop; cases interleave within each round
    so the machine's noise hits every case alike."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            start = time.perf_counter()
            await fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def report(
    title: str, size: int, medians: dict[str, float], pairs: Iterable[tuple[str, str]]
) -> None:
    print(f"\n{title} ({size / MiB:.1f} MiB)")
    for name, secs in medians.items():
        print(f"  {name:<34} {size / MiB / secs:7.0f} MiB/s  (median {secs * 1000:7.1f} ms)")
    for ours, base in pairs:
        print(f"  ratio {ours:<34} / {base}: {medians[base] / medians[ours]:.2f}")


async def photo(rounds: int) -> None:
    size = 12_000_000
    data = os.urandom(size)
    blob = encrypt_bytes(KEY, BINDING, data)
    block = memoryview(data)

    def enc(chunks: AsyncIterator[memoryview]) -> Awaitable[int]:
        return drain(encrypt_stream(KEY, BINDING, chunks))

    def dec(chunks: AsyncIterator[memoryview]) -> Awaitable[int]:
        return drain(decrypt_stream(KEY, BINDING, chunks))

    def read_all(read_size: int) -> None:
        reader = DecryptingReader(KEY, BINDING, lambda a, b: blob[a:b], size)
        while reader.read(read_size):
            pass

    cases: dict[str, Case] = {
        "bare encrypt_into": sync(lambda: bare_encrypt(size, block)),
        "encrypt_stream, 64 KiB chunks": lambda: enc(slices(data, 64 << 10)),
        "encrypt_stream, 1 MiB chunks": lambda: enc(slices(data, MiB)),
        "encrypt_bytes": sync(lambda: encrypt_bytes(KEY, BINDING, data)),
        "bare decrypt_into": sync(bare_decrypter(data)),
        "decrypt_stream, 64 KiB chunks": lambda: dec(slices(blob, 64 << 10)),
        "decrypt_stream, 1 MiB chunks": lambda: dec(slices(blob, MiB)),
        "decrypt_stream, segment-aligned": lambda: dec(aligned(blob)),
        "decrypt_bytes": sync(lambda: decrypt_bytes(KEY, BINDING, blob)),
        "DecryptingReader, 32 KiB reads": sync(lambda: read_all(32 << 10)),
    }
    medians = await measure(cases, rounds)
    pairs = [(name, "bare encrypt_into") for name in list(cases)[1:4]]
    pairs += [(name, "bare decrypt_into") for name in list(cases)[5:]]
    report("photo, 12 MB", size, medians, pairs)


async def stream(total: int, rounds: int) -> None:
    block = memoryview(bytearray(os.urandom(MiB)))

    def ours_enc(chunk: int) -> Case:
        return lambda: drain(encrypt_stream(KEY, BINDING, views(total, block, chunk)))

    def ours_rt(chunk: int) -> Case:
        def go() -> Awaitable[int]:
            sealed = encrypt_stream(KEY, BINDING, views(total, block, chunk))
            return drain(decrypt_stream(KEY, BINDING, rechunk(sealed, 64 << 10)))

        return go

    cases: dict[str, Case] = {
        "bare encrypt_into": sync(lambda: bare_encrypt(total, block)),
        "encrypt_stream, 64 KiB chunks": ours_enc(64 << 10),
        "encrypt_stream, 1 MiB chunks": ours_enc(MiB),
        "bare encrypt+decrypt_into": sync(lambda: bare_roundtrip(total, block)),
        "round trip, 64 KiB chunks": ours_rt(64 << 10),
    }
    medians = await measure(cases, rounds)
    report(f"stream, {total // MiB} MiB", total, medians, [
        ("encrypt_stream, 64 KiB chunks", "bare encrypt_into"),
        ("encrypt_stream, 1 MiB chunks", "bare encrypt_into"),
        ("round trip, 64 KiB chunks", "bare encrypt+decrypt_into"),
    ])  # fmt: skip
    dec_ours = medians["round trip, 64 KiB chunks"] - medians["encrypt_stream, 64 KiB chunks"]
    dec_bare = medians["bare encrypt+decrypt_into"] - medians["bare encrypt_into"]
    print(f"  decrypt share (round trip - encrypt): bare / ours ~ {dec_bare / dec_ours:.2f}")

    tracemalloc.start()
    await ours_rt(64 << 10)()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"  peak traced memory, {total // MiB} MiB round trip: {peak / MiB:.2f} MiB")
    if sys.platform.startswith("linux"):
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"  process max RSS, whole run (photo buffers included): {rss:.0f} MiB")


async def run(quick: bool) -> None:
    await photo(rounds=7 if quick else 25)
    await stream(128 * MiB if quick else 1024 * MiB, rounds=3 if quick else 7)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="128 MiB stream, fewer rounds")
    args = parser.parse_args()
    python = sys.version.split()[0]
    print(f"python {python}, segment {SEGMENT_SIZE // MiB} MiB, cpus {os.cpu_count()}")
    asyncio.run(run(args.quick))


if __name__ == "__main__":
    main()
