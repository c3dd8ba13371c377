"""Redaction-review tests reuse the consent tests' API helpers and samples."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from tests.consent.conftest import Api, api, exiftool, face_jpeg, other_api, plain_jpeg  # noqa: F401  (shared fixtures)


def pixels(data: bytes, *, upright: bool = False) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        shown = ImageOps.exif_transpose(image) if upright else image
        return np.asarray(shown.convert("RGB"), dtype=np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
