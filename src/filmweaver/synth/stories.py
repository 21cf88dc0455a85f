"""Procedural multi-shot stories in ST-Bench form, with ground truth, from a fixed prompt grammar.

A story follows one protagonist through 1-3 locations over 3-12 shots. The first shot that shows the
protagonist states its appearance, and the first shot in a location describes that location; later
shots restate them only sometimes (``restate_prob``), e.g. ``"Medium shot: Pip waves in the forest.
The camera is still."`` -- so only memory can keep the character's colour or the forest's snow at
night. The JSON is a valid ST-Bench script (``scenes[].video_prompts``, ``cut``) plus per-shot frame
counts and a ``ground_truth`` block that the evaluation reads.

**Casts** (:func:`make_cast_story`): stories of 1-4 characters, sometimes a deliberately similar pair
(same shape and colour, another accessory), shots showing one to three of them side by side, named
left to right ("Pip and Bo walk ..." puts Pip on the left), each described where it first appears and
only sometimes after; long stories (30-50 shots) keep one character away for 20+ shots before it
returns. The script lists every shot's characters (``shots[].characters``) and the ground truth
every shot's cast.

Grammar (every word is in :func:`grammar_words`)::

    <Framing>: <subjects> <verb> <place>. The camera <move>.
    subjects = subject | subject and subject | subject, subject and subject
    subject  = Name | Name, a <colour> <shape> creature [with stripes|with dots] [wearing a hat|scarf],
    place    = in the <props> | in a <props> with <ground> ground <by day|at dusk|at night>
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from filmweaver.synth.world import (
    ACTIONS,
    CAMERAS,
    CAST_FITS,
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
PLURAL_VERBS = {"walk": "walk", "jump": "jump", "turn": "turn around", "wave": "wave"}
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


def cast_prompt(names: list[str], spec: ShotSpec, restate: list[bool], restate_location: bool) -> str:
    """A shot of several characters, named left to right (each described where ``restate`` says)."""
    subjects = [describe_character(n, c) if r else n for n, c, r in zip(names, spec.cast, restate, strict=True)]
    if len(subjects) == 1:
        joined, verb = subjects[0], VERBS[spec.action]
    else:
        # a description ends in a comma: "Pip, a red round creature, and Bo walk"
        joined = " ".join(s if s.endswith(",") else s + "," for s in subjects[:-2])
        joined = (joined + " " if joined else "") + f"{subjects[-2]} and {subjects[-1]}"
        verb = PLURAL_VERBS[spec.action]
    return (f"{FRAMING_WORDS[spec.framing]}: {joined} {verb} {describe_place(spec.location, restate_location)}. "
            f"{CAMERA_WORDS[spec.camera]}").replace(",,", ",").replace(", ", ", ").replace(" ,", ",")


def grammar_words(cast: bool = False) -> list[str]:
    """Every word the grammar can produce (lower case), for a word-level tokenizer; ``cast``: also the
    words of several characters' shots ("and", plural verbs)."""
    text = " ".join([*NAMES, *FRAMING_WORDS.values(), *CAMERA_WORDS.values(), *VERBS.values(), *PATTERN_WORDS.values(),
                     *ACCESSORY_WORDS.values(), *TIME_WORDS.values(), *COLOURS, *SHAPES, *PROPS, *GROUNDS,
                     "a creature in the with ground : ,", *([*PLURAL_VERBS.values(), "and"] if cast else [])])
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
    # a cast story (make_cast_story): every character, and per shot who (left to right) and who is restated
    cast_names: list[str] | None = None
    cast: list[Character] | None = None
    shot_cast: list[list[int]] | None = None
    restates_cast: list[list[bool]] | None = None

    def to_script(self) -> dict:
        """ST-Bench JSON (+ per-shot frame counts and ground truth)."""
        if self.cast is not None:
            return self._cast_script()
        scenes = self._scenes(lambda i: {})
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


    def _scenes(self, shot_extra) -> list[dict]:
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
            sc["shots"].append({"num_frames": spec.num_frames, **shot_extra(i)})
        return scenes

    def _cast_script(self) -> dict:
        names = self.cast_names
        return {
            "story_name": f"synth-cast-{self.seed}",
            "story_overview": " and ".join(names) + " visit " + ", ".join(f"the {loc.props}" for loc in self.locations) + ".",
            "scenes": self._scenes(lambda i: {"characters": [names[j] for j in self.shot_cast[i]]}),
            "characters": [{"name": n, "description": describe_character(n, c)} for n, c in zip(names, self.cast, strict=True)],
            "ground_truth": {
                "format": WORLD_FORMAT, "seed": self.seed, "name": names[0],
                "character": {k: getattr(self.cast[0], k) for k in CHARACTER_ATTRIBUTES},
                "cast": [{"name": n, **{k: getattr(c, k) for k in CHARACTER_ATTRIBUTES}}
                         for n, c in zip(names, self.cast, strict=True)],
                "shots": [{**spec.to_dict(), "cast": [names[j] for j in who], "restates_cast": rc,
                           "restates_character": any(rc), "restates_location": rl}
                          for spec, who, rc, rl in zip(self.shots, self.shot_cast, self.restates_cast,
                                                       self.restates_location, strict=True)],
            },
        }


