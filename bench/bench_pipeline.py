"""Photo pipeline CPU cost against one plain full Pillow decode of the same 12 MP JPEG.

    .venv/bin/python bench/bench_pipeline.py [--runs 7] [--face-model PATH]

Measures median CPU time (``time.process_time``: every thread of this process, so
OpenCV's worker threads count) of: a plain full decode (the baseline), sanitize only,
decode + thumbnails, face detection on the decoded image, and the whole ``process_photo``
with each detector. Prints ratios to the baseline; the aim is process_photo <= 1.5.
"""

from __future__ import annotations

import argparse
import functools
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from vault.pipeline import (  # noqa: E402
    SlimefaceDetector,
    YuNetOnnxDetector,
    detect_faces,
    process_photo,
    strip_metadata,
)
from vault.pipeline.thumbnails import decode, make_thumbnails  # noqa: E402

DEFAULT_MODEL = ROOT.parent / "shared" / "models" / "face_detection_yunet.onnx"
MAX_PIXELS = 50_000_000


@functools.cache
def sample_jpeg(width: int = 4000, height: int = 3000) -> bytes:
    """A 12 MP camera-like JPEG: gradient, soft shapes, sensor-like noise, quality 90,
    with EXIF (camera, dates, GPS) and an XMP packet. Made once per size (seeded, so the
    same bytes every time): it takes seconds, and benches ask for it more than once."""
    rng = np.random.default_rng(2026)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x / width * 200 + 30, y / height * 180 + 40, (x + y) / (width + height) * 160 + 50], axis=-1)
    for _ in range(12):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(150, 700)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))[..., None]
        rgb += blob * rng.uniform(-90, 90, 3)
    rgb += rng.normal(0, 9, rgb.shape)  # sensor-like noise: ~4 MB at q90, like a phone photo
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "BenchCam", "Model 12", 1
    exif.get_ifd(0x8769)[0x9003] = "2026:11:22 10:00:00"
    exif.get_ifd(0x8825).update({1: "N", 2: (53.0, 47.0, 12.0), 3: "W", 4: (1.0, 32.0, 5.0)})
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:creator>Bench</dc:creator>'
           b'</rdf:Description></rdf:RDF></x:xmpmeta>')
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, exif=exif.tobytes(), xmp=xmp)
    return out.getvalue()


def cpu_median(action: Callable[[], object], runs: int) -> float:
    action()  # warm caches and lazy initialisation outside the measurement
    times = []
    for _ in range(runs):
        start = time.process_time()
        action()
        times.append(time.process_time() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--face-model", default=str(DEFAULT_MODEL))
    args = parser.parse_args()

    data = sample_jpeg()
    print(f"sample: 4000x3000 JPEG q90, {len(data) / 1e6:.1f} MB; {args.runs} runs each, median CPU time")
    detectors = [SlimefaceDetector()]
    if Path(args.face_model).is_file():
        detectors.insert(0, YuNetOnnxDetector(args.face_model))
    decoded = decode(data, mime="image/jpeg", max_pixels=MAX_PIXELS)

    def full_decode() -> None:
        Image.open(io.BytesIO(data)).load()

    rows: list[tuple[str, float]] = [
        ("plain full Pillow decode (baseline)", cpu_median(full_decode, args.runs)),
        ("sanitize only", cpu_median(lambda: strip_metadata("image/jpeg", data), args.runs)),
        ("decode (DCT-scaled) + thumbnails 1024/256",
         cpu_median(lambda: make_thumbnails(decode(data, mime="image/jpeg", max_pixels=MAX_PIXELS)), args.runs)),
    ]
    for detector in detectors:
        rows.append((f"face detection at 640 px ({detector.name})",
                     cpu_median(lambda d=detector: detect_faces(decoded.image, full_size=decoded.size, detector=d),
                                args.runs)))
    for detector in detectors:
        rows.append((f"process_photo, whole ({detector.name})",
                     cpu_median(lambda d=detector: process_photo(data, max_pixels=MAX_PIXELS, detector=d), args.runs)))

    baseline = rows[0][1]
    width = max(len(name) for name, _ in rows)
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds * 1000:8.1f} ms  {seconds / baseline:5.2f}x")
    worst = max(seconds for name, seconds in rows if name.startswith("process_photo"))
    print(f"process_photo / full decode: {worst / baseline:.2f} (aim <= 1.5)")


if __name__ == "__main__":
    main()
