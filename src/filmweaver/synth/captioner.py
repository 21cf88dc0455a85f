"""The synthetic world's captioner for ``filmweaver curate``: the attribute probe (not a vision-language
model) reads a shot's character and location, and the world's grammar writes them as a caption.

Captioned as a group, the character's and the location's attributes are the majority over every
frame of the scene (a scene is one place; one description, the same in each shot); per shot, over that
shot's frames alone. ``validate`` reads the shot again: a caption that disagrees with it on two or more
character attributes is rejected.

``--set captions.captioner=filmweaver.synth.captioner:probe_captioner``: the shipped model's camera
probe (``probe/camera``: its attribute probe fine-tuned on frames as a film's editor frames them,
zoomed, reframed and mirrored, :func:`train_camera_probe`), else its attribute probe.

``python -m filmweaver.synth.captioner OUT_DIR [--films 400] [--steps 2400]`` trains the camera probe (the
shipped one is what these defaults make).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from filmweaver.curate.captions import SceneCaptions, Verdict
from filmweaver.curate.config import Captions
from filmweaver.models import BUILTIN_MODEL_DIR
from filmweaver.synth.evaluate import majority
from filmweaver.synth.probe import AttributeProbe
from filmweaver.synth.stories import (
    ACCESSORY_WORDS,
    PATTERN_WORDS,
    TIME_WORDS,
    describe_character,
    describe_place,
)
from filmweaver.synth.world import (
    ALL_ATTRIBUTES,
    CHARACTER_ATTRIBUTES,
    LOCATION_ATTRIBUTES,
    Character,
    Location,
)

NAME = "Character 1"

# the word of the world's grammar that states each attribute value (None: a value stated by saying
# nothing: no pattern, no accessory)
VALUE_WORDS = {k: {v: v for v in values} for k, values in ALL_ATTRIBUTES.items()}
VALUE_WORDS["pattern"] = {v: (p.split() or [None])[-1] for v, p in PATTERN_WORDS.items()}
VALUE_WORDS["accessory"] = {v: (a.split() or [None])[-1] for v, a in ACCESSORY_WORDS.items()}
VALUE_WORDS["time"] = {v: t.split()[-1] for v, t in TIME_WORDS.items()}


def caption_words(caption: str) -> set[str]:
    return set(caption.lower().replace(",", " ").replace(".", " ").split())


def states(words: set[str], attribute: str, value: str) -> bool:
    """Whether a caption's ``words`` state ``value`` of ``attribute``: its word, or for a value said by
    saying nothing, none of the other values' words."""
    word = VALUE_WORDS[attribute][value]
    if word is not None:
        return word in words
    return not any(w in words for w in VALUE_WORDS[attribute].values() if w)


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
        return {k: ALL_ATTRIBUTES[k][majority(v.cpu())] for k, v in pred.items()}

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
        own, words = self.read(frames), caption_words(caption)
        # what the shot shows and the caption leaves out (a missing "no accessory" is no dispute)
        disputed = [f"{k} {own[k]}" for k in ("shape", "colour", "accessory", "pattern")
                    if VALUE_WORDS[k][own[k]] is not None and not states(words, k, own[k])]
        if len(disputed) >= 2:
            return Verdict(None, "the shot reads otherwise: " + ", ".join(disputed))
        return Verdict(caption, "ok" if not disputed else f"ok ({disputed[0]} disputed)")


def probe_captioner(device: str = "cpu", probe: str | Path | None = None) -> ProbeCaptioner:
    camera = BUILTIN_MODEL_DIR / "probe" / "camera"
    default = camera if (camera / "probe.json").is_file() else BUILTIN_MODEL_DIR / "probe"
    return ProbeCaptioner(AttributeProbe.load(probe or default, device=device))


# films whose frames train the camera probe: apart from the curation benchmark's development films
# (seeds 0-2) and its held-out films (5,000,000 on)
CAMERA_TRAIN_SEEDS = range(1_000, 2_000)
CAMERA_HELD_OUT_SEEDS = range(2_000, 2_020)


def train_camera_probe(out_dir: str | Path, films: int = 400, steps: int = 2400, batch_size: int = 64,
                       lr: float = 5e-4, device: str = "cpu", progress: bool = True, held_out: int = 20) -> dict:
    """The attribute probe fine-tuned to read frames as a film's editor frames them: the built-in probe,
    trained on ``films`` synthetic feature films' camera frames through :func:`probe_input` (no VAE:
    curated footage is not generated), checked on ``held_out`` other films' frames. Saved to ``out_dir``;
    returns the held-out accuracy of the built-in probe and of the fine-tuned one."""
    from filmweaver.synth.feature_film import camera_frames
    from filmweaver.synth.probe import probe_accuracy, train_probe

    def views(seeds):
        frames, labels = camera_frames(seeds)
        squares = probe_input(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0)
        return (squares * 255).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy(), labels

    train, held = views(CAMERA_TRAIN_SEEDS[:films]), views(CAMERA_HELD_OUT_SEEDS[:held_out])
    base = AttributeProbe.load(BUILTIN_MODEL_DIR / "probe", device=device)
    before = probe_accuracy(base, *held, None, device)
    probe, after = train_probe(*train, *held, None, steps, batch_size, lr, device, progress=progress, init=base)
    metrics = {"built_in_probe": before, "camera_probe": after, "train_frames": len(train[0]), "films": films}
    probe.save(out_dir, metrics, dtype=torch.float16)  # half the size inside the package; read in float32
    return metrics


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


def main(argv: list[str] | None = None) -> None:
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m filmweaver.synth.captioner", description=train_camera_probe.__doc__)
    ap.add_argument("out_dir")
    ap.add_argument("--films", type=int, default=400)
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    print(json.dumps(train_camera_probe(args.out_dir, args.films, args.steps, device=args.device), indent=1))


if __name__ == "__main__":
    main()
