"""The curation pipeline's settings: one pydantic model, every default written once (``filmweaver
curate --config FILE --set key=value`` reaches every field; unknown keys are errors)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShotDetection(_Section):
    detector: str = "transnetv2"  # transnetv2 | pyscenedetect
    threshold: float = 0.5  # transnetv2: transition probability above which a frame is a transition
    adaptive_threshold: float = 3.0  # pyscenedetect: AdaptiveDetector's
    fade_threshold: float = 12.0  # pyscenedetect: ThresholdDetector's mean-pixel level of "black"
    min_shot_frames: int = 8  # pyscenedetect: no cut closer than this to the last one
    edge_weight: float = Field(0.0, ge=0.0)  # pyscenedetect: weight of edge changes beside hue, saturation, luma


class Filters(_Section):
    min_shot_seconds: float = 1.0
    max_people: int = 3  # shots showing more are dropped (by ``people_detector``)
    people_detector: str = "opencv-hog"  # none | opencv-hog | opencv-face | package.module:factory
    people_frames: int = 3  # frames per shot the detector looks at (the most people in any counts)
    drop_static: bool = False
    static_threshold: float = 0.004  # mean absolute change between a shot's sampled frames (0-1 pixels)
    drop_duplicates: bool = False
    duplicate_similarity: float = 0.97  # cosine of a shot's embedding to an earlier kept shot's


class Scenes(_Section):
    # a CLIP hub id or directory (builtin: the synthetic world's CLIP), or package.module:factory
    embedder: str = "builtin"
    window: int = 3  # a shot joins the scene if it resembles one of the scene's last `window` shots
    similarity: float = 0.8  # cosine above which two shots are of one scene
    min_shots: int = 2
    max_shots: int = 5


class Captions(_Section):
    captioner: str = "none"  # none | a transformers VLM hub id / directory | package.module:factory
    group: bool = True  # a scene's shots captioned together (one description per character)
    validate_captions: bool = True
    frames_per_shot: int = 3
    max_new_tokens: int = 256
    # editable prompt templates ({n}: shots in the scene)
    group_prompt: str = (
        "These are {n} consecutive shots of one film scene, in order. Give every recurring character one "
        "short name (Character 1, Character 2, ...) and one description of their look, the same in every "
        "shot. Then describe each shot in one sentence naming its characters. Answer as JSON: "
        '{{"characters": [{{"name": ..., "description": ...}}], "shots": ["...", ...]}}')
    shot_prompt: str = "Describe this film shot in one sentence: who is in it, what they do, where."
    validate_prompt: str = (
        "Caption: \"{caption}\"\nDoes the caption describe this shot correctly and specifically? Answer "
        "'yes', or 'no: ' followed by a corrected, specific caption.")


class Latents(_Section):
    """Precomputed model inputs in each sample (what training would otherwise compute every epoch)."""

    model: str | None = None  # None: none; "synth" / "tiny" / a Wan preset, or a diffusers directory / hub id
    preset: str | None = None  # with model = a directory of a Wan release: its preset (its settings)
    height: int | None = None  # default: the model's own resolution
    width: int | None = None
    text: bool = True  # the shots' prompt embeddings too


class CurateConfig(_Section):
    shots: ShotDetection = Field(default_factory=ShotDetection)
    filters: Filters = Field(default_factory=Filters)
    scenes: Scenes = Field(default_factory=Scenes)
    captions: Captions = Field(default_factory=Captions)
    latents: Latents = Field(default_factory=Latents)
    clip_height: int = 480  # clips are written at this height (never enlarged), the width in proportion
    samples_per_shard: int = 64
    device: str = "cpu"
    workers: int = 0  # videos processed in parallel (processes, or Ray actors); 0: one per two cores
