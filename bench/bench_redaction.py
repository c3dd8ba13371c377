"""Approval-time rendering of a de-identified rendition, against a baseline measured in
the same run.

    .venv/bin/python bench/bench_redaction.py [--rounds 7]

- render: :func:`vault.pipeline.redact.render_redaction` of a 12 MP camera-like JPEG with
  three rectangles — full-resolution decode, orientation, fill, quality-92 encode, and the
  256 px thumbnail made from the redacted pixels — what approval (or the first use under
  ``auto``) costs once per digest;
- baseline: a plain Pillow decode and quality-92 re-encode of the same JPEG;
- per-request (what is no longer done): a 256 px thumbnail rendered with its box filled
  (:func:`render_redaction` of the stored 256 px thumbnail; the per-request
  ``redact_faces`` it stood for is gone) vs reading the stored thumbnail (a copy of its
  bytes), for scale.
Medians of the rounds (process CPU time); ratios > 1 mean slower than the baseline.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from PIL import Image  # noqa: E402

from bench_pipeline import sample_jpeg  # noqa: E402
from vault.pipeline.redact import RENDER_QUALITY, render_redaction  # noqa: E402
from vault.pipeline.resize import fit  # noqa: E402
from vault.pipeline.thumbnails import encode_jpeg  # noqa: E402

RECTS = [[1200, 800, 420, 520], [2600, 900, 380, 470], [300, 2400, 200, 120]]


def cpu_median(action: Callable[[], object], rounds: int) -> float:
    action()
    times = []
    for _ in range(rounds):
        t0 = time.process_time()
        action()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def plain(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        out = io.BytesIO()
        image.save(out, "JPEG", quality=RENDER_QUALITY)
        return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    photo = sample_jpeg()
    baseline = cpu_median(lambda: plain(photo), args.rounds)
    render = cpu_median(lambda: render_redaction(photo, RECTS, thumbnail_sizes=(256,)), args.rounds)
    with Image.open(io.BytesIO(photo)) as image:
        image.load()
        thumb = encode_jpeg(fit(image.convert("RGB"), 256), icc=None)
    per_request = cpu_median(lambda: render_redaction(thumb, [[66, 38, 49, 59]]), args.rounds * 20)
    stored = cpu_median(lambda: bytes(bytearray(thumb)), args.rounds * 20)
    print(f"12 MP photo ({len(photo) / 1e6:.1f} MB), {args.rounds} rounds, process CPU medians")
    print(f"plain decode + q{RENDER_QUALITY} encode (baseline)   {baseline * 1000:8.1f} ms")
    print(f"render_redaction (fill + encode + 256 px thumb)  {render * 1000:8.1f} ms  ratio {render / baseline:.2f}x")
    print(f"per-request thumbnail redaction (before)         {per_request * 1000:8.2f} ms")
    print(f"stored thumbnail, bytes copied (now; + decrypt)  {stored * 1000:8.3f} ms")


if __name__ == "__main__":
    main()
