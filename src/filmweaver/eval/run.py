"""``filmweaver eval RUN_DIR``: score one generated project, write ``metrics.json`` and ``metrics.md``.

Every value in ``metrics.json`` sits next to the model that produced it, its protocol and its
preprocessing; metrics that could not run say why. What is read is what a viewer sees: each shot's
mp4 (frames at the keyframe indices the engine selected, or the middle frame), the story script saved
in the project, and the manifest (chunks, retrieved memory, timings).

Metrics (``METRICS``):

* ``aesthetic``: LAION head on CLIP ViT-L/14, /10, mean over frames then shots (VBench).
* ``inception_score``: torchmetrics IS over sampled frames of every shot.
* ``consistency_overall``: mean CLIP cosine over keyframe pairs from different shots (FilmWeaver "All").
* ``consistency_shots_all`` / ``consistency_shots_top10``: StoryMem's cross-shot consistency, video
  embeddings (ViCLIP if plugged in, else CLIP frame averages) over all shot pairs / the 10 pairs whose
  prompts are most alike.
* ``prompt_following_global`` / ``prompt_following_shot``: film vs story overview, shot vs prompt (cos).
* ``clipscore``: keyframes vs their shot's prompt, ``100 * cos`` (FilmWeaver "AllAlign").
* ``character_consistency`` / ``character_clipscore``: crops of the same character across shots (a
  detector's boxes named by crop-description matching; without a detector, whole keyframes of the
  shots showing that character alone, stated), mean pairwise cos; crops vs description.
* ``entity_consistency``: EntityBench's cross-shot entity consistency on the same crops, each later
  appearance against the entity's first, per entity and by recurrence gap (shots since it was last
  seen: the decay curve).
* ``smoothness`` / ``seam_ratio``: frame-to-frame change inside shots; change across chunk boundaries
  over the median change inside chunks.
* ``probe/*``: the same consistency and prompt metrics judged by the synthetic world's attribute probe,
  and the ground-truth metrics when the script carries synthetic ground truth.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from filmweaver.backbone.vae import pixel_frame_count
from filmweaver.engine.records import ShotRecord
from filmweaver.eval import metrics as M
from filmweaver.eval.judges import (
    AestheticScorer,
    EvalSetupError,
    InceptionJudge,
    load_clip_judge,
    load_plugin,
    load_probe_judge,
)
from filmweaver.memory.detect import locate_entities, make_detector

METRICS = ["aesthetic", "inception_score", "consistency_overall", "consistency_shots_all", "consistency_shots_top10",
           "prompt_following_global", "prompt_following_shot", "clipscore", "character_consistency",
           "character_clipscore", "entity_consistency", "smoothness", "seam_ratio"]
# for tables: which way is better
LOWER_IS_BETTER = {"seam_ratio", "seconds_per_shot", "probe/gt_swap_rate"}
log = logging.getLogger("filmweaver")
VIDEO_FRAMES = 8  # frames sampled per shot for video-level embeddings and IS


@dataclass
class EvalConfig:
    """Which judges to load. ``None`` means not configured: the metrics that need it are skipped
    (and listed in ``skipped``) unless named in ``metrics``, which makes a missing judge an error."""

    clip: str | None = "builtin"
    aesthetic_clip: str | None = None  # CLIP ViT-L/14 for the LAION head (default: ``clip``)
    aesthetic_head: str | None = None
    inception: str | None = None
    probe: str | None = None  # "builtin" or a probe directory: the synthetic world's judge
    video_embedder: str | None = None  # "module:factory" (ViCLIP)
    detector: str | None = None  # opencv-hog | opencv-face | "module:factory" (filmweaver.memory.detect)
    metrics: list[str] | None = None  # None: every metric whose judge is configured
    device: str = "cpu"
    options: dict = field(default_factory=dict)


class Judges:
    def __init__(self, cfg: EvalConfig):
        self.cfg = cfg
        wanted = set(cfg.metrics or [])
        unknown = wanted - set(METRICS)
        if unknown:
            raise EvalSetupError(f"unknown metric(s) {sorted(unknown)}: choose from {', '.join(METRICS)}")
        self.skipped: dict[str, str] = {}

        def need(metric: str, configured, option: str) -> bool:
            if configured:
                return cfg.metrics is None or metric in wanted
            if metric in wanted:
                raise EvalSetupError(f"metric {metric!r} was asked for but {option} is not set")
            self.skipped[metric] = f"not configured (set {option})"
            return False

        self.clip = load_clip_judge(cfg.clip, cfg.device) if cfg.clip else None
        self.aesthetic = None
        if need("aesthetic", cfg.aesthetic_head, "--aesthetic-head"):
            self.aesthetic = AestheticScorer.load(cfg.aesthetic_clip or cfg.clip, cfg.aesthetic_head, cfg.device)
        self.inception = InceptionJudge.load(cfg.inception, cfg.device) if need(
            "inception_score", cfg.inception, "--inception") else None
        self.probe = load_probe_judge(cfg.probe, cfg.device) if cfg.probe else None
        self.video = load_plugin(cfg.video_embedder, "video embedder", "--video-embedder", cfg.device) \
            if cfg.video_embedder else None
        try:
            self.detector = make_detector(cfg.detector, device=cfg.device) if cfg.detector else None
        except (ValueError, ImportError, AttributeError) as e:
            raise EvalSetupError(f"--detector {cfg.detector}: {e}") from e
        for m in METRICS:
            if m in ("aesthetic", "inception_score", "smoothness", "seam_ratio"):
                continue
            if self.clip is None:
                need(m, None, "--clip")
            elif cfg.metrics is not None and m not in wanted:
                self.skipped[m] = "not requested"

    def runs(self, metric: str) -> bool:
        return metric not in self.skipped and (self.cfg.metrics is None or metric in self.cfg.metrics)


def _entry(value, model: str, protocol: str, preprocessing: str = "", n: int | None = None, **extra) -> dict:
    rec = {"value": None if value is None else round(float(value), 6), "model": model, "protocol": protocol}
    if preprocessing:
        rec["preprocessing"] = preprocessing
    if n is not None:
        rec["n"] = n
    rec.update(extra)
    return rec


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("filmweaver", "torch", "transformers", "diffusers", "torchmetrics"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


@dataclass
class ShotView:
    index: int
    prompt: str
    frames: torch.Tensor  # [T, 3, H, W] in [0, 1], decoded from the shot's mp4
    keyframes: torch.Tensor  # [K, 3, H, W]
    video_frames: torch.Tensor  # [<= VIDEO_FRAMES, 3, H, W] uniformly sampled
    characters: list[str]  # the characters the shot shows (its schedule, options, or names in its prompt)
    boundaries: list[int]  # pixel-frame indices where a new chunk starts
    seconds: float | None


def load_shots(run_dir: str | Path) -> tuple[dict, object, list[ShotView]]:
    """The manifest, the story and every finished shot of a project, as a viewer sees them."""
    from filmweaver.io import read_video
    from filmweaver.project import Project
    p = Project(run_dir)
    if not p.exists:
        raise EvalSetupError(f"{run_dir}: no manifest.json (not a generated filmweaver project)")
    story = p.load_story()
    chunk_frames = p.manifest.get("config", {}).get("chunk_frames")
    views = []
    for shot in story.shots():
        found = p.shot_record(shot.index)
        rec = ShotRecord.from_manifest(found) if found is not None else None
        if rec is None or not rec.done or not p.shot_video(shot.index).is_file():
            continue
        frames, _ = read_video(p.shot_video(shot.index))
        idx = [k.frame_index for k in rec.keyframes if k.frame_index < len(frames)]
        kf = frames[idx] if idx else frames[len(frames) // 2 : len(frames) // 2 + 1]
        vid = frames[np.linspace(0, len(frames) - 1, min(VIDEO_FRAMES, len(frames))).round().astype(int)]
        views.append(ShotView(shot.index, rec.prompt, frames, kf, vid, list(shot.entities.characters),
                              _chunk_boundaries(rec, chunk_frames), rec.timings.total_s))
    return p.manifest, story, views


def _chunk_boundaries(rec: ShotRecord, chunk_frames: int | None) -> list[int]:
    n_lat, n_pix = rec.num_latent_frames, rec.num_frames
    if not chunk_frames or not n_lat or not n_pix:
        return []
    tf = 1 if n_pix == n_lat else (n_pix - 1) // max(1, n_lat - 1)  # the codec's temporal factor
    starts = range(chunk_frames, n_lat, chunk_frames)
    return [lat if tf == 1 else pixel_frame_count(lat, tf) for lat in starts]


def _consistency_metrics(out: dict, prefix: str, judge, model_id: str, pre: str, story, views: list[ShotView],
                         video=None) -> None:
    """Cross-shot consistency and prompt following with one image-text judge."""
    kf_emb = [judge.embed_images(v.keyframes) for v in views]
    prompts = judge.embed_texts([v.prompt for v in views]) if views else None
    # FilmWeaver "All": keyframe pairs from different shots
    sims = [float(a @ b) for i in range(len(views)) for j in range(i + 1, len(views))
            for a in kf_emb[i] for b in kf_emb[j]]
    out[f"{prefix}consistency_overall"] = _entry(np.mean(sims) if sims else None, model_id,
                                                 "mean cosine over keyframe pairs from different shots (FilmWeaver 'All')",
                                                 pre, len(sims))
    if video is not None:
        vemb = video.embed_videos([v.video_frames for v in views])
        vmodel, vproto = video.model_id, f"{video.model_id} video embeddings"
    else:
        vemb = torch.stack([M.video_embedding(judge.embed_images(v.video_frames)) for v in views]) if views else None
        vmodel, vproto = model_id, f"frame-average of {VIDEO_FRAMES} uniformly sampled frames (CLIP stand-in for ViCLIP)"
    top = M.top_related_pairs(prompts, 10) if len(views) > 1 else []
    out[f"{prefix}consistency_shots_all"] = _entry(
        M.mean_pairwise_similarity(vemb) if vemb is not None else None, vmodel,
        f"mean cosine over all shot pairs (StoryMem cross-shot consistency); {vproto}", pre, len(views))
    out[f"{prefix}consistency_shots_top10"] = _entry(
        M.mean_over_pairs(vemb, top) if top else None, vmodel,
        f"mean cosine over the 10 shot pairs with the most similar prompts (text cosine, same judge); {vproto}",
        pre, len(top), pairs=[[views[a].index, views[b].index] for a, b in top])
    text_judge = video if video is not None else judge
    film_text = text_judge.embed_texts([story.story_overview or " "])
    shot_text = video.embed_texts([v.prompt for v in views]) if video is not None else prompts
    film = M.video_embedding(vemb) if vemb is not None and len(views) else None
    out[f"{prefix}prompt_following_global"] = _entry(
        float(film @ film_text[0]) if film is not None and story.story_overview else None, vmodel,
        "cosine(whole film, story overview); film = mean of shot embeddings", pre + "; text truncated to the judge's context")
    out[f"{prefix}prompt_following_shot"] = _entry(
        float((vemb * shot_text).sum(-1).mean()) if views else None, vmodel, "mean over shots of cosine(shot, its prompt)",
        pre + "; text truncated to the judge's context", len(views))
    cs = [M.clip_score(e, prompts[i].expand_as(e)).mean() for i, e in enumerate(kf_emb)]
    out[f"{prefix}clipscore"] = _entry(float(torch.stack(cs).mean()) if cs else None, model_id,
                                       "100 * cosine(keyframe, its shot's prompt), mean over shots (FilmWeaver 'AllAlign')",
                                       pre, len(cs))


def _crops(views: list[ShotView], detector, clip, descriptions: dict[str, str]) -> tuple[dict[str, list], str]:
    """Per character name, (shot index, crop) pairs: the detector's boxes in each keyframe, named by
    comparing crops with the characters' descriptions; without a detector, whole keyframes of the
    shots that show one character only (a frame of several would credit each with the others)."""
    out: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for v in views:
        if not v.characters:
            continue
        if detector is None:
            if len(v.characters) == 1:
                out.setdefault(v.characters[0], []).extend((v.index, k) for k in v.keyframes)
            continue
        for frame, named in zip(v.keyframes, locate_entities(detector, clip, v.keyframes, v.characters, descriptions),
                                strict=True):
            for name, box in named.items():
                out.setdefault(name, []).append((v.index, box.crop(frame)))
    how = (f"crops from detector {detector.name}, named by CLIP crop-description matching" if detector is not None else
           "whole keyframes of single-character shots (no detector configured: set --detector for crops)")
    return out, how


def _no_crops_reason(views: list[ShotView], detector) -> str:
    """Why :func:`_crops` found nothing: no named character, or none the detector saw, or (without a
    detector) no shot showing a single character."""
    named = [v for v in views if v.characters]
    if not named:
        return "no shot shows a character the script names (entity schedule, shots[].characters, sheet names in prompts)"
    if detector is not None:
        return (f"detector {detector.name} found no character in the keyframes of the {len(named)} shots that name "
                "characters (another --detector, or none: whole keyframes of single-character shots)")
    return "no shot shows a single named character (set --detector for crops of shots with several)"


def _character_metrics(out: dict, judges: Judges, story, views: list[ShotView]) -> None:
    descriptions = {e.name: e.description for e in story.entities() if e.kind == "character"}
    crops, how = _crops(views, judges.detector, judges.clip, descriptions)
    model = judges.clip.model_id
    pair_means, aligns, per_entity, points = [], [], {}, []
    for name, items in crops.items():
        emb = torch.cat([judges.clip.embed_images(c[None]) for _, c in items])
        shots = [s for s, _ in items]
        sims = [float(emb[a] @ emb[b]) for a in range(len(items)) for b in range(a + 1, len(items)) if shots[a] != shots[b]]
        if sims:
            pair_means.append(np.mean(sims))
        if descriptions.get(name):
            t = judges.clip.embed_texts([descriptions[name]])
            aligns.append(float(M.clip_score(emb, t.expand_as(emb)).mean()))
        by_shot = {s: emb[[j for j, s2 in enumerate(shots) if s2 == s]] for s in dict.fromkeys(shots)}
        entity_points = M.recurrence_points(list(by_shot.items()))
        if entity_points:
            per_entity[name] = round(float(np.mean([p[2] for p in entity_points])), 6)
            points += entity_points
    reason = None if crops else _no_crops_reason(views, judges.detector)
    out["character_consistency"] = _entry(np.mean(pair_means) if pair_means else None, model,
                                          "per character, mean cosine over crop pairs from different shots; mean over characters",
                                          how, len(pair_means), **({"reason": reason} if reason else {}))
    out["character_clipscore"] = _entry(np.mean(aligns) if aligns else None, model,
                                        "100 * cosine(crop, character description), mean over characters", how,
                                        len(aligns), **({"reason": reason or "no character descriptions"} if not aligns else {}))
    out["entity_consistency"] = _entry(
        np.mean(list(per_entity.values())) if per_entity else None, model,
        "EntityBench cross-shot consistency: per character, mean cosine of each later appearance's crops to its first "
        "appearance's; mean over characters (per_entity), and by recurrence gap in shots (by_gap)", how,
        len(per_entity), per_entity=per_entity, by_gap=M.gap_curve(points),
        **({"reason": reason or "no character seen in two shots"} if not per_entity else {}))


def evaluation_inputs(run_dir: str | Path, judges: Judges) -> str:
    """Fingerprint of what a metrics.json depends on: every shot's generation fingerprint and the judges."""
    import hashlib
    from dataclasses import asdict

    m = json.loads(Path(run_dir, "manifest.json").read_text())
    shots = [(s["index"], s.get("status"), s.get("fingerprint")) for s in m.get("shots", [])]
    blob = json.dumps([shots, asdict(judges.cfg)], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def judge_notes(judges: Judges, prompts: list[str]) -> list[str]:
    """What a reader of the scores must know about the text-image judge: that it is the synthetic
    world's CLIP (meaningful on that world only), and which share of the prompts it could not read."""
    if judges.clip is None:
        return []
    notes = []
    if judges.clip.model_id.startswith("filmweaver-synth"):
        notes.append(f"the text-image judge is the synthetic world's CLIP ({judges.clip.model_id}): it knows only "
                     "that world's 64x64 images and words, so on other stories its scores do not measure what a "
                     "real CLIP's do (pass --clip with a CLIP such as openai/clip-vit-large-patch14)")
    unseen = judges.clip.coverage(prompts).warning(f"the judge {judges.clip.model_id}")
    if unseen:
        notes.append(unseen)
    return notes


def evaluate_run(run_dir: str | Path, judges: Judges, write: bool = True) -> dict:
    """Score one project; writes ``metrics.json`` and ``metrics.md`` into it (atomically)."""
    from filmweaver.io import write_json

    manifest, story, views = load_shots(run_dir)
    out: dict = {}
    if judges.clip is not None:
        pre = f"RGB frames from the shot mp4s, resized (shortest side) and centre-cropped to {judges.clip.image_size} px, CLIP normalisation"
        _consistency_metrics(out, "", judges.clip, judges.clip.model_id, pre, story, views, judges.video)
        if any(judges.runs(m) for m in ("character_consistency", "character_clipscore", "entity_consistency")):
            _character_metrics(out, judges, story, views)
    if judges.aesthetic is not None:
        per_shot = [float(judges.aesthetic.score(v.video_frames).mean()) for v in views]
        out["aesthetic"] = _entry(np.mean(per_shot) if per_shot else None, judges.aesthetic.model_id,
                                  AestheticScorer.protocol, f"{VIDEO_FRAMES} uniformly sampled frames per shot", len(per_shot))
    if judges.inception is not None and views:
        mean, std = judges.inception.score(torch.cat([v.video_frames for v in views]))
        out["inception_score"] = _entry(mean, judges.inception.model_id, judges.inception.protocol,
                                        f"{VIDEO_FRAMES} uniformly sampled frames per shot", len(views), std=round(std, 6))
    smooth = [s for v in views if (s := M.smoothness(v.frames)) is not None]
    out["smoothness"] = _entry(np.mean(smooth) if smooth else None, "none (pixels)",
                               "1 - mean |frame t+1 - frame t| over pixels in [0, 1], mean over shots", "decoded mp4 frames",
                               len(smooth))
    seams = [r for v in views if (r := M.seam_ratio_at(v.frames, v.boundaries)) is not None]
    out["seam_ratio"] = _entry(np.median(seams) if seams else None, "none (pixels)",
                               "mean change across chunk boundaries / median change inside chunks; median over multi-chunk shots",
                               "decoded mp4 frames", len(seams), **({} if seams else {"reason": "no multi-chunk shot"}))
    truth_records = None
    if judges.probe is not None:
        pre = "frames resized to 64x64; texts: attribute words of the synthetic grammar"
        _consistency_metrics(out, "probe/", judges.probe, judges.probe.model_id, pre, story, views)
        script = json.loads(Path(run_dir, "story.json").read_text())
        if script.get("ground_truth") is not None and hasattr(judges.probe, "ground_truth"):
            truth, truth_records = judges.probe.ground_truth(run_dir, script, manifest["config"]["chunk_frames"])
            for name, (value, n, protocol) in truth.items():
                out[f"probe/{name}"] = _entry(value, judges.probe.model_id, protocol, "probe reads every frame", n)
    times = [v.seconds for v in views if v.seconds is not None]
    notes = judge_notes(judges, [v.prompt for v in views])
    for note in notes:
        log.warning("%s: %s", run_dir, note)
    result = {
        "run": str(run_dir), "story": story.story_name, "shots": len(views),
        "generator": manifest.get("model", {}), "method_config": manifest.get("config", {}),
        "seconds_per_shot": round(float(np.mean(times)), 4) if times else None,
        "metrics": {k: out[k] for k in sorted(out, key=lambda k: (k.startswith("probe/"), k))},
        "skipped": judges.skipped, "notes": notes, "versions": _versions(), "inputs": evaluation_inputs(run_dir, judges),
    }
    if truth_records is not None:
        result["ground_truth_records"] = truth_records
    if write:
        write_json(Path(run_dir) / "metrics.json", result)
        from filmweaver.io import atomic_path

        with atomic_path(Path(run_dir) / "metrics.md") as tmp:
            Path(tmp).write_text(metrics_table(result))
    return result


def metrics_table(result: dict) -> str:
    lines = [f"# {result['story']}: {result['shots']} shots ({result['run']})", "",
             "| metric | value | model | protocol |", "|---|---|---|---|"]
    for k, m in result["metrics"].items():
        v = "-" if m["value"] is None else f"{m['value']:.4f}"
        lines.append(f"| {k} | {v} | {m['model']} | {m['protocol']} |")
    lines += ["", *(f"Note: {n}" for n in result.get("notes", []))] if result.get("notes") else []
    if result["skipped"]:
        lines += ["", "Skipped: " + "; ".join(f"{k}: {v}" for k, v in result["skipped"].items())]
    return "\n".join(lines) + "\n"
