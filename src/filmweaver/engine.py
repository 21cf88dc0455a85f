"""The autoregressive story engine: script -> shots -> chunks, guided by the shot and temporal caches.

One shot is generated chunk by chunk. Before each chunk the engine assembles the context:

* the **shot cache**: keyframes chosen from the bank (earlier shots + reference images) by the
  policy (``topk`` retrieval by prompt, or StoryMem's ``sink_window``), one latent frame each, at
  negative temporal positions before everything else (plus an optional gap);
* the **temporal cache**: the latest latent frames of the current shot, differentially compressed,
  at positions -1, -2, ... just before the chunk. For a ``cut: false`` shot it is seeded with the
  previous shot's last frame (MI2V) or last few frames (MM2V).

The inference mode follows from what the caches hold (no cache / temporal only / shot only / both)
and is recorded per chunk in the manifest. After a shot, its frames are decoded, keyframes are
selected and added to the bank, and every file is written before the manifest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, Field
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from filmweaver.backbone.m2v import StoryMemLayout, m2v_inputs
from filmweaver.backbone.wan import ContextKVCache
from filmweaver.context import ContextFrames, present_at_timestep
from filmweaver.io import (
    as_8bit,
    atomic_path,
    file_digest,
    load_image,
    save_png,
    storyboard_thumbnails,
    to_pil,
    write_video,
)
from filmweaver.memory.keyframes import (
    Keyframe,
    KeyframeBank,
    KeyframeSelector,
    StoryMemKeyframeSelector,
    bank_exists,
    make_quality_scorer,
)
from filmweaver.memory.shot_cache import (
    DEFAULT_K,
    DEFAULT_MAX_SIZE,
    DEFAULT_SINK,
    RetrievedKeyframe,
    make_shot_cache_policy,
    memory_positions,
)
from filmweaver.memory.temporal_cache import DEFAULT_SCHEDULE, TemporalCache
from filmweaver.models import FilmModels
from filmweaver.progress import progress_bar
from filmweaver.project import Project, ProjectError, ProjectLock
from filmweaver.sampler import FlowMatchSampler, SamplerConfig
from filmweaver.script import MAX_SEED, Shot, StoryScript
from filmweaver.step_cache import StepCache
from filmweaver.summaries import write_summaries

log = logging.getLogger("filmweaver")

MODES = {(False, False): "text", (False, True): "temporal", (True, False): "shot", (True, True): "both"}
_VOCABULARY_WARNED: set[str] = set()
UNTRAINED_BANNER = "UNTRAINED MODEL: random weights, output is noise (engine demo / test preset)"


class ShotCacheConfig(BaseModel):
    policy: Literal["topk", "sink_window", "none"] = "topk"
    k: int = Field(DEFAULT_K, ge=1, le=64)  # topk: keyframes retrieved per shot (policy "none": no memory)
    per_shot: int | None = Field(None, ge=1)  # topk: at most this many from one earlier shot (None: no cap)
    # a character of the story's sheet that the shot names (its `characters`, or its name in the prompt)
    # and that has no reference image: the first keyframe of the earliest shot naming it is always in
    # memory, as a reference image would be (the shot that introduced a character usually describes it)
    anchor_characters: bool = False
    sink: int = Field(DEFAULT_SINK, ge=0, le=64)  # sink_window: first keyframes kept forever
    max_size: int = Field(DEFAULT_MAX_SIZE, ge=1, le=64)  # sink_window: total memory size
    gap: float = Field(0.0, ge=0, le=1000, allow_inf_nan=False)  # extra temporal distance between memory and video (StoryMem's S)
    timestep: float = Field(0.0, ge=0, le=1000, allow_inf_nan=False)  # keyframes' noise level (0 = clean, 1000 = noise)
    # spatial pooling of each keyframe into 2x2 or 4x4 base patches: 4x / 16x fewer memory tokens
    # (cheaper memory; the in-context backbone only: StoryMem's M2V layout keeps full frames)
    compression: Literal[1, 2, 4] = 1


class TemporalCacheConfig(BaseModel):
    enabled: bool = True
    schedule: list[tuple[int, int]] = Field(default_factory=lambda: list(DEFAULT_SCHEDULE))
    timestep: float = Field(0.0, ge=0, le=1000, allow_inf_nan=False)


class KeyframeConfig(BaseModel):
    max_per_shot: int = Field(3, ge=1, le=64)
    start_threshold: float = Field(0.9, ge=-1, le=2, allow_inf_nan=False)  # cosine; above 1: never
    threshold_step: float = Field(0.01, gt=0, le=1, allow_inf_nan=False)
    dedupe_threshold: float = Field(0.9, ge=-1, le=2, allow_inf_nan=False)  # above 1: no dedupe
    # frames scoring below quality_threshold are skipped: none | contrast | hpsv3 (StoryMem's, from
    # quality_model: a checkpoint path or hub id) | a plug-in package.module:factory
    quality_scorer: str = Field("none", pattern=r"^(none|contrast|hpsv3|[\w.]+:\w+)$")
    quality_threshold: float | None = Field(None, allow_inf_nan=False)
    quality_model: str | None = None


# Wan's default negative prompt (wan/configs/shared_config.py), which StoryMem uses for every shot
WAN_NEGATIVE_PROMPT = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
                       "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
                       "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")


class StoryMemConfig(BaseModel):
    """StoryMem's released pipeline (``--method storymem``; ``pipeline.py``, ``wan/memory2video.py``,
    ``extract_keyframes.py``). With any backbone: its keyframe selection, seeds ``seed + shot index in
    its scene``, Wan's negative prompt. With an M2V (I2V-layout) backbone also its input layout
    (:class:`~filmweaver.backbone.m2v.StoryMemLayout`: memory denoised with the video, grey-video
    condition, no temporal cache), its M2V shift, and a first-shot (T2V) model sampled with its own
    shift and guidance."""

    enabled: bool = False
    # the released MI2V conditions on a grey video (its last-frame encoding is overwritten); True keeps
    # the previous shot's last frame in the condition, as the code evidently meant
    corrected_mi2v: bool = False
    m2v_shift: float = Field(4.0, gt=0, allow_inf_nan=False)  # wan/configs/wan_m2v_A14B.py
    first_shot_shift: float = Field(12.0, gt=0, allow_inf_nan=False)  # wan/configs/wan_t2v_A14B.py
    first_shot_guidance: float = Field(3.5, ge=0, allow_inf_nan=False)  # pipeline.py passes --sample_guide_scale (3.5) to both experts
    negative_prompt: str = WAN_NEGATIVE_PROMPT


class EngineConfig(BaseModel):
    """Every setting that changes the film. ``None`` fields take the model's defaults."""

    # bounds: what any model of the field can make (the engine checks the model's own multiple)
    height: int | None = Field(None, ge=8, le=4096, multiple_of=8)
    width: int | None = Field(None, ge=8, le=4096, multiple_of=8)
    fps: int | None = Field(None, ge=1, le=120)
    chunk_frames: int | None = Field(None, ge=1, le=1024)  # latent frames per chunk (Wan: 21 = 81 video frames)
    shot_chunks: int = Field(1, ge=1, le=1000)  # chunks per shot when the script gives no duration
    seed: int = Field(0, ge=0, le=MAX_SEED)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    shot_cache: ShotCacheConfig = Field(default_factory=ShotCacheConfig)
    temporal_cache: TemporalCacheConfig = Field(default_factory=TemporalCacheConfig)
    keyframes: KeyframeConfig = Field(default_factory=KeyframeConfig)
    storymem: StoryMemConfig = Field(default_factory=StoryMemConfig)
    continuation: Literal["mi2v", "mm2v", "none"] = "mi2v"  # how a cut: false shot continues
    mm2v_frames: int = Field(5, ge=1, le=81)  # MM2V: last k video frames carried over (1 + 4m)
    # keyframe-first baseline: each shot that starts fresh first generates one anchor frame (text +
    # shot cache), then animates from it (the anchor seeds the temporal cache, as MI2V does)
    keyframe_first: bool = False
    # step caching (diffusers hooks; changes the film, saves time). "first_block" (FirstBlockCache):
    # skip the later blocks while the first block's output residual changes less than the threshold
    # between denoising steps. "mag" (MagCache): skip while the accumulated error predicted by the
    # model's per-step residual magnitude ratios stays under the threshold; the ratios depend on the
    # model and the step count: "mag_calibrate" skips nothing and prints them for `step_cache_mag_ratios`.
    step_cache: Literal["none", "first_block", "mag", "mag_calibrate"] = "none"
    step_cache_threshold: float = Field(0.05, ge=0, allow_inf_nan=False)
    step_cache_mag_ratios: list[float] | None = None

    def resolve(self, models: FilmModels, explicit: set[str] = frozenset()) -> EngineConfig:
        """Fill the fields nobody set from the model's defaults (resolution, fps, chunk length, steps,
        guidance, and the dotted settings it was trained with such as ``sampler.shift``).

        A field counts as set when it was given to the constructor or assigned (pydantic's fields-set,
        nested sections included: ``EngineConfig(sampler={"num_inference_steps": 3})`` keeps 3 steps),
        or when ``explicit`` names it. A config reopened from a manifest is fully set: nothing in it
        is replaced."""
        d = models.defaults
        explicit = set(explicit) | self.set_fields()
        cfg = self.model_copy(deep=True)
        for key in ("height", "width", "fps", "chunk_frames"):
            if getattr(cfg, key) is None:
                setattr(cfg, key, d.get(key))
        for key in ("num_inference_steps", "guidance_scale"):
            if key in d and key not in explicit:
                setattr(cfg.sampler, key, d[key])
        # dotted keys ("sampler.shift", "shot_cache.timestep", ...): what the model was trained for
        for key, value in d.items():
            if "." in key and key not in explicit and key.split(".")[-1] not in explicit:
                section, name = key.split(".", 1)
                sec = getattr(cfg, section)
                setattr(cfg, section, type(sec).model_validate({**sec.model_dump(), name: value}))
        return cfg

    def set_fields(self) -> set[str]:
        """Names of the fields explicitly set: top-level names, ``section.field`` for nested sections,
        and the sampler's fields also bare (``num_inference_steps``), as :meth:`resolve` checks them."""
        out = set()
        for name in self.model_fields_set:
            value = getattr(self, name)
            if isinstance(value, BaseModel):
                for sub in value.model_fields_set:
                    out.add(f"{name}.{sub}")
                    if name == "sampler":
                        out.add(sub)
            else:
                out.add(name)
        return out


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


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StoryEngine:
    """Generates, resumes, extends and regenerates the shots of one project directory.

    ``StoryEngine(models, project_dir, story=..., config=...)`` starts or reopens a project; without
    ``story`` it reopens the one saved in the project. All operations are idempotent on disk: a
    finished shot whose inputs did not change is never generated again.
    """

    def __init__(self, models: FilmModels, project: Project | str | Path, story: StoryScript | None = None,
                 config: EngineConfig | None = None, progress: bool = True, explicit: set[str] = frozenset()):
        self.models = models
        self.project = project if isinstance(project, Project) else Project(project)
        self._bank_after: KeyframeBank | None = None  # the bank after the last shot this operation made
        self._verified: set[int] = set()  # shots whose files this operation checked or wrote
        self.progress = progress
        p = self.project
        if story is None:
            story = p.load_story()
        self.story = story
        if config is None and p.exists:
            config = EngineConfig.model_validate(p.manifest["config"])
        self.config = (config or EngineConfig()).resolve(models, explicit)
        if p.exists and p.manifest.get("model", {}).get("id") not in (None, models.model_id):
            raise ProjectError(
                f"{p.root} was generated with model {p.manifest['model']['id']!r}, not {models.model_id!r}; "
                "use the same model, another output directory, or --force to start over")
        cfg = self.config
        user_set = (config or EngineConfig()).set_fields() | set(explicit)
        if cfg.height % (models.codec.spatial_factor * 2) or cfg.width % (models.codec.spatial_factor * 2):
            raise ValueError(f"height and width must be multiples of {models.codec.spatial_factor * 2}, "
                             f"got {cfg.height}x{cfg.width}")
        self.m2v = models.backbone.config.in_channels == 2 * models.codec.latent_channels + 4
        # StoryMem's own layout and sampling where the backbone has its (I2V) channel layout
        self.storymem_layout = self.m2v and cfg.storymem.enabled
        sampler_cfg = cfg.sampler
        if self.storymem_layout and "sampler.shift" not in user_set:
            sampler_cfg = sampler_cfg.model_copy(update={"shift": cfg.storymem.m2v_shift})
        self.sampler = FlowMatchSampler(sampler_cfg, models.scheduler_config,
                                        boundary=getattr(models.backbone, "boundary", None))
        self.first_shot_sampler = self.sampler
        if self.storymem_layout and models.first_shot_backbone is not None:
            sm = cfg.storymem
            self.first_shot_sampler = FlowMatchSampler(
                sampler_cfg.model_copy(update={"shift": sm.first_shot_shift, "guidance_scale": sm.first_shot_guidance,
                                               "guidance_scale_2": None, "memory_guidance_scale": 1.0}),
                models.scheduler_config, boundary=getattr(models.first_shot_backbone, "boundary", None))
        self.policy = make_shot_cache_policy(cfg.shot_cache.policy, cfg.shot_cache.k, cfg.shot_cache.sink,
                                             cfg.shot_cache.max_size, cfg.shot_cache.per_shot)
        kcfg = cfg.keyframes
        scorer = make_quality_scorer(kcfg.quality_scorer, kcfg.quality_model, str(models.backbone.device))
        if cfg.storymem.enabled:
            self.selector = StoryMemKeyframeSelector(kcfg.max_per_shot, kcfg.start_threshold, kcfg.threshold_step,
                                                     scorer, 3.0 if kcfg.quality_threshold is None else kcfg.quality_threshold)
        else:
            self.selector = KeyframeSelector(kcfg.max_per_shot, kcfg.start_threshold, kcfg.threshold_step, scorer,
                                             kcfg.quality_threshold)
        # a closed-vocabulary text encoder (the built-in model's) silently drops words it doesn't know:
        # say so, once per model in a process (a benchmark opens an engine per story and method)
        if models.model_id not in _VOCABULARY_WARNED:
            unseen = models.prompt_encoder.coverage([s.prompt for s in story.shots()])
            message = unseen.warning(f"{models.model_id}'s text encoder on {story.story_name or 'the story'}")
            if message:
                _VOCABULARY_WARNED.add(models.model_id)
                log.warning(message)
        if self.m2v and self.config.shot_cache.compression != 1:
            raise ValueError("shot_cache.compression applies to in-context backbones; StoryMem's M2V layout "
                             "takes memory frames at full resolution")
        self.step_cache = StepCache.for_config(cfg, models.experts())
        # Wan2.1-I2V: the CLIP image tokens of each shot's conditioning image join the text (see
        # _image_condition); the noisy/mask/condition channel layout is StoryMem's M2V one
        self.image_conditioned = bool(getattr(models.backbone.config, "image_dim", None))
        if self.image_conditioned and (models.image_encoder is None or not self.m2v):
            raise ValueError("an image-conditioned (Wan2.1-I2V) transformer needs its CLIP vision tower "
                             "(image_encoder/ and image_processor/ in the model directory) and the I2V input layout "
                             f"({2 * models.codec.latent_channels + 4} input channels)")
        if self.image_conditioned and models.prompt_encoder.max_sequence_length != 512:
            # diffusers' Wan cross-attention takes everything before the last 512 tokens as image tokens
            raise ValueError("an image-conditioned (Wan2.1-I2V) transformer needs 512 text tokens, the prompt "
                             f"encoder makes {models.prompt_encoder.max_sequence_length}")
        if models.embedder is None:
            raise ValueError("memory needs an image/text embedder: pass --embedder (a CLIP hub id or directory)")

    # -- planning ----------------------------------------------------------------------------------
    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.models.codec.latent_size(self.config.height, self.config.width)

    def chunks_for(self, shot: Shot) -> int:
        cfg, codec = self.config, self.models.codec
        frames = shot.options.num_frames
        if shot.options.duration_s is not None:
            frames = round(shot.options.duration_s * cfg.fps)
        if frames is None:
            return cfg.shot_chunks
        first = codec.num_pixel_frames(cfg.chunk_frames)
        return 1 + max(0, math.ceil((frames - first) / (codec.temporal_factor * cfg.chunk_frames)))

    def plan(self) -> list[ShotPlan]:
        overrides = self.project.manifest.get("overrides", {})
        settings = self.config.model_dump(mode="json")
        # reference images seed every shot's memory: their contents are part of every shot's inputs
        references = [(kind, name, file_digest(path) if path.is_file() else None)
                      for kind, name, path in self.story.references()]
        plans = []
        for shot in self.story.shots():
            ov = overrides.get(str(shot.index), {})
            prompt = ov.get("prompt", shot.prompt)
            seed = ov.get("seed")
            if seed is None:
                # StoryMem seeds each shot by its place in its scene (pipeline.py: seed + i)
                offset = shot.index_in_scene if self.config.storymem.enabled else shot.index
                seed = shot.options.seed if shot.options.seed is not None else (
                    (self.story.seed if self.story.seed is not None else self.config.seed) + offset)
            base = self.chunks_for(shot)
            if self.storymem_layout and base + ov.get("extra_chunks", 0) > 1:
                raise ValueError(f"{shot.json_path}: StoryMem's pipeline makes each shot one clip of "
                                 f"{self.models.codec.num_pixel_frames(self.config.chunk_frames)} frames; this shot "
                                 f"needs {base + ov.get('extra_chunks', 0)} chunks (drop its duration, or use "
                                 "--method filmweaver)")
            neg = shot.negative_prompt or (self.config.storymem.negative_prompt if self.config.storymem.enabled else "")
            fp = _fingerprint(prompt, neg, seed, shot.cut, base, shot.options.characters, shot.options.location,
                              settings, self.models.model_id, *([references] if references else []))
            plans.append(ShotPlan(shot, prompt, neg, seed, base, ov.get("extra_chunks", 0), fp))
        return plans

    # -- public operations (each holds the project's lock: one writer at a time) ----------------------
    def generate(self, force: bool = False, max_shots: int | None = None) -> list[int]:
        """Generate every shot not already done (all with ``force``). Returns the indices generated."""
        with ProjectLock(self.project.root):
            self._start_project(force)
            plans = self.plan()
            if max_shots is not None:
                plans = plans[:max_shots]
            done = []
            bar = progress_bar(plans, desc="shots", enabled=self.progress)
            for plan in bar:
                i = plan.shot.index
                if not force and self._is_current(plan):
                    continue
                bar.set_postfix_str(f"shot {plan.shot.number}")
                self._generate_shot(plan)
                done.append(i)
            self._write_summaries()
            return done

    def generate_next_shot(self) -> int | None:
        """Generate the first shot that is not done (pending or stale). Returns its index, or None."""
        with ProjectLock(self.project.root):
            self._start_project(False)
            for plan in self.plan():
                if not self._is_current(plan):
                    self._generate_shot(plan)
                    self._write_summaries()
                    return plan.shot.index
            return None

    def regenerate_shot(self, index: int, prompt: str | None = None, seed: int | None = None) -> None:
        """Regenerate shot ``index`` (0-based) with an optional new prompt or seed. Memory is rebuilt
        from the shots before it; later shots are marked stale (they saw the old version)."""
        with ProjectLock(self.project.root):
            self._tidy()
            self._regenerate_shot(index, prompt, seed)

    def extend_shot(self, index: int, chunks: int = 1) -> None:
        """Extend a finished shot by ``chunks`` chunks: the temporal cache is refilled from the shot's
        own latents and the shot cache is retrieved as it was. Later shots are marked stale."""
        if chunks < 1:
            raise ValueError(f"chunks: expected at least 1 chunk to add, got {chunks}")
        with ProjectLock(self.project.root):
            self._tidy()
            self._extend_shot(index, chunks)

    def _is_current(self, plan: ShotPlan) -> bool:
        """Done from these inputs with intact files; a damaged shot is reported and redone."""
        p, i = self.project, plan.shot.index
        if p.is_done(i, plan.fingerprint):
            return True
        rec = p.shot_record(i)
        if rec is not None and rec.get("status") == "done" and rec.get("fingerprint") == plan.fingerprint:
            log.warning("shot %d: %s; generating it again", plan.shot.number, p.shot_problem(i))
        return False

    def _regenerate_shot(self, index: int, prompt: str | None, seed: int | None) -> None:
        self._check_index(index)
        self._require_done_before(index)
        ov = self.project.manifest.setdefault("overrides", {}).setdefault(str(index), {})
        if prompt is not None:
            ov["prompt"] = prompt
        if seed is not None:
            ov["seed"] = seed
        ov.pop("extra_chunks", None)
        self._generate_shot(self.plan()[index])
        self._write_summaries()

    def _extend_shot(self, index: int, chunks: int) -> None:
        self._check_index(index)
        if not self.project.is_done(index):
            raise ProjectError(f"shot {index + 1} is not finished; generate it before extending it")
        ov = self.project.manifest.setdefault("overrides", {}).setdefault(str(index), {})
        ov["extra_chunks"] = ov.get("extra_chunks", 0) + chunks
        prior = load_file(str(self.project.shot_state(index)))["latents"]
        self._generate_shot(self.plan()[index], prior_latents=prior)
        self._write_summaries()

    # -- internals -----------------------------------------------------------------------------------
    def _check_index(self, index: int) -> None:
        n = len(self.story.shots())
        if not 0 <= index < n:
            raise IndexError(f"shot {index + 1} does not exist: the story has {n} shots (1..{n})")

    def _require_done_before(self, index: int) -> None:
        # each shot's files are verified once an operation (a shot's cost stays flat along the story)
        missing = [i + 1 for i in range(index) if i not in self._verified and not self.project.is_done(i)]
        if missing:
            raise ProjectError(f"shots {missing} before shot {index + 1} are not finished: run generate first")
        self._verified.update(range(index))

    def _tidy(self) -> None:
        """Under the lock, before writing: say what was recovered, remove what a killed run left. Each
        operation reads the bank from disk once (another process may have written in between)."""
        p = self.project
        self._bank_after = None
        self._verified = set()
        if p.recovered:
            log.warning("%s: %s", p.root, p.recovered)
            p.recovered = None
        for part in p.remove_partial_files():
            log.info("removed %s, left by an interrupted write", part)

    def _start_project(self, force: bool) -> None:
        """Under the lock: tidy up, take in the story, record the setup."""
        p = self.project
        m = p.manifest
        self._tidy()
        if force or not p.exists:
            m.clear()
        else:
            p.check_same_story(self.story)
        self.story = p.import_story(self.story)
        m["story"] = {"name": self.story.story_name, "overview": self.story.story_overview, "base_dir": "."}
        m["model"] = {"id": self.models.model_id, "trained": self.models.trained,
                      "embedder": self.models.embedder_id, "layout": "m2v" if self.m2v else "context"}
        if self.models.setup is not None:
            m["model"]["setup"] = self.models.setup.model_dump(mode="json")
        if self.image_conditioned:
            m["model"]["image_encoder"] = self.models.image_encoder.model_id
        if not self.models.trained:
            m["model"]["warning"] = UNTRAINED_BANNER
        m["config"] = self.config.model_dump(mode="json")
        p.save()

    def _load_bank(self, index: int) -> KeyframeBank:
        """The bank as it stood before shot ``index``, with the story's reference images first."""
        p = self.project
        bank = None
        if self._bank_after is not None:  # the bank this operation just built: no reading it back
            bank = self._bank_after.before_shot(index)
        elif bank_exists(p.bank_dir):
            try:
                bank = KeyframeBank.load(p.bank_dir).before_shot(index)
            except Exception as e:  # noqa: BLE001 - any damage to derived data: rebuild it from the shots
                log.warning("%s: the keyframe bank is damaged (%s: %s); rebuilding it from the shots", p.bank_dir,
                            type(e).__name__, str(e)[:120])
        if bank is None or not self._bank_matches_shots(bank, index):
            bank = self._bank_from_shots(index)
        bank.dedupe_threshold = self.config.keyframes.dedupe_threshold
        if not any(e.kind == "reference" for e in bank) and self.story.references():
            refs = self.story.references()
            images = torch.stack([load_image(path, (self.config.height, self.config.width)) for _, _, path in refs])
            embs = self.models.embedder.embed_images(images)
            lats = self.models.codec.encode_images(images).cpu()
            ref_entries = [Keyframe(img, emb.float(), lat.float(), source_shot=-1, frame_index=j, kind="reference", label=name)
                           for j, ((_, name, _), img, emb, lat) in enumerate(zip(refs, images, embs, lats, strict=True))]
            bank.entries = ref_entries + bank.entries
        return bank

    def _bank_keyframes(self, index: int) -> list[tuple[dict, int]]:
        """(keyframe record, shot index) of every keyframe the finished shots before ``index`` added."""
        return [(k, r["index"]) for r in self.project.shots if r["index"] < index and r.get("status") == "done"
                for k in r.get("keyframes", []) if k.get("added_to_bank")]

    def _bank_matches_shots(self, bank: KeyframeBank, index: int) -> bool:
        names = [e.name for e in bank if e.kind != "reference"]
        return names == [k["name"] for k, _ in self._bank_keyframes(index)]

    def _bank_from_shots(self, index: int) -> KeyframeBank:
        """The bank before shot ``index``, rebuilt from the shots' state files and keyframe PNGs (exactly
        what the bank held: its pictures are those PNGs, its tensors are kept in the states)."""
        p, entries = self.project, []
        for k, shot_index in self._bank_keyframes(index):
            with safe_open(str(p.shot_state(shot_index)), "pt") as f:
                if f"bank.{k['frame_index']}.embedding" not in f.keys():
                    raise ProjectError(f"{p.root}: the keyframe bank is damaged and shot {shot_index + 1} predates "
                                       "rebuildable banks: regenerate from that shot, or generate --force")
                emb, lat = f.get_tensor(f"bank.{k['frame_index']}.embedding"), f.get_tensor(f"bank.{k['frame_index']}.latent")
            entries.append(Keyframe(load_image(p.keyframe_png(k["name"])), emb, lat, source_shot=shot_index,
                                    frame_index=k["frame_index"]))
        return KeyframeBank(entries, self.config.keyframes.dedupe_threshold)

    def _shot_cache(self, plan: ShotPlan, bank: KeyframeBank) -> list[RetrievedKeyframe]:
        if len(bank) == 0 or self.config.shot_cache.policy == "none":
            return []
        text_emb = self.models.embedder.embed_texts([plan.prompt])[0]
        wanted = set(plan.shot.options.characters) | ({plan.shot.options.location} - {None})
        required = [i for i, e in enumerate(bank) if e.kind == "reference" and e.label in wanted]
        if self.config.shot_cache.anchor_characters:
            required += [i for i in self._character_anchors(plan, bank) if i not in required]
        return self.policy.select(bank, text_emb, required)

    def _named_characters(self, plan: ShotPlan) -> set[str]:
        """Sheet characters a shot names: its ``characters`` option, or the name as a word of its prompt."""
        named = set(plan.shot.options.characters)
        for c in self.story.characters:
            if re.search(rf"\b{re.escape(c.name)}\b", plan.prompt):
                named.add(c.name)
        return named

    def _character_anchors(self, plan: ShotPlan, bank: KeyframeBank) -> list[int]:
        """Bank indices of each named character's anchor: the first keyframe of the earliest earlier
        shot that names it (characters with a reference image in the bank have that instead)."""
        with_reference = {e.label for e in bank if e.kind == "reference"}
        todo = self._named_characters(plan) - with_reference
        if not todo:
            return []
        plans = {p.shot.index: p for p in self.plan()}
        anchors, seen = [], set()
        for i, e in enumerate(bank):  # bank order is story order: a shot's first keyframe comes first
            if not todo:
                break
            if e.kind == "reference" or e.source_shot in seen or e.source_shot not in plans:
                continue
            seen.add(e.source_shot)  # its other keyframes name the same characters: one look per shot
            found = todo & self._named_characters(plans[e.source_shot])
            if found:
                anchors.append(i)
                todo -= found
        return anchors

    def _tail_frames(self, index: int) -> torch.Tensor:
        """The last decoded frames ``[k, 3, H, W]`` of shot ``index`` (from its state file, without
        reading its latents)."""
        with safe_open(str(self.project.shot_state(index)), "pt") as f:
            return f.get_tensor("tail_frames")

    def _continuation_frames(self, index: int) -> torch.Tensor | None:
        """Latents carried over from the previous shot for a ``cut: false`` shot (MI2V / MM2V)."""
        mode = self.config.continuation
        if mode == "none" or index == 0:
            return None
        tail = self._tail_frames(index - 1)
        codec = self.models.codec
        if mode == "mi2v":
            return codec.encode_images(tail[-1:]).cpu()  # [1, C, 1, h, w]
        k = min(self.config.mm2v_frames, tail.shape[0])
        k = 1 + codec.temporal_factor * ((k - 1) // codec.temporal_factor)
        return codec.encode(tail[-k:].permute(1, 0, 2, 3)[None]).cpu()  # [1, C, 1 + (k-1)/4, h, w]

    def _select_keyframes(self, frames: torch.Tensor, bank: KeyframeBank, index: int):
        """``(selection, embeddings [T, D], what new keyframes are deduplicated against, the frames
        keyframes are taken from)``.

        filmweaver: every frame embedded (centre crop), deduplicated against the whole bank, this shot's
        new keyframes included. StoryMem: the frames as read back from the 8-bit video, resized and
        embedded whole for selection; the bank keeps each keyframe's full-frame embedding, and new
        keyframes are compared only with earlier shots' (at 0.9)."""
        embedder = self.models.embedder
        if not isinstance(self.selector, StoryMemKeyframeSelector):
            embs = embedder.embed_images(frames)
            return self.selector.select(embs, frames), embs, bank, frames
        frames8 = as_8bit(frames)
        prepared = self.selector.prepare(frames8)
        sel = self.selector.select(embedder.embed_images(prepared, resize="squash"), prepared)
        # only the keyframes' rows are read: each keyframe's full-frame embedding
        embs = torch.zeros(frames.shape[0], 0)
        if sel.frame_indices:
            full = embedder.embed_images(frames8[sel.frame_indices], resize="squash")
            embs = full.new_zeros(frames.shape[0], full.shape[1])
            embs[sel.frame_indices] = full
        return sel, embs, bank.before_shot(index), frames8

    def _storymem_chunk(self, plan: ShotPlan, bank: KeyframeBank, retrieved: list[RetrievedKeyframe],
                        text: torch.Tensor, negative: torch.Tensor, image: torch.Tensor | None):
        """One shot as StoryMem's ``WanM2V.generate`` makes it: memory keyframes and video denoised as
        one sequence, the video conditioned on a grey clip (or a continuation's frames). Returns
        ``(video latents [1, C, F, h, w], frames to trim, continuation, mode)``."""
        cfg, models = self.config, self.models
        backbone, codec, i = models.backbone, models.codec, plan.shot.index
        h, w = self.latent_hw
        lead, continuation = None, None
        if not plan.shot.cut and cfg.continuation != "none" and i > 0:
            tail = self._tail_frames(i - 1)
            k = 1 if cfg.continuation == "mi2v" else min(cfg.mm2v_frames, tail.shape[0])
            lead = as_8bit(tail[-k:])  # the previous shot's frames as StoryMem reads them back from its files
            continuation = cfg.continuation
        keep_lead = lead is not None and (continuation == "mm2v" or cfg.storymem.corrected_mi2v)
        clip = StoryMemLayout.condition_clip(codec.num_pixel_frames(cfg.chunk_frames), cfg.height, cfg.width,
                                             lead if keep_lead else None)
        memory = (torch.cat([bank.entries[r.bank_index].latent for r in retrieved], dim=1)[None] if retrieved else None)
        layout = StoryMemLayout(memory, codec.encode(clip).cpu(), 0 if lead is None else lead.shape[0],
                                codec.temporal_factor)
        gen = torch.Generator(device="cpu").manual_seed(plan.seed)
        noise = torch.randn((1, codec.latent_channels, layout.noise_frames(cfg.chunk_frames), h, w), generator=gen)
        if not retrieved and models.first_shot_backbone is not None:  # the T2V release, its own sampling settings
            velocity, sampler = self._velocity_fn([]), self.first_shot_sampler
        else:
            def velocity(x, t, e):
                return backbone(layout.inputs(x.to(backbone.dtype)), t, e.to(backbone.dtype),
                                encoder_hidden_states_image=image).float()

            sampler = self.sampler
        with self.step_cache.scope(f"shot{i}-chunk0"):
            latents = sampler.sample(velocity, noise.to(backbone.device), text, negative, progress=self.progress,
                                     desc=f"shot {plan.shot.number}")
        mode = "shot" if retrieved else ("temporal" if lead is not None else "text")
        return layout.video(latents), 0 if lead is None else lead.shape[0], continuation, mode

    def _generate_shot(self, plan: ShotPlan, prior_latents: torch.Tensor | None = None) -> dict:
        cfg, models, p = self.config, self.models, self.project
        shot, i = plan.shot, plan.shot.index
        backbone, codec = models.backbone, models.codec
        t_start, cpu_start = time.perf_counter(), time.process_time()
        if i > 0:
            self._require_done_before(i)

        # 1. Memory: bank before this shot, shot cache, temporal cache (+ continuation).
        bank = self._load_bank(i)
        retrieved = self._shot_cache(plan, bank)
        # StoryMem's layout has no temporal cache: a continuation goes into the video's condition
        temporal = TemporalCache(cfg.temporal_cache.schedule if cfg.temporal_cache.enabled and not self.storymem_layout
                                 else [])
        continuation = None
        if prior_latents is not None:
            temporal.push(prior_latents.to(backbone.device))
        elif not shot.cut and cfg.temporal_cache.enabled and not self.storymem_layout:
            carried = self._continuation_frames(i)
            if carried is not None:
                temporal.push(carried.to(backbone.device))
                continuation = cfg.continuation
        shot_ctx = self._shot_context(bank, retrieved, temporal.capacity)
        image_source, image = self._image_condition(i, bank, retrieved, continuation, prior_latents)
        t_memory = time.perf_counter() - t_start

        # 2. Text, then the chunks.
        # in the backbone's dtype once: the same tensors at every step (a causal-context model's
        # key/value cache recognises the prompt by identity)
        text = models.prompt_encoder.encode([plan.prompt]).to(backbone.device, backbone.dtype)
        negative = models.prompt_encoder.encode([plan.negative_prompt]).to(backbone.device, backbone.dtype)
        h, w = self.latent_hw
        c_lat = codec.latent_channels
        chunks = []
        # an extension keeps the log of the chunks it builds on
        chunk_log = list(p.shot_record(i)["chunks"]) if prior_latents is not None else []
        first_chunk = 0 if prior_latents is None else self._prior_chunks(prior_latents)
        trim = 0  # video frames a StoryMem continuation fixed, dropped from the shot as StoryMem does
        if self.storymem_layout:
            t0 = time.perf_counter()
            latents, trim, continuation, mode = self._storymem_chunk(plan, bank, retrieved, text, negative, image)
            chunks.append(latents.cpu())
            chunk_log.append({"chunk": 0, "mode": mode, "seed": plan.seed, "seconds": round(time.perf_counter() - t0, 3),
                              "layout": "storymem", "memory_frames": len(retrieved)})
        elif cfg.keyframe_first and prior_latents is None and len(temporal) == 0:
            t0 = time.perf_counter()
            seed = plan.seed + 7_919
            context = present_at_timestep(list(shot_ctx), torch.Generator(device="cpu").manual_seed(seed + 17))
            noise = torch.randn((1, c_lat, 1, h, w), generator=torch.Generator(device="cpu").manual_seed(seed))
            with self.step_cache.scope(f"shot{i}-anchor"):
                anchor = self.sampler.sample(self._velocity_fn(context, image), noise.to(backbone.device), text, negative,
                                             progress=self.progress, desc="anchor frame",
                                             velocity_without_memory=self._velocity_without_memory(context, image))
            temporal.push(anchor)
            continuation = "keyframe_first"
            chunk_log.append({"chunk": "anchor", "mode": MODES[(bool(shot_ctx), False)], "seed": seed,
                              "seconds": round(time.perf_counter() - t0, 3),
                              "context_tokens": backbone.count_tokens(context, (h, w))})
        for c in progress_bar(range(first_chunk, 0 if self.storymem_layout else plan.num_chunks),
                      desc=f"shot {shot.number} chunks", leave=False, enabled=self.progress):
            t0 = time.perf_counter()
            seed = plan.seed if c == 0 else plan.seed + 1_000_003 * c
            # cache frames are shown at the noise level the model was trained with (asymmetric noising)
            context = present_at_timestep(shot_ctx + temporal.context(cfg.temporal_cache.timestep),
                                          torch.Generator(device="cpu").manual_seed(seed + 17))
            mode = MODES[(bool(shot_ctx), len(temporal) > 0)]
            gen = torch.Generator(device="cpu").manual_seed(seed)
            noise = torch.randn((1, c_lat, cfg.chunk_frames, h, w), generator=gen, dtype=torch.float32)
            velocity = self._velocity_fn(context, image)
            with self.step_cache.scope(f"shot{i}-chunk{c}"):
                latents = self.sampler.sample(velocity, noise.to(backbone.device), text, negative,
                                              progress=self.progress, desc=f"chunk {c + 1}/{plan.num_chunks}",
                                              velocity_without_memory=self._velocity_without_memory(context, image))
            temporal.push(latents)
            chunks.append(latents.cpu())
            chunk_log.append({"chunk": c, "mode": mode, "seed": seed, "seconds": round(time.perf_counter() - t0, 3),
                              "context_tokens": backbone.count_tokens(context, (h, w))})
        all_latents = torch.cat(([prior_latents.cpu()] if prior_latents is not None else []) + chunks, dim=2)
        t_denoise = time.perf_counter() - t_start - t_memory

        # 3. Decode, select keyframes, update the bank.
        t1 = time.perf_counter()
        frames = codec.decode(all_latents.to(codec.device))[0].permute(1, 0, 2, 3).cpu()  # [T, 3, H, W]
        frames = frames[trim:]
        t_decode = time.perf_counter() - t1
        t2 = time.perf_counter()
        sel, embs, earlier, source = self._select_keyframes(frames, bank, i)
        kf_records, kf_images = [], source[sel.frame_indices]
        kf_latents = codec.encode_images(kf_images).cpu()
        bank_tensors = {}
        for fi, img, lat in zip(sel.frame_indices, kf_images, kf_latents, strict=True):
            # as the bank saves and reloads it (8-bit picture, float32 tensors): a bank kept in memory
            # between shots equals one read back from disk, so a resumed story is the same film
            kf = Keyframe(as_8bit(img), embs[fi].float(), lat.float(), source_shot=i, frame_index=fi)
            max_sim = earlier.max_similarity(embs[fi])
            added = max_sim <= bank.dedupe_threshold
            if added:
                bank.add(kf, dedupe=False)
                # kept in the shot's state too: the bank can be rebuilt from the shots alone
                bank_tensors[f"bank.{fi}.embedding"] = kf.embedding.contiguous()
                bank_tensors[f"bank.{fi}.latent"] = kf.latent.contiguous()
            kf_records.append({"name": kf.name, "file": p.rel(p.keyframe_png(kf.name)), "frame_index": fi,
                               "added_to_bank": added, "max_bank_similarity": round(max_sim, 4)})
            save_png(to_pil(img), p.keyframe_png(kf.name))
        # keyframes an earlier version of this shot selected and this one did not
        kept = {p.keyframe_png(r["name"]).name for r in kf_records}
        for old in p.keyframes_dir.glob(f"shot{i + 1:03d}_f*.png"):
            if old.name not in kept:
                old.unlink()

        t_keyframes = time.perf_counter() - t2

        # 4. Files first, manifest last. The storyboard's thumbnails are kept in the shot's state, so
        # the summaries never decode the shots again (a shot's cost stays flat along the story).
        t3 = time.perf_counter()
        write_video(p.shot_video(i), frames, fps=cfg.fps)
        tail = frames[-max(1, cfg.mm2v_frames):].contiguous()
        picks = sorted({0, frames.shape[0] // 2, frames.shape[0] - 1})
        with atomic_path(p.shot_state(i)) as tmp:
            save_file({"latents": all_latents.contiguous(), "tail_frames": tail, **bank_tensors,
                       "storyboard_frames": storyboard_thumbnails(frames[picks]),
                       "storyboard_index": torch.tensor(picks)}, tmp)
        # the bank is kept in memory for the next shot and saved when the operation ends (it is derived
        # data: a run killed before then rebuilds it exactly from the shots' states and keyframe PNGs)
        self._bank_after = bank
        t_write = time.perf_counter() - t3
        record = {
            "index": i, "number": shot.number, "scene_num": shot.scene_num, "json_path": shot.json_path,
            "prompt": plan.prompt, "negative_prompt": plan.negative_prompt, "cut": shot.cut, "seed": plan.seed,
            "characters": shot.options.characters, "location": shot.options.location,
            "status": "done", "fingerprint": plan.fingerprint, "num_chunks": plan.num_chunks,
            "num_latent_frames": all_latents.shape[2], "num_frames": frames.shape[0], "fps": cfg.fps,
            "continuation": continuation, "chunks": chunk_log,
            **({"image_condition": image_source} if self.image_conditioned else {}),
            "shot_cache": [self._describe_retrieved(bank, r, ctx_pos) for r, ctx_pos in
                           zip(retrieved, self._memory_positions(len(retrieved), temporal.capacity).tolist(), strict=True)],
            "keyframes": kf_records, "keyframe_threshold": sel.threshold,
            "files": {"video": p.file_entry(p.shot_video(i)), "state": p.file_entry(p.shot_state(i)),
                      "keyframes": [p.file_entry(p.keyframe_png(r["name"])) for r in kf_records]},
            "timings": {"memory_s": round(t_memory, 3), "denoise_s": round(t_denoise, 3),
                        "decode_s": round(t_decode, 3), "keyframes_s": round(t_keyframes, 3),
                        "write_s": round(t_write, 3), "total_s": round(time.perf_counter() - t_start, 3),
                        # CPU seconds of this process (all threads): the work, without the time a busy
                        # or virtual machine spent elsewhere
                        "cpu_s": round(time.process_time() - cpu_start, 3)},
        }
        self._verified.add(i)
        record["finished_at"] = round(time.time(), 3)  # wall clock: successive shots' gaps are their real cost
        p.set_shot_record(record)
        stale = p.mark_stale_after(i, f"shot {shot.number} was regenerated")
        self._verified.difference_update(stale)
        if stale:
            record["made_stale"] = [s + 1 for s in stale]
        p.save()
        return record

    def _image_condition(self, index: int, bank: KeyframeBank, retrieved: list[RetrievedKeyframe],
                         continuation: str | None, prior_latents: torch.Tensor | None) -> tuple[str | None, torch.Tensor | None]:
        """For an image-conditioned backbone (Wan2.1-I2V): the shot's conditioning image and its CLIP
        image tokens ``[1, L_img, image_dim]``, else ``(None, None)``.

        The image is what the shot should look like it continues from: the last frame already made
        (an extension's, or the previous shot's for a ``cut: false`` continuation), else the retrieved
        keyframe most similar to the prompt (who and where), else a black frame (the first shot: the
        release model always sees an image; pass ``--first-shot-model`` with a text-to-video release to
        generate it without one)."""
        if not self.image_conditioned:
            return None, None
        if prior_latents is not None:  # extending this shot: its own last frame so far
            image, source = self._tail_frames(index)[-1], "its own last frame"
        elif continuation is not None:
            image, source = self._tail_frames(index - 1)[-1], f"shot {index}'s last frame"
        elif retrieved:
            best = max(retrieved, key=lambda r: -math.inf if r.similarity is None else r.similarity)
            entry = bank.entries[best.bank_index]
            image, source = entry.image, f"keyframe {entry.name}"
        else:
            image, source = torch.zeros(3, self.config.height, self.config.width), "none (black frame)"
        backbone = self.models.backbone
        embeds = self.models.image_encoder.encode(image[None].float()).to(backbone.device, backbone.dtype)
        return source, embeds

    def _prior_chunks(self, prior_latents: torch.Tensor) -> int:
        return math.ceil(prior_latents.shape[2] / self.config.chunk_frames)

    def _memory_positions(self, n: int, temporal_capacity: int) -> torch.Tensor:
        return memory_positions(n, temporal_capacity, self.config.shot_cache.gap)

    def _shot_context(self, bank: KeyframeBank, retrieved: list[RetrievedKeyframe], capacity: int) -> list[ContextFrames]:
        if not retrieved:
            return []
        lat = torch.cat([bank.entries[r.bank_index].latent for r in retrieved], dim=1)[None]  # [1, C, K, h, w]
        return [ContextFrames(lat, self._memory_positions(len(retrieved), capacity), self.config.shot_cache.timestep,
                              1, kind="shot", spatial=self.config.shot_cache.compression)]

    def _describe_retrieved(self, bank: KeyframeBank, r: RetrievedKeyframe, position: float) -> dict:
        e = bank.entries[r.bank_index]
        return {"keyframe": e.name, "kind": e.kind, "label": e.label, "source_shot": e.source_shot + 1 if e.source_shot >= 0 else None,
                "frame_index": e.frame_index, "similarity": None if r.similarity is None else round(r.similarity, 4),
                "role": r.role, "position": position}

    # -- step caching ------------------------------------------------------------------------------
    def _velocity_without_memory(self, context: list[ContextFrames], image: torch.Tensor | None = None):
        """The velocity without the shot-cache keyframes (memory guidance), or None when it is off or
        there are no keyframes in ``context``."""
        if self.config.sampler.memory_guidance_scale == 1.0 or not any(b.kind == "shot" for b in context):
            return None
        return self._velocity_fn([b for b in context if b.kind != "shot"], image)

    def _velocity_fn(self, context: list[ContextFrames], image: torch.Tensor | None = None):
        """``velocity(x, t, text)`` of the backbone with ``context`` (and, for Wan2.1-I2V, the shot's CLIP
        image tokens ``image [1, L_img, image_dim]`` from :meth:`_image_condition`)."""
        backbone = self.models.backbone
        dtype = backbone.dtype
        first_shot = self.models.first_shot_backbone
        if not context and first_shot is not None:  # StoryMem: a T2V model for what has no memory
            def velocity(x, t, text):
                return first_shot(x.to(first_shot.dtype), t, text.to(first_shot.dtype)).float()

            return velocity

        if not self.m2v:
            ctx = [dataclasses.replace(b, latents=b.latents.to(backbone.device, dtype)) for b in context]
            # one chunk's context is fixed: a causal-context model computes its keys/values once here
            kv_cache = ContextKVCache()

            def velocity(x, t, text):
                return backbone(x.to(dtype), t, text.to(dtype), context=ctx, kv_cache=kv_cache).float()

            return velocity

        # StoryMem layout: every context frame becomes a memory frame (keyframes fixed, recent frames
        # sliding), at full resolution and the generated frames' timestep.
        mem, fixed, pos = [], [], []
        for b in context:
            lat = b.latents
            mem.append(lat)
            fixed += [b.kind == "shot"] * lat.shape[2]
            pos.append(b.positions)
        memory = torch.cat(mem, dim=2).to(backbone.device, dtype) if mem else None
        positions = torch.cat(pos) if pos else None

        def velocity(x, t, text):
            x_in, ctx = m2v_inputs(x.to(dtype), memory, fixed, positions)
            return backbone(x_in, t, text.to(dtype), context=ctx, encoder_hidden_states_image=image).float()

        return velocity

    # -- summaries: film, storyboard, memory sheet -------------------------------------------------
    def _write_summaries(self) -> None:
        """After an operation: the step cache's calibration, the keyframe bank, then the pictures and
        the film (:mod:`filmweaver.summaries`)."""
        self.step_cache.write_calibration(self.project.root / "mag_ratios.json")
        if self._bank_after is not None:
            self._bank_after.save(self.project.bank_dir)
        write_summaries(self.project, self.config.shot_cache.policy, self.config.fps,
                        None if self.models.trained else UNTRAINED_BANNER)
