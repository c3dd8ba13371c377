"""The full-resolution face search (issue 13, item 1): cost, recall, false positives, ingest.

    .venv/bin/python bench/bench_faces.py [--runs 3] [--photos 6] [--skip-ingest]

1. CPU time of ``search_photo`` (decode at full size + search) on 12 MP and 48 MP JPEGs
   against one plain full decode of the same file (Pillow ``load``): medians, ratio.
2. Recall on generated 3000x2000 photos per face height (tests/pipeline/face_scenes.py:
   12 faces a photo, half upright, half turned 90/180/270), for the detector set and for
   each family alone (YuNet, dlib HOG) -- what each adds.
3. False positives: share of face-free photos (generated textures + scikit-image's
   face-free samples) with any box, and boxes per photo.
4. Ingest through a DecoderPool of ``--workers`` processes: photos accepted per second
   (the upload's own pipeline, as before this issue) and photos fully processed per second
   (upload pipeline + the full search job's worker item), same photos, same run.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from tests.pipeline import face_scenes as fs  # noqa: E402
from vault.media.decoders import DecoderPool, PoolLimits  # noqa: E402
from vault.media.processing import PhotoPipeline  # noqa: E402
from vault.pipeline.faces_search import load_search, search_photo  # noqa: E402

DEFAULT_MODEL = str(ROOT.parent / "shared" / "models" / "face_detection_yunet.onnx")
MAX_PIXELS = 100_000_000
MEMORY = 2 << 30


def cpu(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def cost(search, runs: int) -> None:
    print("\n## 1. CPU time: full search vs one plain full decode (medians)")
    print("| photo | decode s | search s (incl. its decode) | ratio |")
    print("|---|---|---|---|")
    for label, size, n in (("12 MP", fs.MP12, runs), ("48 MP", fs.MP48, max(1, runs - 1))):
        data = fs.jpeg(fs.sized_scene(size, (40, 80), seed=1).rgb, quality=88)
        decode = statistics.median(cpu(lambda: Image.open(io.BytesIO(data)).load()) for _ in range(5))
        search_s = statistics.median(
            cpu(lambda: search_photo(data, search, max_pixels=MAX_PIXELS, memory_bytes=MEMORY, seconds=600))
            for _ in range(n))
        print(f"| {label} | {decode:.3f} | {search_s:.2f} | {search_s / decode:.0f}x |")


def recall(search) -> None:
    print("\n## 2. Recall per face height (3000x2000 photos, 12 faces each: 6 upright, 6 turned)")
    families = {"set": ("primary", "secondary"), "yunet": ("primary",), "dlib-hog": ("secondary",)}
    print("| face px | " + " | ".join(f"{k} upright | {k} turned" for k in families) + " |")
    print("|---|" + "---|---|" * len(families))
    sources = fs.sources()
    for height in (20, 24, 32, 40, 60, 80, 160):
        scene = fs.Scene(fs.background(3000, 2000, seed=height))
        turned = []
        for i in range(12):
            rotation = 0 if i < 6 else 1 + i % 3
            x, y = 250 + (i % 6) * 480, 450 if i < 6 else 1350
            fs.place(scene, sources["astronaut" if i % 2 else "camera"], height=height, at=(x, y), rotation=rotation)
            turned.append(rotation != 0)
        row = []
        for names in families.values():
            boxes = search.search(scene.rgb, seconds=600, families=names).boxes
            hit = [fs.coverage(face, boxes) >= 0.9 for face in scene.faces]
            up = sum(h for h, t in zip(hit, turned) if not t)
            tu = sum(h for h, t in zip(hit, turned) if t)
            row += [f"{up}/6", f"{tu}/6"]
        print(f"| {height} | " + " | ".join(row) + " |")


def false_positives(search) -> None:
    import skimage.data

    photos = [fs.face_free((3000, 2000), seed=100 + i) for i in range(4)]
    for name in ("chelsea", "coffee", "rocket", "brick", "grass", "gravel", "coins", "hubble_deep_field", "moon",
                 "horse", "page", "text", "clock", "logo", "cell", "immunohistochemistry", "retina"):
        image = np.asarray(getattr(skimage.data, name)())
        if image.dtype == bool:
            image = image.astype(np.uint8) * 255
        photos.append(np.asarray(Image.fromarray(image).convert("RGB")))
    counts = [len(search.search(np.ascontiguousarray(p), seconds=600).boxes) for p in photos]
    flagged = sum(1 for c in counts if c)
    print(f"\n## 3. False positives: {flagged}/{len(photos)} face-free photos got a box "
          f"({sum(counts)} boxes; generated 6 MP textures: {counts[:4]}, scikit-image samples: {counts[4:]})")


async def ingest(photos: list[bytes], workers: int, model: str) -> None:
    limits = PoolLimits(workers=workers, item_seconds=600, video_seconds=600, memory_bytes=4 << 30,
                        recycle_after=10_000, queue_seconds=600, max_queue=1000)
    pipeline = PhotoPipeline(DecoderPool(limits, face_model=model), max_pixels=MAX_PIXELS)
    pipeline.start()
    try:
        await asyncio.gather(*(pipeline.process(photos[0]) for _ in range(workers)))  # warm
        # before: an upload was the whole processing (quick 640 px search only)
        start = time.perf_counter()
        await asyncio.gather(*(pipeline.process(p) for p in photos))
        before = len(photos) / (time.perf_counter() - start)

        # after: each accepted upload starts its full search (the job) at once, as a
        # worker node would; uploads keep arriving meanwhile
        searches: list[asyncio.Task] = []
        start = time.perf_counter()

        async def upload(data: bytes) -> None:
            photo = await pipeline.process(data)
            searches.append(asyncio.create_task(
                pipeline.search_faces(photo.stripped, width=photo.width, height=photo.height)))

        await asyncio.gather(*(upload(p) for p in photos))
        accepted = len(photos) / (time.perf_counter() - start)
        await asyncio.gather(*searches)
        processed = len(photos) / (time.perf_counter() - start)
    finally:
        await pipeline.close()
    print(f"\n## 4. Ingest, {len(photos)} 12 MP JPEGs, {workers} decoder workers (wall clock: a shared, busy host)")
    print("| | photos/s |")
    print("|---|---|")
    print(f"| before: accepted = fully processed (640 px search only) | {before:.2f} |")
    print(f"| after: accepted (the upload answers; searches running meanwhile) | {accepted:.2f} ({accepted / before:.2f}x) |")
    print(f"| after: fully processed (upload + full search) | {processed:.2f} ({processed / before:.2f}x) |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--photos", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--skip-ingest", action="store_true")
    args = parser.parse_args()
    search = load_search(args.model)
    print(f"detector set: {search.version}")
    cost(search, args.runs)
    recall(search)
    false_positives(search)
    if not args.skip_ingest:
        photos = [fs.jpeg(fs.sized_scene(fs.MP12, (40, 80), seed=200 + i).rgb) for i in range(args.photos)]
        asyncio.run(ingest(photos, args.workers, args.model))


if __name__ == "__main__":
    main()
