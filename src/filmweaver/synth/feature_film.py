"""Synthetic feature films: long videos of rendered shots with known shot boundaries, scenes and
attributes, so that the curation pipeline (:mod:`filmweaver.curate`) is checkable against ground truth.

A film is a run of scenes; a scene is 2-5 shots of one character in one location (framing, camera move
and action drawn per shot), joined by hard cuts; scenes are joined by a hard cut, a dissolve or a fade
through black. Consecutive scenes differ in location. Some shots are shorter than a second (what the
curation's duration filter must drop). The truth lists every shot's frame range (transition frames
belong to no shot), its scene, character and location, and every transition.

``python -m filmweaver.synth.feature_film OUT_DIR --films N`` writes ``film-SEED.mp4`` and
``film-SEED.truth.json`` pairs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from filmweaver.synth.world import (
    ACTIONS,
    CAMERAS,
    FRAMINGS,
    Character,
    Location,
    ShotSpec,
    random_character,
    random_location,
    render_frame,
)

TRANSITIONS = ("cut", "dissolve", "fade")


@dataclasses.dataclass
class FilmShot:
    spec: ShotSpec
    scene: int
    # the editor's camera: the world rendered ``zoom`` times larger and cropped at ``offset`` (fractions
    # of the margin), mirrored for a reverse angle; what makes two shots of one place look different
    zoom: float = 1.0
    offset: tuple[float, float] = (0.5, 0.5)
    mirror: bool = False


def plan_film(seed: int, scenes: int = 8, fps: int = 12, min_shots: int = 2, max_shots: int = 5,
              short_prob: float = 0.08) -> tuple[list[FilmShot], list[str]]:
    """The shots (in order, with their scene) and the transition into each scene after the first."""
    rng = np.random.default_rng([seed, 23])
    shots: list[FilmShot] = []
    transitions: list[str] = []
    prev_loc: Location | None = None
    for k in range(scenes):
        character: Character = random_character(rng)
        loc = random_location(rng)
        while prev_loc is not None and (loc.props, loc.time) == (prev_loc.props, prev_loc.time):
            loc = random_location(rng)
        prev_loc = loc
        framing, x, zoom, mirror = None, float(rng.uniform(-1, 1)), float(rng.uniform(1.0, 1.7)), bool(rng.random() < 0.5)
        for _ in range(int(rng.integers(min_shots, max_shots + 1))):
            short = rng.random() < short_prob
            n = int(rng.integers(fps // 2, fps - 1)) if short else int(rng.integers(2 * fps, 4 * fps))
            # an edit changes the picture: another framing, the camera somewhere else along the street
            framing = str(rng.choice([f for f in FRAMINGS if f != framing]))
            x += float(rng.choice([-1, 1]) * rng.uniform(0.6, 1.2))
            spec = ShotSpec(character, loc, framing, str(rng.choice(CAMERAS)), str(rng.choice(ACTIONS)), n,
                            start_x=x, facing=int(rng.choice([-1, 1])), seed=int(rng.integers(1 << 30)))
            zoom = float(np.clip(zoom + rng.choice([-1, 1]) * rng.uniform(0.25, 0.5), 1.0, 1.8))
            mirror = mirror != bool(rng.random() < 0.7)
            shots.append(FilmShot(spec, k, zoom, (float(rng.uniform(0, 1)), float(rng.uniform(0.2, 0.8))), mirror))
        if k:
            transitions.append(str(rng.choice(TRANSITIONS, p=[0.5, 0.25, 0.25])))
    return shots, transitions


def render_film(shots: list[FilmShot], transitions: list[str], height: int = 96, width: int = 128,
                dissolve: int = 8, fade: int = 6) -> tuple[Iterator[np.ndarray], dict]:
    """The film's frames (``[H, W, 3]`` uint8, one at a time) and its ground truth. A dissolve blends
    the last ``dissolve`` frames of one shot into the first of the next (they overlap in the film); a
    fade darkens the last ``fade`` frames of one shot to black and brightens the first ``fade`` of the
    next from black. A shot's truth span holds its frames untouched by a transition."""
    into = ["cut"] + [transitions[s.scene - 1] if s.scene != shots[i].scene else "cut"
                      for i, s in enumerate(shots[1:])]
    length = {"cut": 0, "dissolve": dissolve, "fade": fade}
    truth_shots, truth_transitions, plan, t = [], [], [], 0
    for i, shot in enumerate(shots):
        out = into[i + 1] if i + 1 < len(shots) else "cut"
        lead, tail = length[into[i]], length[out]
        n = max(shot.spec.num_frames, lead + tail + 2)  # room for its transitions and a frame of its own
        spec = dataclasses.replace(shot.spec, num_frames=n)
        start, end = t + lead, t + n - tail
        truth_shots.append({"start": start, "end": end, "scene": shot.scene, "spec": spec.to_dict(),
                            "camera": {"zoom": shot.zoom, "offset": list(shot.offset), "mirror": shot.mirror}})
        plan.append((dataclasses.replace(shot, spec=spec), into[i], out))
        t += n - (dissolve if out == "dissolve" else 0)  # a dissolve's frames are the next shot's first
        if out != "cut":
            truth_transitions.append({"kind": out, "start": end, "end": t + length[out]})
    truth = {"frames": t, "height": height, "width": width, "shots": truth_shots, "transitions": truth_transitions}
    return _frames(plan, height, width, dissolve, fade), truth


