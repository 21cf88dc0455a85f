"""``filmweaver curate``: raw videos in, multi-shot training samples out.

Per video, in this order:

1. probe it (a file that is not a usable video is reported and skipped; nothing else is lost);
2. detect its shots (:mod:`filmweaver.curate.shots`; one streaming pass at the detector's size);
3. one streaming pass at clip size: each shot long enough is written as its own clip, and a few frames
   of it are sampled for the filters, the embedder and the captioner;
4. filter (:mod:`filmweaver.curate.filters`): too short, too many people, static, near-duplicate;
5. group the kept shots into scenes (:mod:`filmweaver.curate.scenes`);
6. caption each scene, then validate each shot's caption (:mod:`filmweaver.curate.captions`);
7. write the scenes of 2+ shots as samples (:mod:`filmweaver.curate.dataset`), then the video's
   record ``videos/STEM.json`` last: a video with a record is done (``--force`` redoes it), a crash
   redoes only the video it was in.

Videos run in a pool of ``workers`` processes (each loads the models once; 0 = one per two cores), or
on a Ray cluster through Ray Data (``--ray ADDRESS``; ``local`` starts one here).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from filmweaver.curate import filters as F
from filmweaver.curate.captions import CaptionError, SceneCaptions, make_captioner
from filmweaver.curate.config import CurateConfig
from filmweaver.curate.dataset import ShardWriter, sample_script
from filmweaver.curate.latents import LatentEncoder
from filmweaver.curate.report import write_contact_sheet, write_report
from filmweaver.curate.scenes import group_scenes
from filmweaver.curate.shots import ShotSpan, make_shot_detector
from filmweaver.curate.video import FrameStream, VideoError, probe_video
from filmweaver.eval.judges import load_clip_judge, load_plugin
from filmweaver.io import VideoWriter, file_digest, write_json
from filmweaver.memory.detect import make_detector
from filmweaver.parallel import process_pool
from filmweaver.progress import progress_bar


@dataclasses.dataclass
class Tools:
    """What a worker loads once: the shot detector, the people detector, the embedder, the captioner."""

    shots: object
    people: object | None
    embedder: object
    captioner: object | None
    latents: object | None = None  # LatentEncoder, where latents.model is set

    @classmethod
    def load(cls, cfg: CurateConfig) -> Tools:
        embedder = (load_plugin(cfg.scenes.embedder, "scene embedder", "scenes.embedder", cfg.device)
                    if ":" in cfg.scenes.embedder and not Path(cfg.scenes.embedder).exists()
                    else load_clip_judge(cfg.scenes.embedder, cfg.device))
        latents = LatentEncoder(cfg.latents, cfg.device) if cfg.latents.model else None
        return cls(make_shot_detector(cfg.shots, cfg.device),
                   make_detector(cfg.filters.people_detector, device=cfg.device), embedder,
                   make_captioner(cfg.captions.captioner, cfg.device), latents)


@dataclasses.dataclass
class DetectedShot:
    """One detected shot of a source video, as the provenance records it."""

    number: int  # 1-based, in the video
    start: int
    end: int
    seconds: tuple[float, float]
    score: float | None
    dropped: str | None = None
    people: int | None = None
    static_change: float | None = None
    scene: int | None = None
    caption: str | None = None
    validation: str | None = None


def clip_size(width: int, height: int, max_height: int) -> tuple[int, int]:
    """(width, height) of the clips: ``max_height`` at most (never enlarged), even sides, aspect kept."""
    h = min(height, max_height)
    w = round(width * h / height)
    return w - w % 2, h - h % 2


def split_clips(path: Path, spans: list[ShotSpan], keep: set[int], work: Path, size: tuple[int, int], fps: float,
                samples_per_shot: int, progress: bool = False) -> tuple[dict[int, torch.Tensor], dict[int, Path], str | None]:
    """One streaming pass: the clip of each shot in ``keep`` written to ``work``, and ``samples_per_shot``
    evenly spaced frames of it (``[S, 3, H, W]`` in [0, 1]). Returns samples, clips and a decode error."""
    owner = np.full(max((s.end for s in spans), default=0), -1)
    for k in keep:
        owner[spans[k].start:spans[k].end] = k
    picks = {k: set(np.linspace(spans[k].start, spans[k].end - 1, samples_per_shot).round().astype(int).tolist())
             for k in keep}
    samples: dict[int, list[np.ndarray]] = {k: [] for k in keep}
    writers: dict[int, VideoWriter] = {}
    clips: dict[int, Path] = {}
    stream = FrameStream(path, size=size, progress=f"clips {path.name}" if progress else None,
                         total=spans[-1].end if spans else None)
    try:
        for t, frame in enumerate(stream):
            k = int(owner[t]) if t < len(owner) else -1
            if k < 0:
                continue
            if k not in writers:
                clips[k] = work / f"shot_{k + 1:04d}.mp4"
                writers[k] = VideoWriter(clips[k], fps)
            writers[k].write(frame)
            if t in picks[k]:
                samples[k].append(frame)
            if t == spans[k].end - 1:
                writers.pop(k).close()
    finally:
        for w in writers.values():  # the file ended inside a shot: that shot is incomplete
            w.abort()
    done = {k: torch.from_numpy(np.stack(v)).permute(0, 3, 1, 2).float() / 255 for k, v in samples.items()
            if v and k in clips and clips[k].is_file()}
    return done, {k: p for k, p in clips.items() if p.is_file()}, stream.error


def _people(tools: Tools, frames: torch.Tensor) -> int:
    if tools.people is None:
        return 0
    return max((len(b) for b in tools.people.detect(frames)), default=0)


def curate_video(path: Path, out: Path, cfg: CurateConfig, tools: Tools, progress: bool = False) -> dict:
    """Curate one video into ``out``; returns (and writes, last) its record ``videos/STEM.json``."""
    t0 = time.perf_counter()
    stem = path.stem
    record = {"video": str(path), "stem": stem, "status": "error", "shots": [], "samples": [], "config": cfg.model_dump()}
    shots: list[DetectedShot] = []
    if path.is_file() and path.stat().st_size:
        record["digest"] = file_digest(path)  # before probing: a file that is not a video is not tried again
    try:
        info = probe_video(path)
        record["info"] = info.to_dict()
        # 2. shots
        spans, detection = tools.shots.detect(path, progress=progress)
        record["detection"] = detection
        if not spans:
            raise VideoError(f"{path}: no frames could be decoded")
        fps = info.fps
        shots = [DetectedShot(k + 1, s.start, s.end, (round(s.start / fps, 3), round(s.end / fps, 3)), s.score)
                 for k, s in enumerate(spans)]
        for s in shots:
            s.dropped = F.too_short(s.end - s.start, fps, cfg.filters)
        # 3. clips and samples
        work = out / "work" / stem
        keep = {k for k, s in enumerate(shots) if s.dropped is None}
        samples_per_shot = max(cfg.filters.people_frames, cfg.captions.frames_per_shot, 2)
        samples, clips, decode_error = split_clips(path, spans, keep, work, clip_size(info.width, info.height,
                                                   cfg.clip_height), fps, samples_per_shot, progress)
        if decode_error or detection.get("decode_error"):
            record["decode_error"] = decode_error or detection.get("decode_error")
        for k in keep - set(clips):
            shots[k].dropped = "incomplete (the file ends inside it)"
        # 4. filters
        embeddings: dict[int, torch.Tensor] = {}
        kept = _filter(shots, samples, clips, embeddings, tools, cfg)
        # 5-6. scenes and captions
        scenes = _scenes(kept, samples, embeddings, tools, cfg)
        captions = _captions(scenes, shots, samples, tools, cfg)
        write_contact_sheet(out / "report" / f"{stem}.png", f"{path.name}: {len(shots)} shots", shots, samples, scenes)
        # 7. samples
        writer = ShardWriter(out / "shards", stem, cfg.samples_per_shard)
        for j, (members, caps) in enumerate(zip(scenes, captions, strict=True)):
            if caps is None:
                continue
            script = sample_script(f"{stem}-scene{j + 1:03d}", caps)
            provenance = {"source": str(path), "digest": record["digest"], "scene": j + 1,
                          "shots": [dataclasses.asdict(shots[k]) for k in members],
                          "detector": detection["detector"], "captioner": getattr(tools.captioner, "name", None)}
            extra = tools.latents.files([clips[k] for k in members], caps.shots) if tools.latents else []
            key = writer.add(script, [clips[k] for k in members], provenance, extra)
            record["samples"].append({"key": key, "scene": j + 1, "shots": [shots[k].number for k in members]})
        record["shards"] = writer.close()
        record["status"] = "done"
        shutil.rmtree(work, ignore_errors=True)
    except VideoError as e:
        record["error"] = str(e)
    record["shots"] = [dataclasses.asdict(s) for s in shots]
    record["seconds"] = round(time.perf_counter() - t0, 2)
    write_json(out / "videos" / f"{stem}.json", record)
    return record


def _embedding(tools: Tools, frames: torch.Tensor) -> torch.Tensor:
    """A shot's embedding ``[D]`` (unit): the mean of its sampled frames'."""
    emb = tools.embedder.embed_images(frames).float().mean(0)
    return emb / emb.norm()


def _filter(shots: list[DetectedShot], samples, clips, embeddings: dict[int, torch.Tensor], tools: Tools,
            cfg: CurateConfig) -> list[int]:
    """The shots every filter keeps (``embeddings``: filled with those the duplicate filter computed)."""
    kept, kept_embeddings = [], []
    for k, s in enumerate(shots):
        if s.dropped is not None:
            continue
        frames = samples[k]
        s.people = _people(tools, frames[: cfg.filters.people_frames])
        s.static_change = round(F.static_change(frames), 5)
        s.dropped = F.too_crowded([s.people], cfg.filters) or F.is_static(frames, cfg.filters)
        if s.dropped is None and cfg.filters.drop_duplicates:
            emb = embeddings[k] = _embedding(tools, frames)
            s.dropped = F.duplicate_of(emb, kept_embeddings, cfg.filters)
            if s.dropped is None:
                kept_embeddings.append((s.number, emb))
        if s.dropped is None:
            kept.append(k)
        else:
            clips.pop(k, None)
    return kept


def _scenes(kept: list[int], samples, embeddings: dict[int, torch.Tensor], tools: Tools,
            cfg: CurateConfig) -> list[list[int]]:
    if not kept:
        return []
    emb = torch.stack([embeddings[k] if k in embeddings else _embedding(tools, samples[k]) for k in kept])
    return [[kept[i] for i in scene] for scene in group_scenes(emb, cfg.scenes)]


def _captions(scenes: list[list[int]], shots: list[DetectedShot], samples, tools: Tools,
              cfg: CurateConfig) -> list[SceneCaptions | None]:
    """Each scene's captions (``None``: not a sample, the shots' ``dropped`` says why)."""
    out = []
    for j, members in enumerate(scenes):
        for k in members:
            shots[k].scene = j + 1
        if len(members) < cfg.scenes.min_shots:
            for k in members:
                shots[k].dropped = f"a scene of {len(members)} shot(s) (fewer than {cfg.scenes.min_shots})"
            out.append(None)
            continue
        if tools.captioner is None:
            caps = SceneCaptions([""] * len(members))
        else:
            frames = [samples[k][: cfg.captions.frames_per_shot] for k in members]
            try:
                caps = tools.captioner.caption_scene(frames, cfg.captions)
            except CaptionError as e:
                caps = None
                for k in members:
                    shots[k].dropped = f"captioning failed: {e}"
            if caps is not None and cfg.captions.validate_captions:
                caps = _validated(caps, members, shots, samples, tools, cfg)
        for k, text in zip(members, caps.shots if caps else [], strict=False):
            shots[k].caption = text
        out.append(caps)
    return out


def _validated(caps: SceneCaptions, members, shots, samples, tools: Tools, cfg: CurateConfig) -> SceneCaptions | None:
    refined = []
    for k, text in zip(members, caps.shots, strict=True):
        verdict = tools.captioner.validate(samples[k][: cfg.captions.frames_per_shot], text, cfg.captions)
        shots[k].validation = verdict.note
        if verdict.caption is None:
            for m in members:
                shots[m].dropped = f"caption of shot {shots[k].number} rejected: {verdict.note}"
            return None
        refined.append(verdict.caption)
    return dataclasses.replace(caps, shots=refined)


_WORKER: dict = {}


def _init_worker(cfg_json: str) -> None:
    torch.set_num_threads(1)
    _WORKER["cfg"] = CurateConfig.model_validate_json(cfg_json)
    _WORKER["tools"] = Tools.load(_WORKER["cfg"])


def _run_in_worker(args: tuple[str, str]) -> dict:
    path, out = args
    return curate_video(Path(path), Path(out), _WORKER["cfg"], _WORKER["tools"])


def _settings(config: dict) -> dict:
    """The settings that change a video's result (not where or how fast it runs)."""
    return {k: v for k, v in config.items() if k not in ("workers", "device")}


