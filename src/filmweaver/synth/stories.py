"""Procedural multi-shot stories in ST-Bench form, with ground truth, from a fixed prompt grammar.

A story follows one protagonist through 1-3 locations over 3-12 shots. The first shot that shows the
protagonist states its appearance, and the first shot in a location describes that location; later
shots restate them only sometimes (``restate_prob``), e.g. ``"Medium shot: Pip waves in the forest.
The camera is still."`` -- so only memory can keep the character's colour or the forest's snow at
night. The JSON is a valid ST-Bench script (``scenes[].video_prompts``, ``cut``) plus per-shot frame
counts and a ``ground_truth`` block that the evaluation reads.

Grammar (every word is in :func:`grammar_words`)::

    <Framing>: <subject> <verb> <place>. The camera <move>.
    subject = Name | Name, a <colour> <shape> creature [with stripes|with dots] [wearing a hat|scarf],
    place   = in the <props> | in a <props> with <ground> ground <by day|at dusk|at night>
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from filmweaver.synth.world import (
    ACTIONS,
    CAMERAS,
    CHARACTER_ATTRIBUTES,
    COLOURS,
    FRAMINGS,
    GROUNDS,
    PROPS,
    SHAPES,
    Character,
    Location,
    ShotSpec,
    random_character,
    random_location,
)

WORLD_FORMAT = "filmweaver.synth/1"
NAMES = ["Pip", "Bo", "Kiki", "Tom", "Lulu", "Max", "Nia", "Oz", "Rex", "Sol", "Tia", "Uma", "Vic", "Wren",
         "Zed", "Ada", "Ben", "Cleo", "Dax", "Eve", "Fin", "Gus", "Hal", "Ivy", "Jax", "Kai", "Leo", "Mo",
         "Ned", "Ola"]
FRAMING_WORDS = {"wide": "Wide shot", "medium": "Medium shot", "close": "Close-up"}
CAMERA_WORDS = {"static": "The camera is still.", "pan_left": "The camera pans left.",
                "pan_right": "The camera pans right.", "zoom_in": "The camera zooms in.",
                "zoom_out": "The camera zooms out."}
VERBS = {"walk": "walks", "jump": "jumps", "turn": "turns around", "wave": "waves"}
PATTERN_WORDS = {"plain": "", "striped": " with stripes", "dotted": " with dots"}
ACCESSORY_WORDS = {"none": "", "hat": " wearing a hat", "scarf": " wearing a scarf"}
TIME_WORDS = {"day": "by day", "dusk": "at dusk", "night": "at night"}


def describe_character(name: str, c: Character) -> str:
    return f"{name}, a {c.colour} {c.shape} creature{PATTERN_WORDS[c.pattern]}{ACCESSORY_WORDS[c.accessory]},"


def describe_place(loc: Location, restate: bool) -> str:
    if restate:
        return f"in a {loc.props} with {loc.ground} ground {TIME_WORDS[loc.time]}"
    return f"in the {loc.props}"


def shot_prompt(name: str, spec: ShotSpec, restate_character: bool, restate_location: bool) -> str:
    subject = describe_character(name, spec.character) if restate_character else name
    return (f"{FRAMING_WORDS[spec.framing]}: {subject} {VERBS[spec.action]} "
            f"{describe_place(spec.location, restate_location)}. {CAMERA_WORDS[spec.camera]}")


def grammar_words() -> list[str]:
    """Every word the grammar can produce (lower case), for a word-level tokenizer."""
    text = " ".join([*NAMES, *FRAMING_WORDS.values(), *CAMERA_WORDS.values(), *VERBS.values(), *PATTERN_WORDS.values(),
                     *ACCESSORY_WORDS.values(), *TIME_WORDS.values(), *COLOURS, *SHAPES, *PROPS, *GROUNDS,
                     "a creature in the with ground : ,"])
    return sorted({w for w in split_words(text)})


def split_words(text: str) -> list[str]:
    """The tokenizer's view of a prompt: lower-case words, punctuation as separate tokens."""
    return re.findall(r"[a-z]+|[^\sa-z]", text.lower())


@dataclass
class SynthStory:
    seed: int
    name: str
    character: Character
    locations: list[Location]
    shots: list[ShotSpec]
    scene_of_shot: list[int]
    cuts: list[bool]
    restates_character: list[bool]
    restates_location: list[bool]
    prompts: list[str] = field(default_factory=list)

    def to_script(self) -> dict:
        """ST-Bench JSON (+ per-shot frame counts and ground truth)."""
        scenes = []
        for i, spec in enumerate(self.shots):
            s = self.scene_of_shot[i]
            if len(scenes) <= s:
                scenes.append({"scene_num": s + 1, "video_prompts": [], "first_frame_prompt": [], "cut": [],
                               "shots": []})
            sc = scenes[s]
            sc["video_prompts"].append(self.prompts[i])
            sc["first_frame_prompt"].append(self.prompts[i])
            sc["cut"].append(self.cuts[i])
            sc["shots"].append({"num_frames": spec.num_frames})
        c = self.character
        return {
            "story_name": f"synth-{self.seed}",
            "story_overview": f"{describe_character(self.name, c)[:-1]}, visits "
                              + ", ".join(f"the {loc.props}" for loc in self.locations) + ".",
            "scenes": scenes,
            # the character sheet (no reference images): evaluation groups shots by the names it lists
            "characters": [{"name": self.name, "description": describe_character(self.name, c)}],
            "ground_truth": {
                "format": WORLD_FORMAT, "seed": self.seed, "name": self.name,
                "character": {k: getattr(c, k) for k in CHARACTER_ATTRIBUTES},
                "shots": [{**spec.to_dict(), "restates_character": rc, "restates_location": rl}
                          for spec, rc, rl in zip(self.shots, self.restates_character, self.restates_location, strict=True)],
            },
        }


