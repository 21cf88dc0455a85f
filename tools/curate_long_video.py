"""Peak memory of shot detection against video length (BENCHMARKS.md, "Curation"): a synthetic film
looped into videos of several lengths, each detected in a fresh process; its peak RSS is reported.

    python tools/curate_long_video.py FILM.mp4 OUT_DIR --minutes 2 8 32 [--detector transnetv2]
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from filmweaver.curate.video import FrameStream, probe_video
from filmweaver.io import VideoWriter

DETECT = """
import json, sys, time
from filmweaver.curate.config import ShotDetection
from filmweaver.curate.shots import make_shot_detector
t = time.perf_counter()
spans, info = make_shot_detector(ShotDetection(detector=sys.argv[2])).detect(sys.argv[1])
print(json.dumps({"shots": len(spans), "frames": info["frames_decoded"], "seconds": time.perf_counter() - t}))
"""


def looped(film: Path, out: Path, minutes: float) -> Path:
    fps = probe_video(film).fps
    frames = list(FrameStream(film))
    need = int(minutes * 60 * fps)
    with VideoWriter(out, fps) as w:
        for k in range(need):
            w.write(frames[k % len(frames)])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("film")
    ap.add_argument("out")
    ap.add_argument("--minutes", type=float, nargs="+", default=[2, 8, 32])
    ap.add_argument("--detector", default="transnetv2")
    args = ap.parse_args()
    rows = []
    for m in args.minutes:
        video = looped(Path(args.film), Path(args.out) / f"long-{m:g}min.mp4", m)
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", DETECT, str(video), args.detector], capture_output=True, text=True,
                             check=True)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        rows.append({"minutes": m, "detector": args.detector, **json.loads(res.stdout.strip().splitlines()[-1]),
                     "peak_rss_mib": round(max(peak, before) / 1024, 1), "wall_s": round(time.perf_counter() - t, 1)})
        print(json.dumps(rows[-1]), flush=True)
        video.unlink()
    (Path(args.out) / "long_video.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
