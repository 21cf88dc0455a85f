"""Keyframe selection and the keyframe bank (long-term memory of a story).

Selection follows StoryMem: embed every frame of a finished shot; the first usable frame is a
keyframe; a later frame becomes one when its cosine to the last keyframe falls below a threshold.
The threshold starts at 0.9 and is lowered by 0.01 until at most ``max_per_shot`` keyframes remain.
Frames below a quality threshold are never candidates, and a keyframe too similar (> 0.9) to one
already in the bank is not added (dedupe).
"""

from __future__ import annotations

import importlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from filmweaver.io import atomic_path, to_pil


class QualityScorer(Protocol):
    """Scores frames ``[N, 3, H, W]`` in ``[0, 1]`` -> ``[N]`` (higher is better)."""

    name: str

    def score(self, images: torch.Tensor) -> torch.Tensor: ...


class ContrastScorer:
    """A model-free quality proxy: luminance standard deviation (flat, washed-out frames score low).

    Stands in where an aesthetic model (HPSv3, LAION head) is not available; plug a real one in
    through :class:`QualityScorer`.
    """

    name = "contrast"

    def score(self, images: torch.Tensor) -> torch.Tensor:
        lum = 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]
        return lum.flatten(1).std(dim=1)


class HPSv3Scorer:
    """StoryMem's quality filter: HPSv3 (a Qwen2-VL preference model, package ``hpsv3``) with an empty
    prompt; StoryMem drops frames scoring below 3.0. ``checkpoint``: a local file or hub id, loaded only
    when named (``pip install hpsv3``); frames are scored as 8-bit images, truncated as StoryMem's
    ``astype(np.uint8)`` does."""

    name = "hpsv3"

    def __init__(self, checkpoint: str | None = None, device: str = "cpu"):
        try:
            from hpsv3 import HPSv3RewardInferencer
        except ImportError as e:
            raise ImportError("the HPSv3 quality filter needs the hpsv3 package: pip install hpsv3") from e
        self.model = HPSv3RewardInferencer(checkpoint_path=checkpoint, device=device)

    def score(self, images: torch.Tensor) -> torch.Tensor:
        arr = (images.float().clamp(0, 1) * 255).permute(0, 2, 3, 1).cpu().numpy().astype(np.uint8)
        rewards = self.model.reward(image_paths=[Image.fromarray(a) for a in arr], prompts=[""] * len(arr))
        return torch.tensor([float(r[0]) for r in rewards])


def make_quality_scorer(name: str, checkpoint: str | None = None, device: str = "cpu") -> QualityScorer | None:
    """``none``, ``contrast``, ``hpsv3`` (with ``checkpoint``), or a plug-in ``package.module:factory``
    called as ``factory(checkpoint=..., device=...)``."""
    if name == "none":
        return None
    if name == "contrast":
        return ContrastScorer()
    if name == "hpsv3":
        return HPSv3Scorer(checkpoint, device)
    if ":" in name:
        module, factory = name.split(":", 1)
        return getattr(importlib.import_module(module), factory)(checkpoint=checkpoint, device=device)
    raise ValueError(f"quality scorer {name!r}: expected none, contrast, hpsv3 or package.module:factory")


@dataclass
class KeyframeSelection:
    frame_indices: list[int]
    threshold: float  # the threshold the adaptive loop settled on
    quality: list[float] | None = None


@dataclass
class KeyframeSelector:
    max_per_shot: int = 3
    start_threshold: float = 0.9
    threshold_step: float = 0.01
    quality_scorer: QualityScorer | None = None
    quality_threshold: float | None = None

    def select(self, embeddings: torch.Tensor, images: torch.Tensor | None = None) -> KeyframeSelection:
        """``embeddings [T, D]`` (unit norm) of a shot's frames -> chosen frame indices, in order."""
        t = embeddings.shape[0]
        usable = list(range(t))
        quality = None
        if self.quality_scorer is not None and self.quality_threshold is not None:
            if images is None:
                raise ValueError("a quality scorer needs the frames themselves")
            quality = self.quality_scorer.score(images).tolist()
            usable = [i for i in usable if quality[i] >= self.quality_threshold]
            if not usable:  # nothing passes: keep the best frame rather than lose the shot's memory
                usable = [int(np.argmax(quality))]
        threshold = self.start_threshold
        while True:
            chosen = [usable[0]]
            for i in usable[1:]:
                if float(embeddings[i] @ embeddings[chosen[-1]]) < threshold:
                    chosen.append(i)
            if len(chosen) <= self.max_per_shot or threshold < -1.0:
                return KeyframeSelection(chosen[: self.max_per_shot], round(threshold, 4), quality)
            threshold -= self.threshold_step