def make_story(seed: int, min_shots: int = 3, max_shots: int = 12, frames: tuple[int, ...] = (12,),
               restate_prob: float = 0.3, continue_prob: float = 0.25) -> SynthStory:
    """A random story, deterministic by ``seed``."""
    rng = np.random.default_rng([seed, 7])
    n = int(rng.integers(min_shots, max_shots + 1))
    name = str(rng.choice(NAMES))
    character = random_character(rng)
    n_locs = int(rng.integers(1, min(3, n) + 1))
    kinds = rng.permutation(PROPS)[:n_locs]
    locations = [random_location(rng, str(k)) for k in kinds]
    # location of each shot: runs (scenes); revisiting an earlier location is allowed
    loc_of_shot, scene_of_shot = [0], [0]
    for _ in range(1, n):
        if rng.random() < 0.35 and n_locs > 1:
            loc_of_shot.append(int(rng.choice([j for j in range(n_locs) if j != loc_of_shot[-1]])))
            scene_of_shot.append(scene_of_shot[-1] + 1)
        else:
            loc_of_shot.append(loc_of_shot[-1])
            scene_of_shot.append(scene_of_shot[-1])
    shots, cuts, rc, rl, seen_locs = [], [], [], [], set()
    for i in range(n):
        loc = locations[loc_of_shot[i]]
        cut = i == 0 or scene_of_shot[i] != scene_of_shot[i - 1] or rng.random() >= continue_prob
        num_frames = int(rng.choice(frames))
        if cut:
            spec = ShotSpec(character, loc, str(rng.choice(FRAMINGS)), str(rng.choice(CAMERAS)), str(rng.choice(ACTIONS)),
                            num_frames, start_x=float(rng.uniform(-0.15, 0.15)), facing=int(rng.choice([-1, 1])),
                            seed=int(rng.integers(1 << 30)))
        else:  # the same take goes on: framing kept, the character starts where it stopped
            prev = shots[-1]
            x, facing = prev.end_state()
            spec = ShotSpec(character, loc, prev.framing, str(rng.choice(["static", "pan_left", "pan_right"])),
                            str(rng.choice(ACTIONS)), num_frames, start_x=x, facing=facing,
                            seed=int(rng.integers(1 << 30)))
        shots.append(spec)
        cuts.append(bool(cut))
        rc.append(i == 0 or bool(rng.random() < restate_prob))
        rl.append(loc_of_shot[i] not in seen_locs or bool(rng.random() < restate_prob))
        seen_locs.add(loc_of_shot[i])
    story = SynthStory(seed, name, character, locations, shots, scene_of_shot, cuts, rc, rl)
    story.prompts = [shot_prompt(name, s, a, b) for s, a, b in zip(shots, rc, rl, strict=True)]
    return story


def make_long_take(seed: int, num_frames: int = 32) -> tuple[ShotSpec, str]:
    """One long single take (stage-1 training data): a fully described shot of ``num_frames`` frames."""
    rng = np.random.default_rng([seed, 11])
    spec = ShotSpec(random_character(rng), random_location(rng), str(rng.choice(FRAMINGS)), str(rng.choice(CAMERAS)),
                    str(rng.choice(ACTIONS)), num_frames, start_x=float(rng.uniform(-0.15, 0.15)),
                    facing=int(rng.choice([-1, 1])), seed=int(rng.integers(1 << 30)))
    return spec, shot_prompt(str(rng.choice(NAMES)), spec, True, True)


def story_from_script(script: dict) -> tuple[dict, list[ShotSpec]]:
    """Ground truth of a synthetic story script: (the ``ground_truth`` block, shot specs)."""
    gt = script.get("ground_truth")
    if not gt or gt.get("format") != WORLD_FORMAT:
        raise ValueError(f"not a synthetic-world story (no ground_truth of format {WORLD_FORMAT})")
    return gt, [ShotSpec.from_dict({k: v for k, v in s.items() if not k.startswith("restates_")}) for s in gt["shots"]]


def write_scripts(out_dir: str | Path, count: int, first_seed: int = 1_000_000, max_shots: int = 8,
                  frames: tuple[int, ...] = (12, 20)) -> list[Path]:
    """Write ``count`` synthetic story scripts (held-out seeds by default) as ``synth-<seed>.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(first_seed, first_seed + count):
        path = out / f"synth-{seed}.json"
        path.write_text(json.dumps(make_story(seed, max_shots=max_shots, frames=frames).to_script(), indent=1) + "\n")
        paths.append(path)
    return paths


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(prog="python -m filmweaver.synth.stories",
                                 description="write synthetic-world story scripts (ST-Bench form + ground truth)")
    ap.add_argument("out_dir")
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--first-seed", type=int, default=1_000_000, help="training uses seeds < 1,000,000")
    ap.add_argument("--max-shots", type=int, default=8)
    args = ap.parse_args()
    for p in write_scripts(args.out_dir, args.count, args.first_seed, args.max_shots):
        print(p)
