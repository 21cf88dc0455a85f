"""Stage 1, plan: what each shot of the story will be made from (prompt, seed, chunks) and a
fingerprint of everything that changes it, so a finished shot whose inputs did not change is never
made again."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass

from filmweaver.engine.config import EngineConfig
from filmweaver.engine.steering import MemoryEdit
from filmweaver.io import file_digest
from filmweaver.script import Shot, StoryScript


@dataclass
class ShotPlan:
    shot: Shot
    prompt: str
    negative_prompt: str
    seed: int
    base_chunks: int
    extra_chunks: int
    fingerprint: str

    @property
    def num_chunks(self) -> int:
        return self.base_chunks + self.extra_chunks


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def chunks_for(shot: Shot, cfg: EngineConfig, codec) -> int:
    """Chunks a shot needs for its duration (its ``num_frames`` / ``duration_s``, else ``shot_chunks``)."""
    frames = shot.options.num_frames
    if shot.options.duration_s is not None:
        frames = round(shot.options.duration_s * cfg.fps)
    if frames is None:
        return cfg.shot_chunks
    first = codec.num_pixel_frames(cfg.chunk_frames)
    return 1 + max(0, math.ceil((frames - first) / (codec.temporal_factor * cfg.chunk_frames)))


def plan_shots(story: StoryScript, cfg: EngineConfig, model_id: str, codec, overrides: dict,
               one_clip_per_shot: bool = False, memory_edits: list[dict] | None = None) -> list[ShotPlan]:
    """Every shot's plan. ``overrides``: the manifest's per-shot prompt / seed / extra chunks (from
    regenerate and extend). ``one_clip_per_shot``: StoryMem's layout, which makes each shot one clip
    (a shot needing more chunks is an error naming it). ``memory_edits``: the manifest's pins, bans and
    added references (:mod:`~filmweaver.engine.steering`): each shot's fingerprint has those that apply
    to it."""
    edits = [MemoryEdit.from_manifest(d) for d in memory_edits or []]
    settings = cfg.model_dump(mode="json")
    # reference images seed every shot's memory: their contents are part of every shot's inputs
    references = [(kind, name, file_digest(path) if path.is_file() else None) for kind, name, path in story.references()]
    plans = []
    for shot in story.shots():
        ov = overrides.get(str(shot.index), {})
        prompt = ov.get("prompt", shot.prompt)
        seed = ov.get("seed")
        if seed is None:
            # StoryMem seeds each shot by its place in its scene (pipeline.py: seed + i)
            offset = shot.index_in_scene if cfg.storymem.enabled else shot.index
            seed = shot.options.seed if shot.options.seed is not None else (
                (story.seed if story.seed is not None else cfg.seed) + offset)
        base = chunks_for(shot, cfg, codec)
        if one_clip_per_shot and base + ov.get("extra_chunks", 0) > 1:
            raise ValueError(f"{shot.json_path}: StoryMem's pipeline makes each shot one clip of "
                             f"{codec.num_pixel_frames(cfg.chunk_frames)} frames; this shot "
                             f"needs {base + ov.get('extra_chunks', 0)} chunks (drop its duration, or use "
                             "--method filmweaver)")
        neg = shot.negative_prompt or (cfg.storymem.negative_prompt if cfg.storymem.enabled else "")
        # what a schedule or the objects option add to a shot's inputs (absent: fingerprints as before)
        entities = [dataclasses.asdict(shot.entities)] if shot.entities.scheduled or shot.options.objects else []
        steering = [e.to_manifest() for e in edits if e.applies_to(shot.index)]
        fp = fingerprint(prompt, neg, seed, shot.cut, base, shot.options.characters, shot.options.location,
                         settings, model_id, *([references] if references else []), *entities,
                         *([steering] if steering else []))
        plans.append(ShotPlan(shot, prompt, neg, seed, base, ov.get("extra_chunks", 0), fp))
    return plans
