"""Inference settings of a synthetic-world model on the 16 tuning stories (seeds 2,000,000+, disjoint
from the reported evaluation's 1,000,000+), one summary line each (reports/synth-small/guidance_tuning.md).

    python tools/synth_tune.py OUT NAME 'JSON engine overrides' [NAME 'JSON' ...] [--model DIR] [--stories N]

Each arm is one :func:`filmweaver.synth.evaluate.run_arm`; its summary is appended to OUT/tuning.jsonl
as soon as the arm ends (a run cut short keeps the arms already done; arms already in the file are
skipped on a rerun).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from filmweaver.models import BUILTIN_MODEL_DIR
from filmweaver.synth.evaluate import eval_stories, run_arm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("arms", nargs="+", help="NAME 'JSON overrides' pairs")
    ap.add_argument("--model", default=str(BUILTIN_MODEL_DIR))
    ap.add_argument("--stories", type=int, default=16)
    ap.add_argument("--first-seed", type=int, default=2_000_000)
    args = ap.parse_args()
    if len(args.arms) % 2:
        ap.error("arms come in NAME 'JSON' pairs")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "tuning.jsonl"
    done = {json.loads(line)["arm"] for line in log.read_text().splitlines()} if log.is_file() else set()
    stories = eval_stories(args.stories, first_seed=args.first_seed)
    for name, overrides in zip(args.arms[::2], args.arms[1::2], strict=True):
        if name in done:
            continue
        t = time.time()
        res = run_arm(name, args.model, json.loads(overrides), stories, out / "projects", Path(args.model) / "probe",
                      progress=False)
        s = res["summary"]
        with open(log, "a") as f:
            f.write(json.dumps({"arm": name, "overrides": json.loads(overrides), "model": args.model,
                                "stories": args.stories, "wall_s": round(time.time() - t), **s}) + "\n")
        print(f"{name}: identity {s['identity']:.3f} location {s['location']:.3f} adherence {s['adherence']:.3f} "
              f"seam {s['seam_ratio']:.2f} ({time.time() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
