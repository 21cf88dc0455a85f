"""How the built-in model draws a described cast in one shot, under regional-prompt settings.

Every shot of the held-out cast stories that describes two or more characters becomes a story of its
own (no memory: what the text alone draws), generated under each setting and read by the shipped
probes: adherence (attributes drawn as described) and presence (as many characters as described), by
cast size. A quick CPU check of a prompt-side change before a full ablation.
  python tools/regional_prompts_probe.py OUT --shots 20 --variants off hard bias4 [--shard K/N]
"""

from __future__ import annotations

import argparse
import copy
import json
from collections import defaultdict

from filmweaver.synth.evaluate import EVAL_FIRST_SEED, eval_cast_stories, run_arm

VARIANTS = {
    "off": {"regional_prompts": False},
    "hard": {"regional_prompts": True},
    "bias4": {"regional_prompts": True, "regional_strength": 4.0},
    "bias2": {"regional_prompts": True, "regional_strength": 2.0},
}


def described_shots(num: int, stories: int = 200) -> list[dict]:
    """One-shot stories: held-out shots whose prompt describes all of their two or more characters,
    ``num`` of each cast size (2 and 3)."""
    out = []
    for story in eval_cast_stories(stories, EVAL_FIRST_SEED):
        gt, k = story["ground_truth"], 0
        for scene in story["scenes"]:
            for j, prompt in enumerate(scene["video_prompts"]):
                shot = scene["shots"][j]
                chars = shot.get("characters", [])
                if len(chars) >= 2 and all(f"{c}, a " in prompt for c in chars):
                    one = {**story, "story_name": f"{story['story_name']}-shot{k}",
                           "scenes": [{**{key: [v[j]] for key, v in scene.items() if isinstance(v, list)},
                                       "scene_num": 1}],
                           "ground_truth": {**copy.deepcopy(gt), "shots": [gt["shots"][k]]}}
                    out.append(one)
                k += 1
    by_size = defaultdict(list)
    for one in out:
        by_size[len(one["scenes"][0]["shots"][0]["characters"])].append(one)
    return [one for size in sorted(by_size) for one in by_size[size][:num]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--model", default="src/filmweaver/weights/synth-small")
    ap.add_argument("--shots", type=int, default=20, help="shots of each cast size")
    ap.add_argument("--variants", nargs="+", default=["off", "hard"])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    stories = described_shots(args.shots)
    rows = {}
    for v in args.variants:
        res = run_arm(v, args.model, VARIANTS[v], stories, args.out, f"{args.model}/probe", args.device, progress=False)
        by = defaultdict(lambda: [0, 0, 0, 0])
        for r in res["records"]:
            for c in r["cast"]:
                b = by[c["cast_size"]]
                b[0] += sum(c["match"].values())
                b[1] += len(c["match"])
            if r["cast"]:
                b = by[r["cast"][0]["cast_size"]]
                b[2] += all(c["present"] for c in r["cast"])
                b[3] += 1
        rows[v] = {n: {"adherence": a / t, "presence": p / s, "shots": s} for n, (a, t, p, s) in sorted(by.items())}
        print(v, json.dumps(rows[v]), flush=True)


if __name__ == "__main__":
    main()
