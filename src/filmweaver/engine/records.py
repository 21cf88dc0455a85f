"""What the manifest records about each shot and chunk, as typed records: the engine writes them
(``to_manifest``), the summaries, the CLI, the benchmarks, the evaluation and the app read them back
(``from_manifest``). A field an older manifest lacks reads as its default, or ``None``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# the inference mode of a chunk, from what its caches hold: (shot cache?, temporal cache?)
MODES = {(False, False): "text", (False, True): "temporal", (True, False): "shot", (True, True): "both"}


def _without_unset(d: dict, optional: tuple[str, ...]) -> dict:
    return {k: v for k, v in d.items() if not (k in optional and v is None)}


def _from_dict(cls, d: dict, **typed):
    """``cls`` from a manifest dict: its known fields (unknown keys are ignored), a missing one as its
    default or ``None``; ``typed`` replaces fields already converted to their record types."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in typed:
            values[f.name] = typed[f.name]
        elif f.name in d:
            values[f.name] = d[f.name]
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            values[f.name] = None
    return cls(**values)


class _FromManifest:
    @classmethod
    def from_manifest(cls, d: dict):
        """The record from its manifest dict (see :func:`_from_dict`)."""
        return _from_dict(cls, d)


@dataclass
class ChunkRecord(_FromManifest):
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
class KeyframeRecord(_FromManifest):
    name: str
    file: str  # relative to the project
    frame_index: int
    added_to_bank: bool
    max_bank_similarity: float
    entities: list[str] = field(default_factory=list)  # whom and what it shows (its shot's entities)
    boxes: dict[str, list[float]] = field(default_factory=dict)  # located characters: x0, y0, x1, y1 (fractions)


@dataclass
class MemoryRecord(_FromManifest):
    """One keyframe in a shot's shot cache: which, why (``role``, ``similarity``) and where it sits."""

    keyframe: str
    kind: str  # "shot" (from an earlier shot) or "reference" (a user's image)
    label: str | None
    source_shot: int | None  # its shot's number (None: a reference image)
    frame_index: int
    similarity: float | None
    role: str
    position: float
    entities: list[str] = field(default_factory=list)


@dataclass
class ShotTimings(_FromManifest):
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
    chunks: list[ChunkRecord]  # an extension's after the chunks it builds on
    image_condition: str | None  # Wan2.1-I2V: what the conditioning image was (absent otherwise)
    shot_cache: list[MemoryRecord]
    keyframes: list[KeyframeRecord]
    keyframe_threshold: float
    files: dict  # video, state, keyframes: Project.file_entry() each
    timings: ShotTimings
    finished_at: float  # wall clock: successive shots' gaps are their real cost
    made_stale: list[int] | None = None  # numbers of the later shots this one made stale

    def to_manifest(self) -> dict:
        d = dataclasses.asdict(self)
        d["chunks"] = [c.to_manifest() for c in self.chunks]
        return _without_unset(d, ("image_condition", "made_stale"))

    @classmethod
    def from_manifest(cls, d: dict) -> ShotRecord:
        return _from_dict(cls, d, chunks=[ChunkRecord.from_manifest(c) for c in d.get("chunks", [])],
                          shot_cache=[MemoryRecord.from_manifest(m) for m in d.get("shot_cache", [])],
                          keyframes=[KeyframeRecord.from_manifest(k) for k in d.get("keyframes", [])],
                          timings=ShotTimings.from_manifest(d.get("timings", {})))

    @property
    def done(self) -> bool:
        return self.status == "done"

    @property
    def modes(self) -> list[str]:
        """Each chunk's inference mode, in order."""
        return [c.mode for c in self.chunks]
