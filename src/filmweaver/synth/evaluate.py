"""Ground-truth metrics for films of synthetic-world stories, and the ablation runner.

Every generated shot is read back from its mp4 (what a viewer sees) and the attribute probe reads the
character's and the location's attributes from every frame (majority over the shot). Against the
story's ground truth:

* **identity consistency**: later shots whose prompt does *not* restate the character's appearance:
  share of the four character attributes read as the story's character (and the share of shots with
  all four right). Without memory this falls to chance (:data:`IDENTITY_CHANCE`).
  **As drawn**: the same shots against the character as the story's first shot describing it was
  *drawn* (probe-read), not as the script says: memory's copying without that shot's adherence.
* **location consistency**: shots whose prompt does not restate the location: its three attributes.
* **prompt adherence**: shots whose prompt states the appearance (or the location): those attributes.
* **seam ratio**: inside a shot of several chunks, the mean frame-to-frame change across chunk
  boundaries divided by the median change inside chunks (1.0 = seamless).

``python -m filmweaver.synth.evaluate RUNS_DIR OUT_DIR`` runs the ablation arms (:data:`ARMS`) on
held-out stories and writes ``report.json``, ``report.md`` and ``ablation.png``. It is a client of the
benchmark runner (:func:`filmweaver.eval.benchmark.run_benchmark`): the stories are written to
``OUT/stories``, each arm is a benchmark :class:`~filmweaver.eval.benchmark.Arm` (engine settings on a
trained model), generated into ``OUT/runs/ARM/STORY`` (resumable, sharded with ``--shard K/N``) and
judged by the probe, whose per-shot ground-truth records in each run's ``metrics.json`` are pooled
here into the ablation's tables (paired intervals over stories). An arm may name the
training run whose model it uses, ``ARM@RUN`` (``no_shot_cache@char6``: the no-shot-cache settings on
``RUNS/char6/model``), so one ablation compares several trained models. ``--report-only
--from-report REPORT:ARM=NAME`` adds an arm of an earlier report on the same stories (the shipped
model's, say) to the table, paired shot by shot with the first arm, without generating it again.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from filmweaver.engine.records import ShotRecord
from filmweaver.eval.benchmark import Arm, run_benchmark
from filmweaver.eval.judges import EvalSetupError
from filmweaver.eval.metrics import seam_ratio
from filmweaver.eval.run import EvalConfig, Judges
from filmweaver.io import read_video, write_json
from filmweaver.models import FilmModels
from filmweaver.project import Project
from filmweaver.synth.cast_metrics import ATTRS as CAST_ATTRS
from filmweaver.synth.cast_metrics import later_unrestated, summarize_cast
from filmweaver.synth.stories import make_cast_story, make_story, story_from_script
from filmweaver.synth.world import (
    ALL_ATTRIBUTES,
    CHARACTER_ATTRIBUTES,
    CHARACTER_HEIGHT,
    FRAMINGS,
    LOCATION_ATTRIBUTES,
)

IDENTITY_CHANCE = float(np.mean([1 / len(v) for v in CHARACTER_ATTRIBUTES.values()]))
EVAL_FIRST_SEED = 1_000_000  # held out: training uses seeds < 1,000,000



class AblationError(ValueError):
    """An arm, shard or report the ablation cannot use (one line, naming it)."""


# arm -> (training run whose model it uses, engine settings that differ from the model's defaults)
ARMS = {
    "full": ("full", {}),
    "no_shot_cache": ("full", {"shot_cache": {"policy": "none"}}),
    "no_temporal_cache": ("full", {"temporal_cache": {"enabled": False}}),
    "no_noise_aug": ("no_noise", {}),
    "no_negative_sampling": ("no_negatives", {}),
    "sink_window": ("full", {"shot_cache": {"policy": "sink_window"}}),
    # the shot-cache policies side by side, whatever the model's default (the multi-character ablation)
    "entity": ("full", {"shot_cache": {"policy": "entity"}}),
    "topk": ("full", {"shot_cache": {"policy": "topk"}}),
    # each character's description read only where it is drawn (regional prompts), with entity memory,
    # and without them (whatever the model's default)
    "entity_regional": ("full", {"shot_cache": {"policy": "entity"}, "regional_prompts": True}),
    "entity_no_regional": ("full", {"shot_cache": {"policy": "entity"}, "regional_prompts": False}),
    # ... with a bias instead of a mask
    "entity_regional_bias4": ("full", {"shot_cache": {"policy": "entity"}, "regional_prompts": True,
                                       "regional_strength": 4.0}),
    "full_seed1": ("full_seed1", {}),  # the full recipe again from another seed: the run-to-run spread
    # the synthetic models' default guides on the shot cache too (memory_guidance_scale in the model's
    # filmweaver.json): without it, and at lower scales
    "no_memory_guidance": ("full", {"sampler": {"memory_guidance_scale": 1.0}}),
    "memory_guidance_2": ("full", {"sampler": {"memory_guidance_scale": 2.0}}),
    # tuning candidates (their identity on the tuning stories: reports/synth-small/guidance_tuning.md)
    "memory_guidance_3": ("full", {"sampler": {"memory_guidance_scale": 3.0}}),
    "memory_guidance_4": ("full", {"sampler": {"memory_guidance_scale": 4.0}}),
    "k2_memory_guidance_3": ("full", {"shot_cache": {"k": 2}, "sampler": {"memory_guidance_scale": 3.0}}),
    # the multi-character model's guidance, either way from its defaults (CFG 3, memory guidance 4)
    "memory_guidance_6": ("full", {"sampler": {"memory_guidance_scale": 6.0}}),
    "cfg_5": ("full", {"sampler": {"guidance_scale": 5.0}}),
}


def resolve_arm(arm: str) -> tuple[str, dict]:
    """``ARM`` or ``ARM@RUN`` -> (training run directory name, engine overrides)."""
    name, _, run = arm.partition("@")
    if name not in ARMS:
        raise AblationError(f"unknown arm {name!r} in {arm!r}: expected one of {', '.join(ARMS)} (optionally @RUN)")
    run_name, overrides = ARMS[name]
    return run or run_name, overrides


def majority(pred: torch.Tensor) -> int:
    """The most frequent class index of ``pred [N]``."""
    return int(torch.bincount(pred).argmax())


def evaluate_project(project_dir: str | Path, script: dict, probe, chunk_frames: int) -> list[dict]:
    """One record per shot of a generated synthetic story."""
    gt, specs = story_from_script(script)
    p = Project(project_dir)
    records = []
    for i, spec in enumerate(specs):
        frames, _ = read_video(p.shot_video(i))
        pred = probe.predict(frames)
        read = {k: majority(v) for k, v in pred.items()}
        truth = {**spec.character.labels(), **spec.location.labels()}
        shot = ShotRecord.from_manifest(p.shot_record(i))
        g = gt["shots"][i]
        records.append({
            "shot": i, "restates_character": g["restates_character"], "restates_location": g["restates_location"],
            "match": {k: read[k] == truth[k] for k in ALL_ATTRIBUTES},
            "read": {k: ALL_ATTRIBUTES[k][read[k]] for k in ALL_ATTRIBUTES},
            "truth": {k: ALL_ATTRIBUTES[k][truth[k]] for k in ALL_ATTRIBUTES}, "framing": spec.framing,
            "num_chunks": shot.num_chunks, "seam_ratio": seam_ratio(frames, chunk_frames),
            "seconds": shot.timings.total_s, "modes": sorted(set(shot.modes)),
        })
    return records


def _as_drawn(records: list[dict], keys: list[str]) -> float | None:
    """Share of ``keys`` on later unrestated shots read as the character's introducing shot (its first
    shot whose prompt describes it) was read. A character is one (story, true attributes) pair."""
    by_character: dict[tuple, list[dict]] = {}
    for r in records:
        if "read" in r and "truth" in r:
            by_character.setdefault((r.get("story"), *(r["truth"][k] for k in keys)), []).append(r)
    vals = []
    for rows in by_character.values():
        rows = sorted(rows, key=lambda r: r["shot"])
        intro = next((r for r in rows if r["restates_character"]), None)
        if intro is not None:
            vals += [r["read"][k] == intro["read"][k] for r in rows
                     if r["shot"] > intro["shot"] and not r["restates_character"] for k in keys]
    return float(np.mean(vals)) if vals else None


def _is_identity_shot(r: dict) -> bool:
    """A later shot whose prompt does not restate the character: only memory can keep its identity."""
    return r["shot"] > 0 and not r["restates_character"]


def cast_rows(records: list[dict]) -> list[dict]:
    """The per-character records that cast stories' shot records carry (``cast``), with their story."""
    return [{**c, "story": r.get("story")} for r in records for c in r.get("cast", ())]