def _frames(plan, height, width, dissolve, fade) -> Iterator[np.ndarray]:
    pending: list[np.ndarray] = []  # a dissolve's outgoing frames, blended into the next shot's first
    for shot, into, out in plan:
        n = shot.spec.num_frames
        frames = [_camera_frame(shot, k, height, width) for k in range(n)]
        if into == "fade":
            for k in range(fade):
                frames[k] *= (k + 1) / (fade + 1)
        for k, old in enumerate(pending):  # into == "dissolve"
            a = (k + 1) / (len(pending) + 1)
            frames[k] = (1 - a) * old + a * frames[k]
        pending = []
        if out == "fade":
            for k in range(fade):
                frames[n - fade + k] *= (fade - k) / (fade + 1)
        if out == "dissolve":
            frames, pending = frames[: n - dissolve], frames[n - dissolve:]
        yield from (f.round().clip(0, 255).astype(np.uint8) for f in frames)


def _camera_frame(shot: FilmShot, t: int, height: int, width: int) -> np.ndarray:
    """Frame ``t`` of a shot through its editor's camera, ``[H, W, 3]`` float32."""
    h, w = round(height * shot.zoom), round(width * shot.zoom)
    img = render_frame(shot.spec, t, h, w)
    y0, x0 = round((h - height) * shot.offset[1]), round((w - width) * shot.offset[0])
    img = img[y0: y0 + height, x0: x0 + width]
    return (img[:, ::-1] if shot.mirror else img).astype(np.float32)


def camera_frames(seeds, per_shot: int = 3, height: int = 96, width: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Frames of the films ``seeds`` as their editor's camera frames them (zoomed, reframed, mirrored)
    with each frame's true attributes: ``[N, height, width, 3]`` uint8 and ``[N, len(ALL_ATTRIBUTES)]``
    class indices. What a reader of curated footage must learn to read (the world's own renders are
    whole 64x64 frames)."""
    from filmweaver.synth.world import frame_labels

    frames, labels = [], []
    for seed in seeds:
        for shot in plan_film(seed)[0]:
            n = shot.spec.num_frames
            for t in np.linspace(0, n - 1, min(per_shot, n)).round().astype(int):
                frames.append(_camera_frame(shot, int(t), height, width).round().clip(0, 255).astype(np.uint8))
                labels.append(list(frame_labels(shot.spec).values()))
    return np.stack(frames), np.asarray(labels, dtype=np.int64)


def boundaries_of(truth: dict) -> list[float]:
    """The true cut positions between consecutive shots (as :func:`filmweaver.curate.shots.boundaries`)."""
    s = truth["shots"]
    return [(a["end"] - 1 + b["start"]) / 2 for a, b in zip(s, s[1:], strict=False)]


def write_film(path: str | Path, seed: int, scenes: int = 8, fps: int = 12, height: int = 96, width: int = 128) -> dict:
    """Render one film to ``path`` (mp4) and its truth to ``path`` with ``.truth.json``; returns the truth."""
    import torch

    from filmweaver.io import write_json, write_video

    shots, transitions = plan_film(seed, scenes, fps)
    frames, truth = render_film(shots, transitions, height, width)
    video = torch.from_numpy(np.stack(list(frames))).permute(0, 3, 1, 2).float() / 255.0
    write_video(path, video, fps=fps)
    for s in truth["shots"]:
        s["short"] = (s["end"] - s["start"]) < fps  # under a second
    truth.update({"seed": seed, "fps": fps, "boundaries": boundaries_of(truth), "format": "filmweaver-feature-film/1"})
    write_json(Path(path).with_suffix(".truth.json"), truth)
    return truth


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m filmweaver.synth.feature_film")
    ap.add_argument("out")
    ap.add_argument("--films", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=5_000_000)
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--fps", type=int, default=12)
    args = ap.parse_args(argv)
    for k in range(args.films):
        seed = args.first_seed + k
        truth = write_film(Path(args.out) / f"film-{seed}.mp4", seed, args.scenes, args.fps)
        print(json.dumps({"film": seed, "frames": truth["frames"], "shots": len(truth["shots"]),
                          "transitions": len(truth["transitions"])}))


if __name__ == "__main__":
    main()