def storymem_frame_size(height: int, width: int, factor: int = 28, min_pixels: int = 48 * 28 * 28,
                        max_pixels: int = 256 * 28 * 28) -> tuple[int, int]:
    """The size StoryMem resizes frames to before selecting keyframes (Qwen2-VL's ``smart_resize``
    with its video-frame bounds: multiples of 28, at most 256 28x28 patches; 480x832 -> 336x588)."""
    h_bar, w_bar = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar, w_bar = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return max(h_bar, factor), max(w_bar, factor)


@dataclass
class StoryMemKeyframeSelector:
    """Keyframes as StoryMem's ``extract_keyframes.py`` picks them, from a shot's 8-bit frames.

    Frames are resized to :func:`storymem_frame_size` (bilinear, antialiased) and embedded whole,
    squashed to the embedder's square input (no crop). The first frame that passes the quality filter
    is a keyframe (none passes: the shot adds no keyframe); from frame 2 on (frame 1 never), a frame
    becomes one when its cosine to the last keyframe is below the threshold and it passes the filter;
    the threshold drops by 0.01 until at most ``max_per_shot`` remain. The engine keeps each keyframe's
    full-frame embedding for the bank (what StoryMem compares with earlier shots' keyframes, at 0.9)."""

    max_per_shot: int = 3
    start_threshold: float = 0.9
    threshold_step: float = 0.01
    quality_scorer: QualityScorer | None = None
    quality_threshold: float = 3.0

    def prepare(self, frames: torch.Tensor) -> torch.Tensor:
        """``[T, 3, H, W]`` in [0, 1] -> the resized frames StoryMem compares (still in [0, 1])."""
        h, w = storymem_frame_size(*frames.shape[-2:])
        return torch.nn.functional.interpolate(frames.float(), size=(h, w), mode="bilinear",
                                               antialias=True).clamp(0, 1)

    def select(self, embeddings: torch.Tensor, images: torch.Tensor | None = None) -> KeyframeSelection:
        """``embeddings [T, D]`` of the prepared frames (:meth:`prepare`), ``images`` those frames
        (for the quality filter)."""
        t = embeddings.shape[0]
        quality, low = None, [False] * t
        if self.quality_scorer is not None:
            quality = self.quality_scorer.score(images).tolist()
            low = [q < self.quality_threshold for q in quality]
        if all(low):
            return KeyframeSelection([], self.start_threshold, quality)
        first = low.index(False)
        threshold = self.start_threshold
        while True:
            chosen = [first]
            for i in range(2, t):
                if float(embeddings[chosen[-1]] @ embeddings[i]) < threshold and not low[i]:
                    chosen.append(i)
            if len(chosen) <= self.max_per_shot:
                return KeyframeSelection(chosen, round(threshold, 4), quality)
            threshold -= self.threshold_step


@dataclass
class Keyframe:
    """One memory entry. ``image [3, H, W]`` in ``[0, 1]``; ``latent [C, 1, h, w]`` (normalised VAE
    latent of the image alone, as one latent frame); ``embedding [D]`` unit norm."""

    image: torch.Tensor
    embedding: torch.Tensor
    latent: torch.Tensor | None = None
    source_shot: int = -1  # 0-based shot index; -1 for user reference images
    frame_index: int = 0
    kind: str = "keyframe"  # "keyframe" | "reference"
    label: str = ""  # e.g. the character or location name of a reference
    # the entities it shows (its shot's scheduled ones; a reference: its label) and, where a detector
    # found them, their boxes (x0, y0, x1, y1) as fractions of the frame
    entities: tuple[str, ...] = ()
    boxes: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)

    def shows(self, entity: str) -> bool:
        return entity in self.entities or (self.kind == "reference" and self.label == entity)

    def share(self, entity: str) -> float:
        """How much of the frame is ``entity``: its box's area, else the frame split evenly among the
        entities it shows (a reference image is all its entity)."""
        if entity in self.boxes:
            x0, y0, x1, y1 = self.boxes[entity]
            return max(0.0, x1 - x0) * max(0.0, y1 - y0)
        return 1.0 if self.kind == "reference" else 1.0 / max(1, len(self.entities))

    @property
    def name(self) -> str:
        if self.kind == "reference":
            return f"ref_{self.label or 'image'}_{self.frame_index}"
        return f"shot{self.source_shot + 1:03d}_f{self.frame_index:04d}"


