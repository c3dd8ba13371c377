"""Photo ingest throughput: the decoder worker processes against the old in-thread pipeline,
measured in the same run on the same photos.

    .venv/bin/python bench/bench_decoders.py [--runs 5] [--photos 16] [--workers N]

Each run pushes ``--photos`` 12 MP JPEGs through (a) ``process_photo`` in a thread pool of
``--workers`` threads, one face detector per thread (what vault/media/processing.py did
before issue 11 item 10), and (b) ``PhotoPipeline.process`` over a DecoderPool of
``--workers`` processes (pipes both ways, plus the server's re-check). Prints medians of
photos/s and the ratio (b)/(a).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_pipeline import DEFAULT_MODEL, sample_jpeg  # noqa: E402
from vault.media.decoders import DecoderPool, PoolLimits  # noqa: E402
from vault.media.processing import PhotoPipeline  # noqa: E402
from vault.pipeline import load_detector, process_photo  # noqa: E402

MAX_PIXELS = 50_000_000


async def threads(photos: list[bytes], workers: int, model: str | None) -> float:
    local = threading.local()

    def run(data: bytes):
        if getattr(local, "detector", None) is None:
            local.detector = load_detector(model)
        return process_photo(data, max_pixels=MAX_PIXELS, detector=local.detector)

    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(workers) as pool:
        await asyncio.gather(*(loop.run_in_executor(pool, run, photos[0]) for _ in range(workers)))  # warm
        start = time.perf_counter()
        await asyncio.gather(*(loop.run_in_executor(pool, run, p) for p in photos))
        return len(photos) / (time.perf_counter() - start)


async def processes(photos: list[bytes], workers: int, model: str | None) -> float:
    limits = PoolLimits(workers=workers, item_seconds=300, video_seconds=300, memory_bytes=4 << 30,
                        recycle_after=10_000, queue_seconds=300, max_queue=1000)
    pipeline = PhotoPipeline(DecoderPool(limits, face_model=model), max_pixels=MAX_PIXELS)
    pipeline.start()
    try:
        await asyncio.gather(*(pipeline.process(photos[0]) for _ in range(workers)))  # warm
        start = time.perf_counter()
        await asyncio.gather(*(pipeline.process(p) for p in photos))
        return len(photos) / (time.perf_counter() - start)
    finally:
        await pipeline.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--photos", type=int, default=16)
    parser.add_argument("--workers", type=int, default=max(2, os.cpu_count() or 2))
    args = parser.parse_args()
    model = str(DEFAULT_MODEL) if DEFAULT_MODEL.is_file() else None
    photos = [sample_jpeg() for _ in range(args.photos)]
    a, b = [], []
    for _ in range(args.runs):
        a.append(asyncio.run(threads(photos, args.workers, model)))
        b.append(asyncio.run(processes(photos, args.workers, model)))
    ta, tb = statistics.median(a), statistics.median(b)
    print(f"{args.photos} x 12 MP JPEG, {args.workers} workers, {args.runs} runs, cpus={os.cpu_count()}")
    print(f"in-thread pipeline   {ta:6.2f} photos/s (median)")
    print(f"decoder processes    {tb:6.2f} photos/s (median)")
    print(f"ratio processes/threads {tb / ta:.2f}")


if __name__ == "__main__":
    main()
