"""Blob store throughput against plain baselines measured in the same run.

    .venv/bin/python bench/bench_storage.py [--reps 5] [--big-mib 64] [--s3-mib 32]

LocalStore vs a plain file copy (shutil.copyfileobj; once without and once with the
fsync+rename our atomic write does), and S3Store vs raw boto3 (put_object,
upload_fileobj, get_object) against one moto server on loopback. Variants run
interleaved, rep by rep, so machine noise hits them alike; we print medians and the
ratio to the baseline (ratio > 1: slower than the baseline).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.moto import moto_server  # noqa: E402
from vault.storage import LocalStore, S3Store, new_key  # noqa: E402

MiB = 1 << 20
CHUNK = 64 * 1024  # what aiohttp hands an upload handler at a time
SMALL = 128 * 1024  # a thumbnail-sized blob
SMALL_OPS = 20


async def chunks_of(data: bytes, size: int = CHUNK) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for i in range(0, len(data), size):
        yield view[i : i + size]


async def drain(reader) -> int:
    n = 0
    async with reader:
        async for chunk in reader:
            n += len(chunk)
    return n


Variant = Callable[[], Awaitable[object]]


async def measure(groups: dict[str, dict[str, Variant]], reps: int) -> dict[str, dict[str, list[float]]]:
    times: dict[str, dict[str, list[float]]] = {g: {v: [] for v in vs} for g, vs in groups.items()}
    for rep in range(reps):
        for group, variants in groups.items():
            names = list(variants)
            # Rotate who goes first, and flush dirty pages before each run: otherwise a
            # variant's fsync pays for the writeback of whatever ran before it.
            for name in names[rep % len(names):] + names[: rep % len(names)]:
                fn = variants[name]
                await asyncio.to_thread(os.sync)
                t0 = time.perf_counter()
                await fn()
                times[group][name].append(time.perf_counter() - t0)
    return times


def report(times: dict[str, dict[str, list[float]]], sizes: dict[str, int]) -> None:
    for group, variants in times.items():
        baseline = next(iter(variants))
        base = statistics.median(variants[baseline])
        print(f"\n{group}  ({sizes[group] / MiB:.1f} MiB per run; baseline: {baseline})")
        for name, ts in variants.items():
            med = statistics.median(ts)
            print(f"  {name:<38} {med * 1000:9.1f} ms  {sizes[group] / MiB / med:8.0f} MiB/s  x{med / base:5.2f}")


async def local_groups(root: Path, big: bytes, small: bytes) -> tuple[dict[str, dict[str, Variant]], dict[str, int]]:
    store = LocalStore(root / "store")
    plain = root / "plain"
    plain.mkdir()
    big_key, small_keys = new_key(), [new_key() for _ in range(SMALL_OPS)]

    def copy_file(data: bytes, path: Path, *, durable: bool) -> None:
        tmp = path.with_suffix(".tmp") if durable else path
        with open(tmp, "wb") as f:
            shutil.copyfileobj(io.BytesIO(data), f, CHUNK)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        if durable:
            os.replace(tmp, path)
            fd = os.open(path.parent, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)

    def read_file(path: Path) -> int:
        n = 0
        with open(path, "rb") as f:
            while chunk := f.read(MiB):
                n += len(chunk)
        return n

    async def put_small_store() -> None:
        for k in small_keys:
            await store.put(k, chunks_of(small))

    async def get_small_store() -> None:
        for k in small_keys:
            await store.read(k)

    # One thread hop per blob, as an async service does it.
    async def small_plain(*, durable: bool) -> None:
        for i in range(SMALL_OPS):
            await asyncio.to_thread(copy_file, small, plain / f"s{i}", durable=durable)

    async def small_plain_read() -> None:
        for i in range(SMALL_OPS):
            await asyncio.to_thread((plain / f"s{i}").read_bytes)

    # Seed what the read variants read, so each rep starts from the same state.
    await store.put(big_key, chunks_of(big))
    copy_file(big, plain / "big", durable=False)
    await put_small_store()
    await small_plain(durable=False)

    groups: dict[str, dict[str, Variant]] = {
        "local put, big": {
            "copyfileobj (no fsync)": lambda: asyncio.to_thread(copy_file, big, plain / "big", durable=False),
            "copyfileobj + fsync + rename": lambda: asyncio.to_thread(copy_file, big, plain / "big", durable=True),
            "LocalStore.put (64 KiB chunks)": lambda: store.put(big_key, chunks_of(big)),
        },
        "local get, big": {
            "open + read(1 MiB) loop": lambda: asyncio.to_thread(read_file, plain / "big"),
            "LocalStore.get streamed (1 MiB chunks)": lambda: _get(store, big_key),
            "Path.read_bytes": lambda: asyncio.to_thread((plain / "big").read_bytes),
            "LocalStore.read": lambda: store.read(big_key),
        },
        f"local put, {SMALL_OPS} x {SMALL // 1024} KiB": {
            "copyfileobj + fsync + rename": lambda: small_plain(durable=True),
            "LocalStore.put": put_small_store,
        },
        f"local get, {SMALL_OPS} x {SMALL // 1024} KiB": {
            "Path.read_bytes": small_plain_read,
            "LocalStore.read": get_small_store,
        },
    }
    sizes = {
        "local put, big": len(big), "local get, big": len(big),
        f"local put, {SMALL_OPS} x {SMALL // 1024} KiB": SMALL * SMALL_OPS,
        f"local get, {SMALL_OPS} x {SMALL // 1024} KiB": SMALL * SMALL_OPS,
    }
    return groups, sizes


async def _get(store, key: str) -> int:
    return await drain(await store.get(key))


async def s3_groups(moto, data: bytes, small: bytes) -> tuple[dict[str, dict[str, Variant]], dict[str, int], S3Store]:
    bucket = f"bench-{uuid.uuid4().hex[:10]}"
    client = moto.client("s3")
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": moto.region})
    store = S3Store.from_url(f"s3://{bucket}/ours?endpoint_url={moto.url}&region={moto.region}")
    key, small_keys = new_key(), [new_key() for _ in range(SMALL_OPS)]

    def raw_get(k: str) -> int:
        body = client.get_object(Bucket=bucket, Key=k)["Body"]
        n = 0
        while chunk := body.read(MiB):
            n += len(chunk)
        return n

    def raw_small_put() -> None:
        for i, k in enumerate(small_keys):
            client.put_object(Bucket=bucket, Key=f"raw/{k}", Body=small)

    def raw_small_get() -> None:
        for k in small_keys:
            client.get_object(Bucket=bucket, Key=f"raw/{k}")["Body"].read()

    async def ours_small_put() -> None:
        for k in small_keys:
            await store.put(k, chunks_of(small))

    async def ours_small_get() -> None:
        for k in small_keys:
            await store.read(k)

    await store.put(key, chunks_of(data))
    client.put_object(Bucket=bucket, Key="raw/big", Body=data)
    raw_small_put()
    await ours_small_put()

    groups: dict[str, dict[str, Variant]] = {
        "s3 put, big": {
            "boto3 put_object (one request)": lambda: asyncio.to_thread(
                client.put_object, Bucket=bucket, Key="raw/big", Body=data),
            "boto3 upload_fileobj (threaded multipart)": lambda: asyncio.to_thread(
                client.upload_fileobj, io.BytesIO(data), bucket, "raw/big2"),
            "S3Store.put (64 KiB chunks, 8 MiB parts)": lambda: store.put(key, chunks_of(data)),
        },
        "s3 get, big": {
            "boto3 get_object + read(1 MiB)": lambda: asyncio.to_thread(raw_get, "raw/big"),
            "S3Store.get streamed": lambda: _get(store, key),
            "S3Store.read": lambda: store.read(key),
        },
        f"s3 put, {SMALL_OPS} x {SMALL // 1024} KiB": {
            "boto3 put_object": lambda: asyncio.to_thread(raw_small_put),
            "S3Store.put": ours_small_put,
        },
        f"s3 get, {SMALL_OPS} x {SMALL // 1024} KiB": {
            "boto3 get_object": lambda: asyncio.to_thread(raw_small_get),
            "S3Store.read": ours_small_get,
        },
    }
    sizes = {
        "s3 put, big": len(data), "s3 get, big": len(data),
        f"s3 put, {SMALL_OPS} x {SMALL // 1024} KiB": SMALL * SMALL_OPS,
        f"s3 get, {SMALL_OPS} x {SMALL // 1024} KiB": SMALL * SMALL_OPS,
    }
    return groups, sizes, store


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--big-mib", type=int, default=64)
    parser.add_argument("--s3-mib", type=int, default=32)
    args = parser.parse_args()

    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        os.environ.pop(name, None)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")

    big = os.urandom(args.big_mib * MiB)
    small = os.urandom(SMALL)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {args.reps} reps, medians")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        groups, sizes = await local_groups(Path(tmp), big, small)
        report(await measure(groups, args.reps), sizes)
    with moto_server() as moto:
        groups, sizes, store = await s3_groups(moto, big[: args.s3_mib * MiB], small)
        try:
            report(await measure(groups, args.reps), sizes)
        finally:
            await store.close()
    print(f"\ntotal {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    import logging

    # moto's HTTP server logs every request at INFO.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    asyncio.run(main())
