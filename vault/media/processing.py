"""Runs the CPU-bound photo pipeline off the event loop.

A thread pool, not a process pool: Pillow's decoders, OpenCV and AES release the
GIL, and a process pool would copy every 12 MP photo (and its renditions) across a
pipe twice. Measured in bench/bench_ingest.py. Each thread loads its own face
detector once (OpenCV detectors are not shared between threads).
"""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from vault.pipeline.faces import FaceDetector, load_detector
from vault.pipeline.photo import ProcessedPhoto, process_photo


class PhotoPipeline:
    def __init__(self, *, max_pixels: int, face_model: str | None, workers: int | None = None) -> None:
        self.max_pixels = max_pixels
        self.face_model = face_model
        self.workers = workers or max(2, os.cpu_count() or 2)
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="photo")
        self._local = threading.local()

    def _detector(self) -> FaceDetector:
        detector = getattr(self._local, "detector", None)
        if detector is None:
            detector = self._local.detector = load_detector(self.face_model)
        return detector

    def _run(self, data: bytes) -> ProcessedPhoto:
        return process_photo(data, max_pixels=self.max_pixels, detector=self._detector())

    async def process(self, data: bytes) -> ProcessedPhoto:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._run, data)

    def detector_name(self) -> str:
        return self._pool.submit(lambda: self._detector().name).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
