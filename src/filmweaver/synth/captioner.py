"""The synthetic world's captioner for ``filmweaver curate``: the attribute probe (not a vision-language
model) reads a shot's character and location, and the world's grammar writes them as a caption.

Captioned as a group, the character's and the location's attributes are the majority over every
frame of the scene (a scene is one place; one description, the same in each shot); per shot, over that
shot's frames alone. ``validate`` reads the shot again: a caption that disagrees with it on two or more
character attributes is rejected.

``--set captions.captioner=filmweaver.synth.captioner:probe_captioner`` (the shipped model's probe).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from filmweaver.curate.captions import SceneCaptions, Verdict
from filmweaver.curate.config import Captions
from filmweaver.models import BUILTIN_MODEL_DIR
from filmweaver.synth.probe import AttributeProbe
from filmweaver.synth.stories import describe_character, describe_place
from filmweaver.synth.world import CHARACTER_ATTRIBUTES, LOCATION_ATTRIBUTES, Character, Location

NAME = "Character 1"


def probe_input(frames: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W]`` -> the probe's ``[N, 3, 64, 64]``: the centred square (the world is drawn square)."""
    h, w = frames.shape[-2:]
    side = min(h, w)
    square = frames[..., (h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
    return F.interpolate(square.float(), size=(64, 64), mode="bilinear", antialias=True, align_corners=False)


class ProbeCaptioner:
    name = "synth-attribute-probe"

    def __init__(self, probe: AttributeProbe):
        self.probe = probe

    def read(self, frames: torch.Tensor) -> dict[str, str]:
        """Majority attribute values over ``frames [N, 3, H, W]``."""
        pred = self.probe.predict(probe_input(frames).to(next(self.probe.parameters()).device))
        vocab = {**CHARACTER_ATTRIBUTES, **LOCATION_ATTRIBUTES}
        return {k: vocab[k][int(torch.bincount(v.cpu()).argmax())] for k, v in pred.items()}

    @staticmethod
    def caption(character: dict[str, str], place: dict[str, str]) -> str:
        c = Character(**{k: character[k] for k in CHARACTER_ATTRIBUTES})
        loc = Location(**{k: place[k] for k in LOCATION_ATTRIBUTES})
        return f"{describe_character(NAME, c)[:-1]} {describe_place(loc, True)}."

    def caption_scene(self, shots: list[torch.Tensor], cfg: Captions) -> SceneCaptions:
        per_shot = [self.read(s) for s in shots]
        group = self.read(torch.cat(shots)) if cfg.group else None
        # together: the scene's one character and one place, each read over all of its frames
        captions = [self.caption(group or r, group or r) for r in per_shot]
        look = group or per_shot[0]
        characters = [{"name": NAME, "description": describe_character(NAME, Character(
            **{k: look[k] for k in CHARACTER_ATTRIBUTES}))[:-1]}]
        return SceneCaptions(captions, characters, [[NAME] for _ in shots])

    def validate(self, frames: torch.Tensor, caption: str, cfg: Captions) -> Verdict:
        own = self.read(frames)
        words = set(caption.lower().replace(",", " ").replace(".", " ").split())
        disputed = [f"{k} {own[k]}" for k in CHARACTER_ATTRIBUTES
                    if k != "pattern" and own[k] != "none" and own[k] not in words]
        if own["pattern"] != "plain" and {"striped": "stripes", "dotted": "dots"}[own["pattern"]] not in words:
            disputed.append(f"pattern {own['pattern']}")
        if len(disputed) >= 2:
            return Verdict(None, "the shot reads otherwise: " + ", ".join(disputed))
        return Verdict(caption, "ok" if not disputed else f"ok ({disputed[0]} disputed)")


def probe_captioner(device: str = "cpu", probe: str | Path | None = None) -> ProbeCaptioner:
    return ProbeCaptioner(AttributeProbe.load(probe or BUILTIN_MODEL_DIR / "probe", device=device))


class ProbeEmbedder:
    """The probe's attribute distributions as image embeddings (:class:`~filmweaver.synth.judge.ProbeJudge`)
    for scene clustering in the synthetic world, where its CLIP, trained on whole 64x64 renders, tells
    reframed shots of one place apart less well. ``--set scenes.embedder=filmweaver.synth.captioner:probe_embedder``."""

    def __init__(self, judge):
        self.judge = judge
        self.model_id = judge.model_id

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.judge.embed_images(probe_input(images))


def probe_embedder(device: str = "cpu") -> ProbeEmbedder:
    from filmweaver.synth.judge import ProbeJudge

    return ProbeEmbedder(ProbeJudge.load("builtin", device))
