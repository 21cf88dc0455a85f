"""What the manifest records about each shot and chunk, as typed records (written by the engine,
read by the summaries, the evaluation and the app)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# the inference mode of a chunk, from what its caches hold: (shot cache?, temporal cache?)
MODES = {(False, False): "text", (False, True): "temporal", (True, False): "shot", (True, True): "both"}


def _without_unset(d: dict, optional: tuple[str, ...]) -> dict:
    return {k: v for k, v in d.items() if not (k in optional and v is None)}


@dataclass
class ChunkRecord:
    chunk: int | str  # its index in the shot, or "anchor" (keyframe-first's one-frame chunk)
    mode: str  # MODES: text | temporal | shot | both
    seed: int
    seconds: float
    context_tokens: int | None = None  # in-context backbones: tokens the context added
    layout: str | None = None  # "storymem": StoryMem's M2V layout (memory denoised with the video)
    memory_frames: int | None = None  # StoryMem's layout: keyframes in the input

    def to_manifest(self) -> dict:
        return _without_unset(dataclasses.asdict(self), ("context_tokens", "layout", "memory_frames"))


@dataclass
class KeyframeRecord:
    name: str
    file: str  # relative to the project
    frame_index: int
    added_to_bank: bool
    max_bank_similarity: float
    entities: list[str] = field(default_factory=list)  # whom and what it shows (its shot's entities)
    boxes: dict[str, list[float]] = field(default_factory=dict)  # located characters: x0, y0, x1, y1 (fractions)


@dataclass
class ShotTimings:
    memory_s: float
    denoise_s: float
    decode_s: float
    keyframes_s: float
    write_s: float
    total_s: float
    # CPU seconds of this process (all threads): the work, without the time a busy or virtual machine
    # spent elsewhere
    cpu_s: float


@dataclass
class ShotRecord:
    """One finished shot in the manifest (``status`` becomes ``stale`` when an earlier shot changes)."""

    index: int
    number: int
    scene_num: int | None
    json_path: str
    prompt: str
    negative_prompt: str
    cut: bool
    seed: int
    characters: list[str]
    location: str | None
    entities: dict[str, list[str]]  # what the shot shows: characters, locations, objects
    status: str
    fingerprint: str
    num_chunks: int
    num_latent_frames: int
    num_frames: int
    fps: int
    continuation: str | None  # mi2v | mm2v | keyframe_first | None
    chunks: list[dict]  # ChunkRecord.to_manifest(), an extension's after the chunks it builds on
    image_condition: str | None  # Wan2.1-I2V: what the conditioning image was (absent otherwise)
    shot_cache: list[dict]  # ShotMemory.describe()
    keyframes: list[KeyframeRecord]
    keyframe_threshold: float
    files: dict  # video, state, keyframes: Project.file_entry() each
    timings: ShotTimings
    finished_at: float  # wall clock: successive shots' gaps are their real cost
    made_stale: list[int] | None = None  # numbers of the later shots this one made stale

    def to_manifest(self) -> dict:
        return _without_unset(dataclasses.asdict(self), ("image_condition", "made_stale"))
