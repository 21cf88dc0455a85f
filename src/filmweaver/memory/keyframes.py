"""Keyframe selection and the keyframe bank (long-term memory of a story).

Selection follows StoryMem: embed every frame of a finished shot; the first usable frame is a
keyframe; a later frame becomes one when its cosine to the last keyframe falls below a threshold.
The threshold starts at 0.9 and is lowered by 0.01 until at most ``max_per_shot`` keyframes remain.
Frames below a quality threshold are never candidates, and a keyframe too similar (> 0.9) to one
already in the bank is not added (dedupe).
"""

from __future__ import annotations

import json
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
        return KeyframeBank([e for e in self.entries if e.source_shot < shot_index], self.dedupe_threshold)

    # -- persistence: PNGs a person can look at, tensors in safetensors, an index in JSON -------------
    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors, index = {}, []
        for i, e in enumerate(self.entries):
            tensors[f"{i}.embedding"] = e.embedding.float().contiguous()
            if e.latent is not None:
                tensors[f"{i}.latent"] = e.latent.float().contiguous()
            # Always rewrite: a regenerated shot reuses its keyframes' names with new pictures.
            png = f"{e.name}.png"
            with atomic_path(directory / png) as tmp:
                to_pil(e.image).save(tmp, format="PNG")
            index.append({"image": png, "source_shot": e.source_shot, "frame_index": e.frame_index,
                          "kind": e.kind, "label": e.label})
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
            ))
        return cls(entries, meta.get("dedupe_threshold", 0.9))


def bank_exists(directory: str | Path) -> bool:
    return os.path.isfile(Path(directory) / "bank.json")