def summarize_characters(records: list[dict]) -> dict | None:
    """Per-character metrics of cast stories (:func:`~filmweaver.synth.cast_metrics.summarize_cast`) with
    the story-resampled 95 % interval of per-character identity; None without cast records."""
    rows = cast_rows(records)
    if not rows:
        return None
    out = summarize_cast(rows)
    ident = [r for r in rows if later_unrestated(r)]
    out["character_identity_ci95"] = _story_bootstrap(ident, CAST_ATTRS)
    return out


def summarize(records: list[dict]) -> dict:
    """Aggregate metrics over the shot records of many stories (with ``characters``, the per-character
    metrics, where they are cast stories)."""
    char, loc = list(CHARACTER_ATTRIBUTES), list(LOCATION_ATTRIBUTES)

    def rate(rows, keys):
        vals = [r["match"][k] for r in rows for k in keys]
        return float(np.mean(vals)) if vals else None

    ident = [r for r in records if _is_identity_shot(r)]
    locs = [r for r in records if not r["restates_location"]]
    adh_c = [r for r in records if r["restates_character"]]
    adh_l = [r for r in records if r["restates_location"]]
    adh = [r["match"][k] for r in adh_c for k in char] + [r["match"][k] for r in adh_l for k in loc]
    seams = [r["seam_ratio"] for r in records if r["seam_ratio"] is not None]
    return {
        "identity": rate(ident, char),
        "identity_ci95": _story_bootstrap(ident, char),
        "identity_all_attributes": float(np.mean([all(r["match"][k] for k in char) for r in ident])) if ident else None,
        "identity_shots": len(ident),
        "identity_as_drawn": _as_drawn(records, char),
        "location": rate(locs, loc),
        "location_shots": len(locs),
        "adherence": float(np.mean(adh)) if adh else None,
        "adherence_character": rate(adh_c, char),
        "adherence_location": rate(adh_l, loc),
        "seam_ratio": float(np.median(seams)) if seams else None,
        "seam_ratio_mean": float(np.mean(seams)) if seams else None,
        "seam_shots": len(seams),
        "seconds_per_shot": float(np.mean([r["seconds"] for r in records])),
        "shots": len(records),
        "identity_by_attribute": {k: rate(ident, [k]) for k in char},
        "adherence_by_attribute": {**{k: rate(adh_c, [k]) for k in char}, **{k: rate(adh_l, [k]) for k in loc}},
        # where identity is lost: by the later shot's framing (a wide shot draws the character small), and
        # the most frequent (true -> read) confusions per character attribute
        "identity_by_framing": {f: {"rate": rate(rows, char), "shots": len(rows)}
                                for f in FRAMINGS
                                if (rows := [r for r in ident if r.get("framing") == f])},
        # per true value of each character attribute (is one shape, colour or "no accessory" the hard one?)
        "identity_by_value": {k: {v: {"rate": rate(rows, [k]), "shots": len(rows)}
                                  for v in CHARACTER_ATTRIBUTES[k]
                                  if (rows := [r for r in ident if "truth" in r and r["truth"][k] == v])}
                              for k in char},
        "identity_confusions": {k: Counter(f"{r['truth'][k]} -> {r['read'][k]}" for r in ident
                                           if "truth" in r and not r["match"][k]).most_common(3) for k in char},
        "characters": summarize_characters(records),
    }