def is_done(path: Path, out: Path, cfg: CurateConfig) -> bool:
    """The video has a finished record made from this very file with these settings."""
    rec = out / "videos" / f"{path.stem}.json"
    if not rec.is_file():
        return False
    try:
        data = json.loads(rec.read_text())
    except json.JSONDecodeError:  # damaged: redone
        return False
    digest = file_digest(path) if path.is_file() and path.stat().st_size else None
    return (data.get("status") in ("done", "error") and data.get("digest") == digest
            and _settings(data.get("config", {})) == _settings(cfg.model_dump()))


class _RayCurator:
    """A Ray Data actor: loads the tools once, curates the videos it is given."""

    def __init__(self, cfg_json: str, out: str):
        torch.set_num_threads(1)
        self.cfg = CurateConfig.model_validate_json(cfg_json)
        self.tools, self.out = Tools.load(self.cfg), Path(out)

    def __call__(self, row: dict) -> dict:
        rec = curate_video(Path(row["path"]), self.out, self.cfg, self.tools)
        return {"stem": rec["stem"], "status": rec["status"]}


def _curate_with_ray(todo: list[Path], out: Path, cfg: CurateConfig, address: str, workers: int) -> None:
    """Every video through Ray Data on the cluster at ``address`` (``local``: a Ray started here), one
    actor per worker. Workers write into ``out`` themselves: on several machines it must be a shared
    filesystem."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise ValueError("--ray needs Ray Data: pip install 'filmweaver[ray]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=None if address == "local" else address, include_dashboard=False, log_to_driver=False,
                 **({"num_cpus": max(workers, 1)} if address == "local" else {}))
    try:
        ds = ray.data.from_items([{"path": str(v)} for v in todo])
        ds.map(_RayCurator, fn_constructor_args=(cfg.model_dump_json(), str(out)), concurrency=max(workers, 1),
               num_cpus=1).take_all()
    finally:
        if started:
            ray.shutdown()


def default_workers(videos: int) -> int:
    """A local process pool: one process per two cores (each runs its own torch threads), at most one per video."""
    return max(1, min(videos, (os.cpu_count() or 2) // 2))


def curate(videos: list[Path], out: str | Path, cfg: CurateConfig, force: bool = False, progress: bool = True,
           ray_address: str | None = None) -> list[dict]:
    """Curate every video into ``out`` (resuming: finished videos are kept); returns their records.
    ``ray_address``: curate on a Ray cluster (``local`` starts one here) instead of the process pool."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stems = [v.stem for v in videos]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise ValueError(f"two inputs share the name {twice[0]!r}: rename one (outputs are named by it)")
    todo = [v for v in videos if force or not is_done(v, out, cfg)]
    workers = cfg.workers or default_workers(len(todo))
    if ray_address and todo:
        _curate_with_ray(todo, out, cfg, ray_address, workers)
        todo = []
    bar = progress_bar(total=len(todo), desc="curate", enabled=progress)
    if workers > 1 and len(todo) > 1:
        with process_pool(workers, initializer=_init_worker, initargs=(cfg.model_dump_json(),)) as pool:
            for _ in pool.map(_run_in_worker, [(str(v), str(out)) for v in todo]):
                bar.update(1)
    else:
        tools = Tools.load(cfg) if todo else None
        for v in todo:
            bar.set_postfix_str(v.name)
            curate_video(v, out, cfg, tools, progress)  # bars over its frames too (the pool's workers show none)
            bar.update(1)
    bar.close()
    records = [json.loads((out / "videos" / f"{v.stem}.json").read_text()) for v in videos]
    write_report(records, out)
    return records