@dataclass
class KeyframeBank:
    """All keyframes of the story so far, in insertion order (references first)."""

    entries: list[Keyframe] = field(default_factory=list)
    dedupe_threshold: float = 0.9
    # (directory, picture name) -> the entry whose picture is there: save() writes only new pictures
    _saved: dict[tuple[str, str], Keyframe] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self):
        return iter(self.entries)

    @property
    def embeddings(self) -> torch.Tensor:
        if not self.entries:
            return torch.zeros(0, 0)
        return torch.stack([e.embedding.float() for e in self.entries])

    def max_similarity(self, embedding: torch.Tensor) -> float:
        if not self.entries:
            return -1.0
        return float((self.embeddings @ embedding.float()).max())

    def add(self, keyframe: Keyframe, dedupe: bool = True) -> bool:
        """Append unless a near-duplicate (cosine > ``dedupe_threshold``) is already there."""
        if dedupe and self.max_similarity(keyframe.embedding) > self.dedupe_threshold:
            return False
        self.entries.append(keyframe)
        return True

    def before_shot(self, shot_index: int) -> KeyframeBank:
        """The bank as it stood before ``shot_index`` was generated (references kept)."""
        earlier = KeyframeBank([e for e in self.entries if e.source_shot < shot_index], self.dedupe_threshold)
        earlier._saved = dict(self._saved)
        return earlier

    # -- persistence: PNGs a person can look at, tensors in safetensors, an index in JSON -------------
    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors, index = {}, []
        for i, e in enumerate(self.entries):
            tensors[f"{i}.embedding"] = e.embedding.float().contiguous()
            if e.latent is not None:
                tensors[f"{i}.latent"] = e.latent.float().contiguous()
            # Only pictures not already there from this very entry (a regenerated shot reuses its
            # keyframes' names with new pictures): the cost of a save stays flat along the story
            png = f"{e.name}.png"
            key = (str(directory), png)
            if self._saved.get(key) is not e or not (directory / png).is_file():
                with atomic_path(directory / png) as tmp:
                    to_pil(e.image).save(tmp, format="PNG")
                self._saved[key] = e
            index.append({"image": png, "source_shot": e.source_shot, "frame_index": e.frame_index,
                          "kind": e.kind, "label": e.label, "entities": list(e.entities),
                          "boxes": {k: list(v) for k, v in e.boxes.items()}})
        with atomic_path(directory / "bank.safetensors") as tmp:
            save_file(tensors, str(tmp))
        with atomic_path(directory / "bank.json") as tmp:
            Path(tmp).write_text(json.dumps({"dedupe_threshold": self.dedupe_threshold, "entries": index}, indent=1))
        # Pictures of entries that left the bank (keyframes of stale shots) go too, after the index.
        keep = {m["image"] for m in index}
        for old in directory.glob("*.png"):
            if old.name not in keep:
                old.unlink()

    @classmethod
    def load(cls, directory: str | Path) -> KeyframeBank:
        directory = Path(directory)
        meta = json.loads((directory / "bank.json").read_text())
        tensors = load_file(str(directory / "bank.safetensors"))
        entries = []
        for i, m in enumerate(meta["entries"]):
            img = np.asarray(Image.open(directory / m["image"]).convert("RGB"), dtype=np.float32) / 255.0
            entries.append(Keyframe(
                image=torch.from_numpy(img).permute(2, 0, 1).contiguous(),
                embedding=tensors[f"{i}.embedding"],
                latent=tensors.get(f"{i}.latent"),
                source_shot=m["source_shot"], frame_index=m["frame_index"], kind=m["kind"], label=m["label"],
                entities=tuple(m.get("entities", ())), boxes={k: tuple(v) for k, v in m.get("boxes", {}).items()},
            ))
        bank = cls(entries, meta.get("dedupe_threshold", 0.9))
        bank._saved = {(str(directory), m["image"]): e for m, e in zip(meta["entries"], entries, strict=True)}
        return bank


def bank_exists(directory: str | Path) -> bool:
    return os.path.isfile(Path(directory) / "bank.json")