def _story_bootstrap(rows: list[dict], keys: list[str], resamples: int = 2000, seed: int = 0) -> list[float] | None:
    """95% interval of the attribute match rate over ``rows``, resampling whole stories (shots of one
    story are not independent: one drawn-wrong keyframe spoils all later shots). Rows without a
    ``story`` count as their own story."""
    if not rows:
        return None
    groups: dict[str, list[float]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(str(r.get("story", i)), []).extend(float(r["match"][k]) for k in keys)
    hits = np.array([sum(v) for v in groups.values()])
    counts = np.array([len(v) for v in groups.values()])
    return _resampled_interval(hits, counts, resamples, seed)


def _resampled_interval(per_story: np.ndarray, counts: np.ndarray, resamples: int, seed: int) -> list[float]:
    """95% interval of ``sum(per_story) / sum(counts)`` ``[S]`` over stories drawn with replacement."""
    pick = np.random.default_rng(seed).integers(len(per_story), size=(resamples, len(per_story)))
    rates = per_story[pick].sum(1) / counts[pick].sum(1)
    return [float(np.quantile(rates, 0.025)), float(np.quantile(rates, 0.975))]


def _paired_difference(a: dict[tuple, dict], b: dict[tuple, dict], keys: list[str], resamples: int,
                       seed: int) -> dict | None:
    """Match rate of ``b`` minus ``a`` over the same units (``{(story, ...): record}``), with a 95 %
    interval resampling whole stories for both together; None unless both hold the same units."""
    if not a or a.keys() != b.keys():
        return None
    stories = sorted({k[0] for k in a})
    index = {st: i for i, st in enumerate(stories)}
    delta, counts = np.zeros(len(stories)), np.zeros(len(stories))
    for key, r in a.items():
        i = index[key[0]]
        delta[i] += sum(float(b[key]["match"][k]) - float(r["match"][k]) for k in keys)
        counts[i] += len(keys)
    return {"difference": float(delta.sum() / counts.sum()), "ci95": _resampled_interval(delta, counts, resamples, seed)}


def paired_identity_difference(reference: list[dict], records: list[dict], resamples: int = 4000,
                               seed: int = 0) -> dict | None:
    """Identity of ``records`` minus that of ``reference`` on the same shots, with a paired 95% interval
    (whole stories resampled together for both arms, so story-to-story difficulty cancels out: a much
    tighter interval than comparing two unpaired ones). ``None`` unless both arms scored exactly the same
    identity shots (the same held-out stories)."""
    def identity_shots(recs):  # (story, shot) -> record
        return {(str(r.get("story")), r["shot"]): r for r in recs if _is_identity_shot(r)}

    return _paired_difference(identity_shots(reference), identity_shots(records), list(CHARACTER_ATTRIBUTES),
                              resamples, seed)


def paired_character_difference(reference: list[dict], records: list[dict], resamples: int = 4000,
                                seed: int = 0) -> dict | None:
    """Per-character identity of ``records`` minus ``reference`` on the same (story, shot, character)
    appearances, paired over stories as :func:`paired_identity_difference`; None unless both arms
    scored the same appearances."""
    def appearances(recs):
        return {(str(r["story"]), r["shot"], r["name"]): r for r in cast_rows(recs) if later_unrestated(r)}

    return _paired_difference(appearances(reference), appearances(records), CAST_ATTRS, resamples, seed)


def eval_cast_stories(num: int, first_seed: int = EVAL_FIRST_SEED, min_shots: int = 6, max_shots: int = 10,
                      frames=(12,)) -> list[dict]:
    """Held-out multi-character stories: 2, 3 and 4 characters in turn (similar pairs and recurrence as
    :func:`~filmweaver.synth.stories.make_cast_story` draws them)."""
    return [make_cast_story(first_seed + k, characters=2 + k % 3, min_shots=min(min_shots, max_shots), max_shots=max_shots,
                            frames=tuple(frames)).to_script() for k in range(num)]


def eval_stories(num: int, first_seed: int = EVAL_FIRST_SEED, frames=(12, 20), max_shots: int = 8) -> list[dict]:
    return [make_story(first_seed + k, max_shots=max_shots, frames=tuple(frames)).to_script() for k in range(num)]


def write_stories(stories: list[dict], out_dir: str | Path) -> list[Path]:
    """The stories as script files ``OUT/stories/NAME.json``: the benchmark's input (kept, so the
    evaluated stories can be read and rerun)."""
    paths = []
    for script in stories:
        path = Path(out_dir) / "stories" / f"{script['story_name']}.json"
        if not path.is_file() or json.loads(path.read_text()) != script:
            write_json(path, script)
        paths.append(path)
    return paths


def ablation_arm(arm: str, model_dir: str | Path, overrides: dict, device: str = "cpu") -> Arm:
    """A benchmark arm: the model's own settings (method ``default``) with ``overrides``, on the model in
    ``model_dir``."""
    return Arm(arm, "default", overrides, models=lambda: FilmModels.from_pretrained(str(model_dir), device=device))


def probe_judges(probe_dir: str | Path, device: str = "cpu") -> Judges:
    """The judges of the ablation: the attribute probe alone (its ground-truth records per shot)."""
    return Judges(EvalConfig(clip=None, probe=str(probe_dir), device=device))


def arm_result(out_dir: str | Path, arm: str, stories: list[dict]) -> dict | None:
    """An arm's shot records over ``stories``, gathered from its runs' ``metrics.json``; ``None`` if none
    has run, an :class:`AblationError` if only some have (a shard still running, or one that failed)."""
    runs = [Path(out_dir) / "runs" / arm / s["story_name"] for s in stories]
    done = [r for r in runs if (r / "metrics.json").is_file()]
    if not done:
        return None
    if len(done) < len(runs):
        missing = [r.name for r in runs if r not in done]
        raise AblationError(f"{arm}: {len(missing)} of {len(runs)} stories not evaluated in {Path(out_dir) / 'runs' / arm} "
                            f"({', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}): rerun to resume")
    records, model = [], None
    for run in done:
        metrics = json.loads((run / "metrics.json").read_text())
        if "ground_truth_records" not in metrics:
            raise AblationError(f"{run}/metrics.json has no ground-truth records (evaluated without the probe?)")
        records += [{**r, "story": run.name} for r in metrics["ground_truth_records"]]
        model = metrics.get("generator", {}).get("id", model)
    return {"arm": arm, "model": model, "summary": summarize(records), "records": records}


def run_arm(arm: str, model_dir: str | Path, overrides: dict, stories: list[dict], out_dir: str | Path,
            probe_dir: str | Path, device: str = "cpu", progress: bool = True) -> dict:
    """One arm on ``stories`` through the benchmark runner (resumable); its shot records and summary."""
    run_benchmark(write_stories(stories, out_dir), out_dir, [ablation_arm(arm, model_dir, overrides, device)], None,
                  probe_judges(probe_dir, device), progress=progress, report=False)
    return {**arm_result(out_dir, arm, stories), "model": str(model_dir), "overrides": overrides}


def write_report(results: list[dict], out_dir: str | Path, meta: dict) -> None:
    """``report.json``, ``report.md`` and ``ablation.png`` for ``results`` (one per arm, in table order; the
    first is the reference arm, highlighted in the figure)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps({"meta": meta, "arms": results}, indent=1))
    cols = [("identity", "identity (attr.)"), ("identity_all_attributes", "identity (all 4)"),
            ("identity_as_drawn", "identity (as drawn)"), ("location", "location"), ("adherence", "adherence"), ("seam_ratio", "seam ratio"),
            ("seconds_per_shot", "s / shot")]
    # each arm against the first on the same shots (paired), where the arms share their stories
    paired = [paired_identity_difference(results[0]["records"], r["records"])
              if i and "records" in r and "records" in results[0] else None for i, r in enumerate(results)]
    show_paired = any(p is not None for p in paired)
    if show_paired:
        cols.insert(1, ("paired", f"identity vs {results[0]['arm']} (paired 95%)"))
        for r, p in zip(results, paired, strict=True):
            r["summary"]["identity_vs_first_arm"] = p
    lines = ["| arm | " + " | ".join(c for _, c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r, p in zip(results, paired, strict=True):
        s = r["summary"]
        cells = []
        for key, _ in cols:
            if key == "paired":
                cells.append("-" if p is None else f"{100 * p['difference']:+.1f} ({100 * p['ci95'][0]:+.1f} to "
                             f"{100 * p['ci95'][1]:+.1f})")
                continue
            v = s.get(key)
            cell = "-" if v is None else (f"{v:.2f}" if key in ("seam_ratio", "seconds_per_shot") else f"{100 * v:.1f}%")
            if key == "identity" and s.get("identity_ci95"):
                lo, hi = s["identity_ci95"]
                cell += f" ({100 * lo:.0f}-{100 * hi:.0f})"
            cells.append(cell)
        lines.append(f"| {r['arm']} | " + " | ".join(cells) + " |")
    s0 = results[0]["summary"]
    lines += ["", f"Identity chance level: {100 * IDENTITY_CHANCE:.1f}%; in brackets its 95% interval, resampling "
              "stories. Identity as drawn: against the character as the story's first shot describing it was drawn "
              f"(probe-read), not as scripted. Shots: {s0['shots']} per arm ({s0['identity_shots']} identity shots, {s0['seam_shots']} "
              "multi-chunk shots)."]
    if all("identity_by_attribute" in r["summary"] for r in results):
        char = list(CHARACTER_ATTRIBUTES)
        attrs = char + list(LOCATION_ATTRIBUTES)
        lines += ["", "Per attribute: identity on later unrestated shots, then adherence where the prompt states it.", "",
                  "| arm | " + " | ".join(f"identity: {a}" for a in char) + " | "
                  + " | ".join(f"adherence: {a}" for a in attrs) + " |", "|---" * (1 + len(char) + len(attrs)) + "|"]
        for r in results:
            s = r["summary"]

            def pct(v):
                return "-" if v is None else f"{100 * v:.0f}%"

            lines.append(f"| {r['arm']} | " + " | ".join(pct(s["identity_by_attribute"][a]) for a in char) + " | "
                         + " | ".join(pct(s["adherence_by_attribute"][a]) for a in attrs) + " |")
    framed = [r for r in results if r["summary"].get("identity_by_framing")]
    if framed:
        heights = " / ".join(f"{100 * CHARACTER_HEIGHT[f]:.0f}" for f in FRAMINGS)
        lines += ["", f"Identity by the later shot's framing (the character is drawn at {heights} % of the frame "
                  "height), and the most frequent misreads on identity shots (true -> read, shots):", "",
                  "| arm | " + " | ".join(FRAMINGS) + " | most frequent misreads |", "|---" * (len(FRAMINGS) + 2) + "|"]
        for r in framed:
            s = r["summary"]
            cells = [f"{100 * s['identity_by_framing'][f]['rate']:.0f}% ({s['identity_by_framing'][f]['shots']})"
                     if f in s["identity_by_framing"] else "-" for f in FRAMINGS]
            worst = sorted((n, c) for k in s["identity_confusions"] for c, n in s["identity_confusions"][k])[::-1][:4]
            lines.append(f"| {r['arm']} | " + " | ".join(cells) + " | " + ", ".join(f"{c} ({n})" for n, c in worst) + " |")
    valued = [r for r in results if r["summary"].get("identity_by_value")]
    if valued:
        lines += ["", "The hardest character values: identity on later unrestated shots by the character's true "
                  "value, the four lowest (rate, shots) of values with at least 5 shots:", "",
                  "| arm | hardest values |", "|---|---|"]
        for r in valued:
            cells = sorted((v["rate"], f"{k} {val}", v["shots"]) for k, d in r["summary"]["identity_by_value"].items()
                           for val, v in d.items() if v["shots"] >= 5)[:4]
            lines.append(f"| {r['arm']} | " + ", ".join(f"{name} {100 * rt:.0f}% ({n})" for rt, name, n in cells) + " |")
    lines += character_report_lines(results)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    character_figure(results, out)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=120)
    names = [r["arm"] for r in results]
    for ax, (key, title) in zip(axes, [("identity", "identity consistency"), ("adherence", "prompt adherence"),
                                       ("seam_ratio", "seam ratio (lower is smoother)")], strict=True):
        vals = [r["summary"][key] or 0 for r in results]
        err = None
        if key == "identity" and all(r["summary"].get("identity_ci95") for r in results):
            err = np.array([[v - r["summary"]["identity_ci95"][0], r["summary"]["identity_ci95"][1] - v]
                            for v, r in zip(vals, results, strict=True)]).T
        ax.bar(range(len(names)), vals, yerr=err, capsize=2,
               color=["#2b6cb0" if i == 0 else "#a0aec0" for i in range(len(names))])  # the first arm: the reference
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        ax.set_title(title)
        if key in ("identity", "adherence"):
            ax.axhline(0.9, ls=":", c="g", lw=1, label="target 0.9")
        if key == "identity":
            ax.axhline(IDENTITY_CHANCE, ls="--", c="r", lw=1, label="chance")
        if key in ("identity", "adherence"):
            ax.legend(fontsize=7, loc="lower right")
        if key == "seam_ratio":
            ax.axhline(1.5, ls="--", c="g", lw=1, label="target 1.5")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "ablation.png")
    plt.close(fig)


def character_report_lines(results: list[dict]) -> list[str]:
    """The per-character table (cast stories): identity on later unrestated appearances with its
    interval and its paired difference from the first arm, all four attributes, swaps, presence; then
    identity by recurrence gap."""
    rows = [r for r in results if r["summary"].get("characters")]
    if not rows:
        return []

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    first = rows[0]
    lines = ["", f"Per character (cast probe): identity on each character's later appearances whose prompt does not "
             f"describe it ({first['summary']['characters']['appearances']} per arm), in brackets the 95 % interval "
             f"resampling stories; paired: the difference from {first['arm']} on the same appearances. As first drawn: "
             "later appearances against the character's first appearance as read (memory's copying, whatever "
             "was drawn); adherence: appearances whose prompt describes the character; swap rate: shots of "
             "two or more where an attribute takes another member's value, in brackets the rate random wrong "
             "readings would give (only the excess is a look given to the wrong name).", "",
             "| arm | character identity | vs " + first["arm"] + " (paired 95%) | all four | "
             + " | ".join(CAST_ATTRS) + " | as first drawn | adherence | swap rate (by chance) | presence |",
             "|---" * (9 + len(CAST_ATTRS)) + "|"]
    for r in rows:
        c = r["summary"]["characters"]
        ci = c.get("character_identity_ci95")
        p = paired_character_difference(first["records"], r["records"]) if r is not first and "records" in r else None
        c["identity_vs_first_arm"] = p
        lines.append(f"| {r['arm']} | {pct(c['character_identity'])}" + (f" ({100 * ci[0]:.0f}-{100 * ci[1]:.0f})" if ci else "")
                     + " | " + ("-" if p is None else f"{100 * p['difference']:+.1f} ({100 * p['ci95'][0]:+.1f} to "
                                f"{100 * p['ci95'][1]:+.1f})")
                     + f" | {pct(c['character_identity_all_attributes'])} | "
                     + " | ".join(pct(c["character_identity_by_attribute"][k]) for k in CAST_ATTRS)
                     + f" | {pct(c.get('character_identity_as_drawn'))} | {pct(c.get('character_adherence'))}"
                     + f" | {pct(c['swap_rate'])}"
                     + (f" ({pct(c['swap_rate_by_chance'])})" if c.get("swap_rate_by_chance") is not None else "")
                     + f" | {pct(c['presence'])} |")
    gaps = [g["gap"] for g in first["summary"]["characters"]["identity_by_gap"]]
    if gaps:
        lines += ["", "Per-character identity by recurrence gap (shots since the character was last seen; appearances):",
                  "", "| arm | " + " | ".join(gaps) + " |", "|---" * (1 + len(gaps)) + "|"]
        for r in rows:
            by = {g["gap"]: g for g in r["summary"]["characters"]["identity_by_gap"]}
            lines.append(f"| {r['arm']} | " + " | ".join(f"{100 * by[g]['identity']:.0f}% ({by[g]['n']})" if g in by else "-"
                                                      for g in gaps) + " |")
    return lines


def character_figure(results: list[dict], out: Path) -> None:
    """``characters.png``: per-character identity per arm (with intervals) and against recurrence gap."""
    rows = [r for r in results if r["summary"].get("characters")]
    if not rows:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (ax, gx) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=120)
    vals = [r["summary"]["characters"]["character_identity"] or 0 for r in rows]
    cis = [r["summary"]["characters"].get("character_identity_ci95") or [v, v] for v, r in zip(vals, rows, strict=True)]
    err = np.array([[v - lo, hi - v] for v, (lo, hi) in zip(vals, cis, strict=True)]).T
    ax.bar(range(len(rows)), vals, yerr=err, capsize=2, color=["#2b6cb0"] + ["#a0aec0"] * (len(rows) - 1))
    ax.set_xticks(range(len(rows)), [r["arm"] for r in rows], rotation=35, ha="right", fontsize=8)
    ax.axhline(0.9, ls=":", c="g", lw=1, label="target 0.9")
    ax.axhline(IDENTITY_CHANCE, ls="--", c="r", lw=1, label="chance")
    ax.set_title("per-character identity (later unrestated)")
    ax.legend(fontsize=7, loc="lower right")
    for r in rows:
        by = r["summary"]["characters"]["identity_by_gap"]
        gx.plot([g["gap"] for g in by], [g["identity"] for g in by], marker="o", label=r["arm"])
    gx.axhline(IDENTITY_CHANCE, ls="--", c="r", lw=1)
    gx.set_title("identity by recurrence gap (shots)")
    gx.set_ylim(0, 1)
    gx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "characters.png")
    plt.close(fig)


def _story_seed(name: str) -> int:
    """A held-out story's seed, the number its name ends with (``synth-cast-1000007`` -> 1000007)."""
    return int(name.rsplit("-", 1)[-1])


def import_arm(spec: str, stories: int, first_seed: int, taken: list[str] = (), world: str = "single") -> dict:
    """``REPORT:ARM=NAME`` (``=NAME`` optional): arm ``ARM`` of a committed ``report.json[.gz]``, named
    NAME, so a new model is compared (paired, shot by shot) with one evaluated before without
    evaluating it again. The report must cover the same stories (or more from the same seed: then the
    first ``stories`` of them are taken), and NAME must not be one of ``taken`` (the arms evaluated here)."""
    import gzip

    path, sep, arm = spec.rpartition(":")
    if not sep or not arm:
        raise AblationError(f"--from-report {spec!r}: expected REPORT:ARM or REPORT:ARM=NAME")
    arm, _, name = arm.partition("=")
    name = name or arm
    if name in taken:
        raise AblationError(f"--from-report {spec!r}: {name!r} is also an arm evaluated here; name the import "
                            f"another way (REPORT:{arm}=OTHER_NAME)")
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rt") as f:
            report = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise AblationError(f"--from-report {spec!r}: cannot read {path}: {e}") from None
    meta = report.get("meta", {})
    covered = meta.get("stories") or 0
    if (meta.get("first_seed"), meta.get("world", "single")) != (first_seed, world) or covered < stories:
        raise AblationError(f"--from-report {spec!r}: {path} covers {meta.get('stories')} {meta.get('world', 'single')} "
                            f"stories from seed {meta.get('first_seed')}, this evaluation {stories} {world} from {first_seed}")
    arms = {a["arm"]: a for a in report.get("arms", [])}
    if arm not in arms:
        raise AblationError(f"--from-report {spec!r}: no arm {arm!r} in {path} (it has {', '.join(arms)})")
    imported = {**arms[arm], "arm": name, "imported_from": f"{path}:{arm}"}
    if covered > stories:  # the first ``stories`` of a longer run: the same stories (same seeds)
        keep = set(sorted({r["story"] for r in imported["records"]}, key=_story_seed)[:stories])
        imported["records"] = [r for r in imported["records"] if r["story"] in keep]
        imported["summary"] = summarize(imported["records"])
    return imported


def main(argv: list[str] | None = None) -> None:
    """The command line: a library error becomes one line and exit status 2."""
    try:
        _main(argv)
    except (AblationError, EvalSetupError) as e:
        raise SystemExit(f"error: {e}") from None


def _main(argv: list[str] | None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m filmweaver.synth.evaluate")
    ap.add_argument("runs", help="directory holding the training runs named in ARMS (full/, no_noise/, ...)")
    ap.add_argument("out", help="where the stories, the arms' projects (runs/ARM/STORY) and the report go")
    ap.add_argument("--stories", type=int, default=50)
    ap.add_argument("--first-seed", type=int, default=EVAL_FIRST_SEED)
    ap.add_argument("--world", choices=("single", "cast"), default="single",
                    help="single: one-character stories; cast: stories of 2-4 characters (per-character metrics; "
                    "the probe directory needs its cast probe)")
    ap.add_argument("--max-shots", type=int, default=None, help="longest story (default 8 single, 10 cast)")
    ap.add_argument("--min-shots", type=int, default=6, help="cast: shortest story (--min-shots 30 --max-shots 50: "
                    "the long stories, where one character is away for 20 shots or more)")
    ap.add_argument("--arms", nargs="*", default=list(ARMS), help="arms of ARMS, each optionally ARM@RUN")
    ap.add_argument("--probe", default=None, help="probe directory (default: RUNS/full/model/probe)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shard", default="0/1", help="K/N: run the K-th of N interleaved shares of the (story, arm) "
                    "pairs (parallel processes); --report-only then writes the report")
    ap.add_argument("--report-only", action="store_true", help="write the report from the arms' results in OUT")
    ap.add_argument("--from-report", action="append", default=[], metavar="REPORT:ARM[=NAME]",
                    help="with --report-only: add arm ARM of an earlier report.json[.gz] on the same stories as "
                    "NAME (after the --arms), e.g. reports/synth-small/run9/report.json.gz:full=full@run9")
    args = ap.parse_args(argv)
    runs, out = Path(args.runs), Path(args.out)
    if args.from_report and not args.report_only:
        ap.error("--from-report needs --report-only (imported arms are not run)")
    arms = {arm: resolve_arm(arm) for arm in args.arms}  # a misspelt arm fails now, not after the others have run
    k, n = (int(x) for x in args.shard.split("/"))
    if not 0 <= k < n:
        ap.error(f"--shard {args.shard}: expected K/N with 0 <= K < N")
    probe_dir = Path(args.probe or runs / "full" / "model" / "probe")
    if args.world == "cast":
        stories = eval_cast_stories(args.stories, args.first_seed, min_shots=args.min_shots, max_shots=args.max_shots or 10)
    else:
        stories = eval_stories(args.stories, args.first_seed, max_shots=args.max_shots or 8)
    if not args.report_only:
        bench_arms = [ablation_arm(arm, runs / run_name / "model", overrides, args.device)
                      for arm, (run_name, overrides) in arms.items()]
        run_benchmark(write_stories(stories, out), out, bench_arms, None, probe_judges(probe_dir, args.device),
                      shard=(k, n), report=False)
        if n > 1:
            return  # one share of many: `--report-only` writes the report once all are done
    imported = [import_arm(spec, args.stories, args.first_seed, taken=args.arms, world=args.world)
                for spec in args.from_report]
    results = [r for r in (arm_result(out, arm, stories) for arm in args.arms) if r is not None] + imported
    if not results:
        raise AblationError(f"no results in {out} for {', '.join(args.arms)} (expected runs/ARM/STORY/metrics.json)")
    for r in results:  # summaries from the records, so a report written by an older version gains new metrics
        r["summary"] = summarize(r["records"])
    meta = {"stories": args.stories, "first_seed": args.first_seed, "world": args.world,
            "shots": [sum(len(sc["video_prompts"]) for sc in s["scenes"]) for s in stories]}
    if (probe_dir / "probe.json").is_file():
        meta["probe_held_out_accuracy"] = json.loads((probe_dir / "probe.json").read_text()).get("held_out_accuracy", {})
    write_report(results, out, meta)


if __name__ == "__main__":
    main()
