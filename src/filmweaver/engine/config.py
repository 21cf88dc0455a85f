"""Every setting that changes the film, in one place: :class:`EngineConfig` and its sections.

Each default is written here once; a model's own defaults (resolution, steps, the settings it was
trained with) fill the fields nobody set (:meth:`EngineConfig.resolve`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from filmweaver.memory.shot_cache import DEFAULT_K, DEFAULT_MAX_SIZE, DEFAULT_SINK
from filmweaver.memory.temporal_cache import DEFAULT_SCHEDULE
from filmweaver.sampler import SamplerConfig
from filmweaver.script import MAX_SEED

if TYPE_CHECKING:
    from filmweaver.models import FilmModels


class ShotCacheConfig(BaseModel):
    policy: Literal["topk", "entity", "sink_window", "none"] = "topk"
    k: int = Field(DEFAULT_K, ge=1, le=64)  # topk / entity: keyframes per shot (policy "none": no memory)
    # entity: which kinds of the shot's entities memory must represent (the entity policy's guarantee)
    entity_kinds: list[Literal["character", "location", "object"]] = Field(
        default_factory=lambda: ["character", "location", "object"])
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
    # where each keyframe's characters are (boxes, for the entity policy and the memory sheet):
    # none | opencv-hog (people) | opencv-face | a plug-in package.module:factory (entity_detector_model:
    # its hub id or directory)
    entity_detector: str = Field("none", pattern=r"^(none|opencv-hog|opencv-face|[\w.]+:\w+)$")
    entity_detector_model: str | None = None


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


# model defaults that resolve() fills in by rules of their own (unset-only, or sampler fields by bare name)
RESOLVED_APART = ("height", "width", "fps", "chunk_frames", "num_inference_steps", "guidance_scale")


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
    # regional prompts: in a shot of several characters, each one's description in the prompt is read
    # only where that character is drawn (its strip of the frame by the order the shot names them),
    # so descriptions do not mix; names are read everywhere (filmweaver.backbone.regional_text;
    # in-context backbones)
    regional_prompts: bool = False
    # the bias against another character's description (None: masked out entirely)
    regional_strength: float | None = Field(None, gt=0, allow_inf_nan=False)
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
        # other top-level settings the model recommends (regional_prompts, ...)
        for key, value in d.items():
            if key in type(self).model_fields and key not in RESOLVED_APART and key not in explicit \
                    and not isinstance(getattr(cfg, key), BaseModel):
                cfg = cfg.model_validate({**cfg.model_dump(), key: value})
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
