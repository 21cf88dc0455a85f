"""Curation through Ray Data with 1 and 2 workers, and the local process pool, on the same films
(BENCHMARKS.md, "Curation"): seconds per hour of video.

    python tools/curate_ray_bench.py OUT FILM.mp4 FILM.mp4 ...
"""

import json
import sys
import time
from pathlib import Path

from filmweaver.curate import CurateConfig, curate
from filmweaver.curate.video import probe_video
from filmweaver.synth.curate_eval import SYNTH_CURATION


def main() -> None:
    out, films = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
    hours = sum(probe_video(f).duration_s or 0 for f in films) / 3600
    rows = []
    for label, workers, ray in (("process pool, 1", 1, None), ("process pool, 2", 2, None),
                                ("Ray Data, 1 worker", 1, "local"), ("Ray Data, 2 workers", 2, "local")):
        cfg = CurateConfig.model_validate({**SYNTH_CURATION, "workers": workers})
        t = time.perf_counter()
        records = curate(films, out / label.replace(" ", "_").replace(",", ""), cfg, force=True, progress=False,
                         ray_address=ray)
        seconds = time.perf_counter() - t
        rows.append({"run": label, "seconds": round(seconds, 1), "seconds_per_video_hour": round(seconds / hours, 1),
                     "samples": sum(len(r["samples"]) for r in records)})
        print(json.dumps(rows[-1]), flush=True)
    (out / "ray_bench.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
