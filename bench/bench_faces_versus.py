"""The face search now against the search at an earlier commit, in the same run (CPU time,
12 MP JPEG, both against one plain full decode of the same file):

    .venv/bin/python bench/bench_faces_versus.py [--rev 3420d5d~1] [--runs 2]

The earlier ``vault/pipeline/faces_search.py`` is read with ``git show REV:path`` and
loaded as a module of its own (it shares the rest of the package with the current code).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from tests.pipeline import face_scenes as fs  # noqa: E402
from vault.pipeline import faces_search as current  # noqa: E402

MODEL = str(ROOT.parent / "shared" / "models" / "face_detection_yunet.onnx")


def earlier(rev: str):  # noqa: ANN201 - a module
    source = subprocess.run(["git", "show", f"{rev}:vault/pipeline/faces_search.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader("faces_search_earlier", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, f"{rev}:faces_search.py", "exec"), module.__dict__)  # noqa: S102 - our own history
    return module


def cpu(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rev", default="3420d5d~1")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--model", default=MODEL)
    args = parser.parse_args()
    modules = {"before": earlier(args.rev), "now": current}
    searches = {k: m.load_search(args.model) for k, m in modules.items()}
    data = fs.jpeg(fs.sized_scene(fs.MP12, (40, 80), seed=1).rgb, quality=88)
    times: dict[str, list[float]] = {"decode": [], "before": [], "now": []}
    for _ in range(args.runs):  # interleaved, so a change of load hits both alike
        times["decode"] += [cpu(lambda: Image.open(io.BytesIO(data)).load()) for _ in range(3)]
        for key, module in modules.items():
            times[key].append(cpu(lambda: module.search_photo(data, searches[key], max_pixels=100_000_000,
                                                              memory_bytes=2 << 30, seconds=900)))
    decode = statistics.median(times["decode"])
    print(f"12 MP JPEG, plain full decode {decode:.3f} s (median of {len(times['decode'])})")
    for key in ("before", "now"):
        median = statistics.median(times[key])
        print(f"{key:6} ({args.rev if key == 'before' else 'working tree'}): {median:.2f} s CPU = {median / decode:.0f}x the decode; "
              f"runs {[round(t, 2) for t in times[key]]}")
    print(f"now / before: {statistics.median(times['now']) / statistics.median(times['before']):.2f}")


if __name__ == "__main__":
    main()
