"""From footage to a trained model, checked against ground truth on the synthetic world.

Synthetic feature films (:mod:`filmweaver.synth.feature_film`; seeds used nowhere else) go two ways
into the same trainer:

* **curated**: ``filmweaver curate`` as a user runs it on their own footage (TransNetV2 shots at the
  tuned threshold, scenes by the probe embedder, captions by the probe captioner): no ground truth;
* **truth**: the same films cut at their true shot boundaries, grouped by their true scenes and
  captioned with their true attributes in the captioner's own words (what a perfect curation gives),
  written in the same dataset format by the same writer.

Each trains the built-in architecture's DiT from scratch (``configs/closed-loop.yaml``: the shipped
VAE and embedder) for the same minutes, side by side on one GPU; then both models generate the same
held-out one-character stories (:mod:`filmweaver.synth.evaluate`), paired shot by shot. What the
check asks: the curated model's identity within 5 points of the truth model's.

    python -m filmweaver.synth.closed_loop OUT --films 40 --minutes 5 --device cuda
    python -m filmweaver.synth.closed_loop OUT --films 40 --phase data      # films and both datasets only

Every phase resumes: films and datasets already written, trained models, evaluated stories are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from filmweaver.io import write_json
from filmweaver.parallel import process_pool

FIRST_SEED = 3_000_000  # apart from the curation benchmark's (0-2, 5,000,000+) and the camera probe's films
CONFIG = Path(__file__).resolve().parents[3] / "configs" / "closed-loop.yaml"
ARMS = ("curated", "truth")


def write_films(out: Path, films: int, first_seed: int = FIRST_SEED, workers: int = 0) -> list[Path]:
    """``out/film-SEED.mp4`` (and its ``.truth.json``) for ``films`` seeds; those already there are kept."""
    from filmweaver.synth.feature_film import write_film

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"film-{first_seed + k}.mp4" for k in range(films)]
    todo = [(p, first_seed + k) for k, p in enumerate(paths) if not p.with_suffix(".truth.json").is_file()]
    if todo:
        with process_pool(workers or min(len(todo), os.cpu_count() or 1)) as pool:
            list(pool.map(write_film, *zip(*todo, strict=True)))
    return paths


def curated_dataset(films: list[Path], out: Path, device: str = "cpu", workers: int = 0) -> dict:
    """``filmweaver curate`` of the films with the synthetic world's tools (no ground truth); a dataset
    that already lists every film as done (:func:`complete`: curated elsewhere, the films rendered
    again here) is kept as it is."""
    from filmweaver.curate import CurateConfig, curate
    from filmweaver.synth.curate_eval import SYNTH_CURATION

    if complete(out, films):
        return _dataset_summary(_video_records(out, films))
    cfg = CurateConfig.model_validate({**SYNTH_CURATION, "device": device, "workers": workers})
    return _dataset_summary(curate(films, out, cfg, progress=True))


def truth_dataset(films: list[Path], out: Path, min_shots: int = 2, workers: int = 0) -> dict:
    """The films as a perfect curation would give them, in ``filmweaver curate``'s format: each true
    shot of a second or more cut from the film, each true scene of ``min_shots`` such shots or more one
    sample, captioned as the probe captioner words it (:meth:`ProbeCaptioner.caption`) with the truth."""
    from filmweaver.curate.report import write_report

    todo = [p for p in films if not (out / "videos" / f"{p.stem}.json").is_file()]
    if todo:
        with process_pool(workers or min(len(todo), os.cpu_count() or 1)) as pool:
            list(pool.map(_truth_video, todo, [out] * len(todo), [min_shots] * len(todo)))
    if (out / "work").is_dir() and not any((out / "work").iterdir()):
        (out / "work").rmdir()  # each film's clips were written there, then went into its shards
    records = _video_records(out, films)
    write_report(records, out)
    return _dataset_summary(records)


def _truth_video(path: Path, out: Path, min_shots: int) -> None:
    """One film's samples and its record (written last: a film with a record is done)."""
    import shutil

    from filmweaver.curate.captions import SceneCaptions
    from filmweaver.curate.dataset import ShardWriter, sample_script
    from filmweaver.curate.pipeline import split_clips
    from filmweaver.curate.shots import ShotSpan
    from filmweaver.synth.captioner import NAME, ProbeCaptioner
    from filmweaver.synth.stories import describe_character
    from filmweaver.synth.world import Character

    truth = json.loads(path.with_suffix(".truth.json").read_text())
    shots = truth["shots"]
    spans = [ShotSpan(s["start"], s["end"]) for s in shots]
    keep = {k for k, s in enumerate(shots) if not s["short"]}
    work = out / "work" / path.stem
    work.mkdir(parents=True, exist_ok=True)
    _, clips, _ = split_clips(path, spans, keep, work, (truth["width"], truth["height"]), truth["fps"], 2)
    writer = ShardWriter(out / "shards", path.stem, 8)
    samples = []
    for scene in sorted({s["scene"] for s in shots}):
        members = [k for k, s in enumerate(shots) if s["scene"] == scene and k in clips]
        if len(members) < min_shots:
            continue
        spec = shots[members[0]]["spec"]
        character = Character(**spec["character"])
        caps = SceneCaptions([ProbeCaptioner.caption(shots[k]["spec"]["character"], shots[k]["spec"]["location"])
                              for k in members],
                             [{"name": NAME, "description": describe_character(NAME, character)[:-1]}],
                             [[NAME] for _ in members])
        provenance = {"source": str(path), "scene": scene + 1, "truth": True,
                      "shots": [{"number": k + 1, "start": shots[k]["start"], "end": shots[k]["end"]} for k in members]}
        key = writer.add(sample_script(f"{path.stem}-scene{scene + 1:03d}", caps), [clips[k] for k in members],
                         provenance)
        samples.append({"key": key, "scene": scene + 1, "shots": [k + 1 for k in members]})
    shutil.rmtree(work, ignore_errors=True)
    write_json(out / "videos" / f"{path.stem}.json", {
        "video": str(path), "stem": path.stem, "status": "done", "samples": samples, "shards": writer.close(),
        "shots": [{"number": k + 1, "seconds": [round(s["start"] / truth["fps"], 3), round(s["end"] / truth["fps"], 3)],
                   "scene": s["scene"] + 1, "dropped": None if k in keep else "shorter than a second"}
                  for k, s in enumerate(shots)]})