def _cast_characters(rng: np.random.Generator, n: int, similar_pair: bool) -> list[Character]:
    """``n`` distinct characters; with ``similar_pair`` the second shares the first's shape, colour and
    pattern and differs in its accessory (only memory of that detail tells them apart)."""
    cast: list[Character] = []
    while len(cast) < n:
        c = random_character(rng)
        if similar_pair and len(cast) == 1:
            c = Character(cast[0].shape, cast[0].colour, cast[0].pattern,
                          str(rng.choice([a for a in CHARACTER_ATTRIBUTES["accessory"] if a != cast[0].accessory])))
        if c not in cast:
            cast.append(c)
    return cast


def make_cast_story(seed: int, characters: int | None = None, min_shots: int = 6, max_shots: int = 14,
                    frames: tuple[int, ...] = (12,), restate_prob: float = 0.25, continue_prob: float = 0.2,
                    similar_pair_prob: float = 0.35, away: int | None = None) -> SynthStory:
    """A random story of a cast of 1-4 characters (``characters``), deterministic by ``seed``. ``away``:
    one character (not the first) is seen, kept out of that many shots, then seen again (a recurrence
    gap of ``away + 1`` shots or more); default: 20 + half the shots past 30 in a story of 30 or more."""
    rng = np.random.default_rng([seed, 13])
    n = int(rng.integers(min_shots, max_shots + 1))
    k = int(characters if characters is not None else rng.integers(1, 5))
    cast = _cast_characters(rng, k, k >= 2 and bool(rng.random() < similar_pair_prob))
    names = [str(x) for x in rng.choice(NAMES, size=k, replace=False)]
    n_locs = int(rng.integers(1, min(3, n) + 1))
    locations = [random_location(rng, str(p)) for p in rng.permutation(PROPS)[:n_locs]]
    away = away if away is not None else (20 + (n - 30) // 2 if n >= 30 else 0)
    away = min(away, max(0, n - 4))
    gone, gone_from = (int(rng.integers(1, k)), int(rng.integers(2, n - away - 1))) if k >= 2 and away else (None, -1)
    # the absent one is in the shots either side of its absence (each a cut)
    must = {gone_from - 1: gone, gone_from + away: gone} if gone is not None else {}
    shots, cuts, scene_of_shot, loc_of_shot, shot_cast, restates, rl = [], [], [], [], [], [], []
    seen_chars, seen_locs = set(), set()
    for i in range(n):
        new_scene = i == 0 or (rng.random() < 0.35 and n_locs > 1)
        loc_i = 0 if i == 0 else (int(rng.choice([j for j in range(n_locs) if j != loc_of_shot[-1]])) if new_scene
                                   else loc_of_shot[-1])
        scene = 0 if i == 0 else scene_of_shot[-1] + int(new_scene)
        cut = new_scene or rng.random() >= continue_prob or i in must
        num_frames = int(rng.choice(frames))
        if cut:
            available = [j for j in range(k) if not (j == gone and gone_from <= i < gone_from + away)]
            framing = str(rng.choice(FRAMINGS))
            size = int(rng.integers(1, min(CAST_FITS[framing], len(available)) + 1))
            who = [int(j) for j in rng.choice(available, size=size, replace=False)]
            if i in must and must[i] not in who:
                who[int(rng.integers(size))] = must[i]
            members = [cast[j] for j in who]
            spec = ShotSpec(members[0], locations[loc_i], framing, str(rng.choice(CAMERAS)), str(rng.choice(ACTIONS)),
                            num_frames, start_x=float(rng.uniform(-0.15, 0.15)), facing=int(rng.choice([-1, 1])),
                            seed=int(rng.integers(1 << 30)), companions=tuple(members[1:]))
        else:  # the same take goes on: framing and cast kept, starting where it stopped
            prev, who = shots[-1], list(shot_cast[-1])
            x, facing = prev.end_state()
            spec = ShotSpec(prev.character, prev.location, prev.framing, str(rng.choice(["static", "pan_left", "pan_right"])),
                            str(rng.choice(ACTIONS)), num_frames, start_x=x, facing=facing,
                            seed=int(rng.integers(1 << 30)), companions=prev.companions)
        restates.append([j not in seen_chars or bool(rng.random() < restate_prob) for j in who])
        seen_chars.update(who)
        rl.append(loc_i not in seen_locs or bool(rng.random() < restate_prob))
        seen_locs.add(loc_i)
        shots.append(spec)
        cuts.append(bool(cut))
        scene_of_shot.append(scene)
        loc_of_shot.append(loc_i)
        shot_cast.append(who)
    story = SynthStory(seed, names[0], cast[0], locations, shots, scene_of_shot, cuts,
                       [any(r) for r in restates], rl, cast_names=names, cast=cast, shot_cast=shot_cast,
                       restates_cast=restates)
    story.prompts = [cast_prompt([names[j] for j in who], s, r, b)
                     for s, who, r, b in zip(shots, shot_cast, restates, rl, strict=True)]
    return story


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
    fields = {f.name for f in dataclasses.fields(ShotSpec)}  # the spec; the rest (cast names, restates) is truth
    return gt, [ShotSpec.from_dict({k: v for k, v in s.items() if k in fields}) for s in gt["shots"]]


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
