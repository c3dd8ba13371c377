"""DICOM export (issue 19 item 4) against a plain read of the same photo, in the same run.

    sudo .venv/bin/python bench/bench_dicom.py [--width 4000 --height 3000] [--rounds 5]

Needs root (Orthanc runs in a network namespace with only ``lo``, as in tests/dicom).
In-process app on SQLite (fresh temp folder) and a real Orthanc with DICOMweb. For a
baseline JPEG and for a PNG of the same pixels: baseline ``GET /v1/media/{id}/content``
(decrypt and send the stored original); measured: one export, ``POST .../dicom-exports``
then the job's work (:meth:`DicomExports.send`: decrypt, build the file in a decoder
worker, STOW-RS to Orthanc, commit). Medians; ratio = export / read. Also the sizes of
what would be sent for the converted PNG: uncompressed (what the vault sends), deflated
(Deflated Explicit VR Little Endian) and RLE Lossless (pydicom's own encoder).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import tempfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from _seed import amedian  # noqa: E402


def photo(width: int, height: int) -> Image.Image:
    """A smooth scene with noise, roughly as compressible as a skin photo."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(7)
    base = np.stack([128 + 80 * np.sin(x / 300), 110 + 60 * np.cos(y / 250), 100 + 50 * np.sin((x + y) / 400)], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8))


async def main(width: int, height: int, rounds: int) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from keys.migrate import upgrade as upgrade_keys
    from tests.dicom.orthanc import Orthanc, missing_tools
    from vault.app import create_app
    from vault.appkeys import RUNTIME
    from vault.config import Settings
    from vault.migrate import upgrade

    why = missing_tools()
    if why:
        sys.exit(f"bench_dicom: {why}")
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder)
        pacs = Orthanc(data / "orthanc")
        pacs.folder.mkdir()
        pacs.start()
        try:
            settings = Settings(data_dir=data, database_url=f"sqlite+aiosqlite:///{data / 'vault.sqlite3'}",
                                keystore_url=f"sqlite+aiosqlite:///{data / 'keys.sqlite3'}",
                                storage_url=(data / "blobs").as_uri(), root_key_url=(data / "root.key").as_uri(),
                                inprocess_jobs=False, dicomweb_url=pacs.dicomweb_url, dicomweb_username="vault",
                                dicomweb_password=pacs.password, dicomweb_allow_http_loopback=True)
            await asyncio.to_thread(upgrade, settings.database_url)
            await upgrade_keys(settings.keystore_url)
            async with TestClient(TestServer(create_app(settings))) as client:
                runtime = client.server.app[RUNTIME]
                await runtime.tenants.create_tenant("bench", request_id="bench")
                token = (await runtime.tenants.create_token("bench", "practitioner", label="bench", request_id="b")).token
                auth = {"Authorization": f"Bearer {token}"}
                resp = await client.post("/v1/patients", json={"external_ref": "H0001", "display_name": "Bench Patient"},
                                         headers=auth)
                pid = (await resp.json())["id"]
                image = photo(width, height)
                sources = {}
                for fmt, mime in (("JPEG", "image/jpeg"), ("PNG", "image/png")):
                    buffer = io.BytesIO()
                    image.save(buffer, fmt, **({"quality": 92} if fmt == "JPEG" else {"compress_level": 6}))
                    resp = await client.post(f"/v1/patients/{pid}/media?phase=before", data=buffer.getvalue(),
                                             headers={**auth, "Content-Type": mime})
                    assert resp.status == 201, await resp.text()
                    sources[fmt] = ((await resp.json())["id"], len(buffer.getvalue()))

                async def noop(session) -> None:
                    return None

                rows = []
                for fmt, (media_id, size) in sources.items():
                    async def read() -> None:
                        r = await client.get(f"/v1/media/{media_id}/content", headers=auth)
                        assert r.status == 200
                        await r.read()

                    sent: dict = {}

                    async def export() -> None:
                        r = await client.post(f"/v1/media/{media_id}/dicom-exports", headers=auth)
                        assert r.status == 202, await r.text()
                        export_id = (await r.json())["id"]
                        await runtime.dicom.send(export_id, job_id="bench", finish=noop)
                        r = await client.get(f"/v1/dicom-exports/{export_id}", headers=auth)
                        sent.update(await r.json())
                        assert sent["status"] == "sent", sent

                    read_s = await amedian(read, rounds)
                    export_s = await amedian(export, rounds)
                    rows.append((fmt, size, sent["size_bytes"], sent["transfer_syntax"], read_s, export_s))

                raw = image.tobytes()
                sizes = {"uncompressed (sent)": len(raw), "deflated": len(zlib.compress(raw, 6)), "RLE Lossless": _rle(image)}
        finally:
            pacs.close()
    print(f"{width}x{height} photo, {rounds} rounds, load average {os.getloadavg()[0]:.1f}")
    print("| source | stored | DICOM sent | transfer syntax | read (baseline) | export | ratio |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for fmt, size, dicom, ts, read_s, export_s in rows:
        print(f"| {fmt} | {size / 1e6:.2f} MB | {dicom / 1e6:.2f} MB | {ts} | {read_s * 1000:.0f} ms | "
              f"{export_s * 1000:.0f} ms | {export_s / read_s:.1f}x |")
    print("\n| pixel data of the converted photo | size | vs uncompressed |")
    print("|---|---:|---:|")
    for name, value in sizes.items():
        print(f"| {name} | {value / 1e6:.2f} MB | {value / sizes['uncompressed (sent)']:.2f} |")


def _rle(image: Image.Image) -> int:
    from pydicom.dataset import Dataset
    from pydicom.uid import RLELossless

    ds = Dataset()
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = image.height, image.width, 3, "RGB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.PlanarConfiguration = 8, 8, 7, 0, 0
    ds.NumberOfFrames = 1
    ds.compress(RLELossless, np.asarray(image), encoding_plugin="pydicom")
    return len(ds.PixelData)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.width, args.height, args.rounds))