def complete(dataset: Path, films: list[Path]) -> bool:
    """Whether ``dataset``'s index lists every film as done (curated elsewhere and brought here: the
    films rendered again need not be curated again)."""
    index = dataset / "index.json"
    if not index.is_file():
        return False
    done = {v["stem"] for v in json.loads(index.read_text())["videos"] if v["status"] == "done"}
    return {f.stem for f in films} <= done


def _video_records(dataset: Path, films: list[Path]) -> list[dict]:
    return [json.loads((dataset / "videos" / f"{f.stem}.json").read_text()) for f in films]


def _dataset_summary(records: list[dict]) -> dict:
    return {"videos": len(records), "samples": sum(len(r.get("samples", [])) for r in records),
            "shots_in_samples": sum(len(s["shots"]) for r in records for s in r.get("samples", []))}


def train_arms(out: Path, minutes: float, config: Path = CONFIG, sets: tuple[str, ...] = (),
               arms: tuple[str, ...] = ARMS) -> None:
    """The ``arms``' models at once (``filmweaver train``, one process each, sharing the machine's GPU
    equally), each for ``minutes`` of DiT; a model already trained is kept. One arm per call gives each
    model the whole GPU for its minutes (the other trained by another call on the same kind of machine)."""
    procs = []
    for arm in arms:
        run = out / "runs" / arm
        if (run / "model" / "filmweaver.json").is_file():
            continue
        run.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "filmweaver.train", str(config), "-o", str(run),
               "--set", f"data.path={out / 'datasets' / arm}", "--set", f"dit.max_minutes={minutes}", *sets]
        log = open(run / "train.log", "w")  # noqa: SIM115 (closed below)
        procs.append((arm, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
    failed = []
    for arm, proc, log in procs:  # every one waited for, so none is left running when another fails
        if proc.wait() != 0:
            failed.append(arm)
        log.close()
    if failed:
        raise RuntimeError(f"training {', '.join(failed)} failed: see {out / 'runs'}/ARM/train.log")


def evaluate_arms(out: Path, stories: int, device: str, shards: int) -> dict:
    """Both models on the same held-out one-character stories (``shards`` processes), then the report."""
    from filmweaver.models import BUILTIN_MODEL_DIR

    base = [sys.executable, "-m", "filmweaver.synth.evaluate", str(out / "runs"), str(out / "eval"),
            "--stories", str(stories), "--probe", str(BUILTIN_MODEL_DIR / "probe"), "--device", device,
            "--arms", *(f"full@{arm}" for arm in ARMS)]
    procs = [subprocess.Popen([*base, "--shard", f"{k}/{shards}"], stdout=subprocess.DEVNULL) for k in range(shards)]
    if any([p.wait() for p in procs]):  # a list: every share waited for, not only up to the first failure
        raise RuntimeError("an evaluation share failed")
    subprocess.run([*base, "--report-only"], check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "eval" / "report.json").read_text())


def evaluation_summary(report: dict) -> dict:
    """Each arm's identity, adherence and location consistency, and curated minus truth on the same
    shots (identity points, with its paired 95 % interval)."""
    from filmweaver.synth.evaluate import paired_identity_difference

    arms = {r["arm"].split("@")[-1]: r for r in report["arms"]}
    out = {arm: {k: r["summary"].get(k) for k in ("identity", "identity_ci95", "identity_all_attributes",
                                                   "identity_shots", "adherence", "location")}
           for arm, r in arms.items()}
    if set(ARMS) <= set(arms):
        out["curated_minus_truth"] = paired_identity_difference(arms["truth"]["records"], arms["curated"]["records"])
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m filmweaver.synth.closed_loop", description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--films", type=int, default=40)
    ap.add_argument("--first-seed", type=int, default=FIRST_SEED)
    ap.add_argument("--minutes", type=float, default=5.0, help="each model's DiT minutes")
    ap.add_argument("--stories", type=int, default=50, help="held-out one-character stories")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=0, help="curation processes (0: one per two cores)")
    ap.add_argument("--eval-shards", type=int, default=1, help="evaluation processes")
    ap.add_argument("--phase", choices=("all", "data", "train", "eval"), default="all")
    ap.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS),
                    help="the models to train (by default both at once, sharing the GPU)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="more training settings (KEY=VALUE)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    summary_path = out / "closed_loop.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary.update({"films": args.films, "first_seed": args.first_seed})
    if args.phase in ("all", "data"):
        films = write_films(out / "films", args.films, args.first_seed)
        summary["datasets"] = {"curated": curated_dataset(films, out / "datasets" / "curated", args.device, args.workers),
                               "truth": truth_dataset(films, out / "datasets" / "truth")}
        write_json(summary_path, summary)
    if args.phase in ("all", "train"):
        train_arms(out, args.minutes, sets=tuple(x for s in args.sets for x in ("--set", s)), arms=tuple(args.arms))
        summary["minutes"] = args.minutes  # each model's DiT minutes
        summary["shared_gpu"] = len(args.arms) > 1  # whether the models trained at once, sharing one GPU
        summary["training"] = {**summary.get("training", {}),
                               **{arm: _training_summary(out / "runs" / arm) for arm in args.arms}}
        write_json(summary_path, summary)
    if args.phase in ("all", "eval"):
        summary["evaluation"] = evaluation_summary(evaluate_arms(out, args.stories, args.device, args.eval_shards))
        write_json(summary_path, summary)
    print(json.dumps(summary, indent=1))


def _training_summary(run: Path) -> dict:
    s = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    dit = s.get("dit", {})
    return {"steps": dit.get("steps"), "final_loss": dit.get("final_loss"), "data": s.get("data"),
            "timings": s.get("timings")}


if __name__ == "__main__":
    main()
