"""The curation pipeline against synthetic feature films' ground truth (BENCHMARKS.md, "Curation").

``python -m filmweaver.synth.curate_eval OUT --films 3`` renders the films (seeds 5,000,000...), then:

* shot boundaries of TransNetV2 and PySceneDetect: precision, recall, F1 within ``--tolerance`` frames;
* scene grouping of ``filmweaver curate`` (TransNetV2 shots, the probe embedder): adjusted Rand index
  of each detected shot's scene against the true scene of its middle frame;
* captions of the probe captioner against the truth: each attribute of the character and the
  location; and, captioned as a group and per shot, the share of true scenes whose kept shots give the
  character one description;
* seconds of curation per hour of video, at the films' size and (``--throughput-480p``) upscaled to 854x480.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from filmweaver.curate import CurateConfig, curate
from filmweaver.curate.shots import SceneDetectDetector, TransNetV2Detector, boundaries
from filmweaver.eval.metrics import adjusted_rand_index, boundary_f1
from filmweaver.io import VideoWriter, write_json
from filmweaver.synth.captioner import caption_words, states
from filmweaver.synth.feature_film import write_film
from filmweaver.synth.world import ALL_ATTRIBUTES, CHARACTER_ATTRIBUTES, LOCATION_ATTRIBUTES

# shot-detector thresholds tuned on three development films (seeds 0-2; held-out films start at 5,000,000):
# TransNetV2's transition probability is near 0 away from cuts, and cuts between two shots of one flat
# synthetic place reach only 0.1-0.5
TUNED = {"transnetv2": {"threshold": 0.05},
         "pyscenedetect": {"adaptive_threshold": 2.0, "min_shot_frames": 6, "edge_weight": 1.0}}
SYNTH_CURATION = {"captions": {"captioner": "filmweaver.synth.captioner:probe_captioner"},
                  "shots": {"threshold": TUNED["transnetv2"]["threshold"]},
                  "filters": {"people_detector": "none"},
                  # the middle of the similarities (0.62-0.70) that grouped the development films' scenes exactly
                  "scenes": {"embedder": "filmweaver.synth.captioner:probe_embedder", "similarity": 0.66}}
def caption_matches(caption: str, spec: dict) -> dict[str, bool]:
    """Which of the shot's true attributes its caption states (the world's grammar)."""
    words, truth = caption_words(caption), {**spec["character"], **spec["location"]}
    return {k: states(words, k, truth[k]) for k in ALL_ATTRIBUTES}


def _truth_shot(truth: dict, s: dict) -> dict | None:
    mid = (s["start"] + s["end"]) // 2
    return next((t for t in truth["shots"] if t["start"] <= mid < t["end"]), None)


def detector_scores(films: list[tuple[Path, dict]], tolerance: float, device: str = "cpu") -> dict:
    """Each detector at its defaults and at the thresholds tuned on the development films (TransNetV2 on
    ``device``; PySceneDetect runs on the CPU)."""
    out = {}
    for label, detector in (("transnetv2 (threshold 0.5)", TransNetV2Detector(device=device)),
                            ("transnetv2 (tuned)", TransNetV2Detector(device=device, **TUNED["transnetv2"])),
                            ("pyscenedetect (defaults)", SceneDetectDetector()),
                            ("pyscenedetect (tuned)", SceneDetectDetector(**TUNED["pyscenedetect"]))):
        m = p = t = 0
        t0 = time.perf_counter()
        for path, truth in films:
            spans, _ = detector.detect(path)
            r = boundary_f1(boundaries(spans), truth["boundaries"], tolerance)
            m, p, t = m + r["matched"], p + r["predicted"], t + r["true"]
        seconds = time.perf_counter() - t0
        video_s = sum(tr["frames"] / tr["fps"] for _, tr in films)
        out[label] = {"precision": m / p, "recall": m / t, "f1": 2 * m / (p + t), "boundaries": t,
                              "seconds_per_video_hour": round(seconds / video_s * 3600, 1)}
    return out


def curation_scores(films: list[tuple[Path, dict]], out: Path, group: bool, device: str = "cpu") -> dict:
    cfg = CurateConfig.model_validate({**SYNTH_CURATION, "captions": {**SYNTH_CURATION["captions"], "group": group},
                                       "device": device})
    t0 = time.perf_counter()
    records = curate([p for p, _ in films], out, cfg, force=True, progress=False)
    seconds = time.perf_counter() - t0
    pred, true, matches, consistent, scenes = [], [], [], 0, 0
    for rec, (_, truth) in zip(records, films, strict=True):
        by_scene: dict[int, set[str]] = {}
        for s in rec["shots"]:
            t = _truth_shot(truth, s)
            if t is None:
                continue
            if s["scene"] is not None:
                pred.append((rec["stem"], s["scene"]))
                true.append((rec["stem"], t["scene"]))
            if s.get("caption"):
                matches.append(caption_matches(s["caption"], t["spec"]))
                by_scene.setdefault(t["scene"], set()).add(s["caption"].split(" in a ")[0])
        scenes += len(by_scene)
        consistent += sum(len(v) == 1 for v in by_scene.values())
    attrs = [*CHARACTER_ATTRIBUTES, *LOCATION_ATTRIBUTES]
    video_s = sum(tr["frames"] / tr["fps"] for _, tr in films)
    return {"group": group, "ari": adjusted_rand_index(pred, true), "shots_in_scenes": len(pred),
            "captions": len(matches),
            "caption_accuracy": {a: float(np.mean([m[a] for m in matches])) for a in attrs} if matches else {},
            "caption_all_correct": float(np.mean([all(m.values()) for m in matches])) if matches else None,
            "scenes_with_one_description": consistent / scenes if scenes else None, "scenes": scenes,
            "samples": sum(len(r["samples"]) for r in records),
            "seconds_per_video_hour": round(seconds / video_s * 3600, 1)}


def upscaled(path: Path, out: Path, size=(854, 480)) -> Path:
    """A copy of a film at 854x480 (what the throughput of 480p video is measured on)."""
    from filmweaver.curate.video import FrameStream, probe_video

    fps = probe_video(path).fps
    with VideoWriter(out, fps) as w:
        for frame in FrameStream(path, size=size):
            w.write(frame)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m filmweaver.synth.curate_eval")
    ap.add_argument("out")
    ap.add_argument("--films", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=5_000_000)
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--tolerance", type=float, default=2.0)
    ap.add_argument("--throughput-480p", action="store_true")
    ap.add_argument("--device", default="cpu", help="cuda: TransNetV2, the embedder and the captioner on the GPU")
    args = ap.parse_args(argv)
    out = Path(args.out)
    films = []
    for k in range(args.films):
        path = out / "films" / f"film-{args.first_seed + k}.mp4"
        truth = write_film(path, args.first_seed + k, args.scenes)
        films.append((path, truth))
    report = {"films": args.films, "first_seed": args.first_seed, "frames": sum(t["frames"] for _, t in films),
              "tolerance_frames": args.tolerance, "device": args.device,
              "detectors": detector_scores(films, args.tolerance, args.device),
              "curation_group": curation_scores(films, out / "dataset-group", True, args.device),
              "curation_per_shot": curation_scores(films, out / "dataset-per-shot", False, args.device)}
    write_json(out / "curate_eval.json", report)  # the 480p timings below take longest
    if args.throughput_480p:
        big = [(upscaled(p, out / "films-480p" / p.name), t) for p, t in films]
        report["detectors_480p"] = detector_scores(big, args.tolerance, args.device)
        report["curation_480p"] = curation_scores(big, out / "dataset-480p", True, args.device)
    write_json(out / "curate_eval.json", report)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
