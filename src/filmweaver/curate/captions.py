"""Captioning a scene: the protocol the pipeline calls, and how a captioner is named.

A captioner sees a scene's shots (a few frames each) and returns :class:`SceneCaptions`: one prompt per
shot and, when it names characters, their sheet (name, description) and who each shot shows. Captioned
as a group, a character keeps one description across the scene's shots; per shot, each caption stands
alone. ``validate`` checks one shot's caption against its frames again: kept, refined, or rejected
with its reason (then the sample is dropped and the report says why).

``--captioner``: ``none``; or ``package.module:factory`` (called with ``device``), such as
``filmweaver.synth.captioner:probe_captioner`` (the synthetic world's attribute probe: not a
vision-language model, named as such, which makes the whole pipeline checkable against ground truth).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Protocol

import torch

from filmweaver.curate.config import Captions


@dataclass
class SceneCaptions:
    shots: list[str]  # one prompt per shot, in order
    characters: list[dict] = field(default_factory=list)  # [{"name", "description"}]
    shot_characters: list[list[str]] = field(default_factory=list)  # per shot, the names it shows

    def entity_schedule(self) -> dict[str, dict]:
        """EntityBench's per-shot schedule (``"1:K"``: scene 1, shot K) from the names per shot."""
        return {f"1:{k + 1}": {"characters": names} for k, names in enumerate(self.shot_characters) if names}


@dataclass
class Verdict:
    caption: str | None  # the caption to keep (refined, or as it was); None: the shot is rejected
    note: str  # "ok", "refined: ...", or why it was rejected


class Captioner(Protocol):
    name: str

    def caption_scene(self, shots: list[torch.Tensor], cfg: Captions) -> SceneCaptions:
        """``shots``: per shot ``[F, 3, H, W]`` frames in [0, 1]."""
        ...

    def validate(self, frames: torch.Tensor, caption: str, cfg: Captions) -> Verdict: ...


def make_captioner(spec: str, device: str = "cpu") -> Captioner | None:
    if spec == "none":
        return None
    if ":" in spec:
        module, factory = spec.split(":", 1)
        try:
            return getattr(importlib.import_module(module), factory)(device=device)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"captioner {spec!r}: {e}") from None
    raise ValueError(f"captioner {spec!r}: expected none or package.module:factory")
