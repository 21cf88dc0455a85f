"""Render many synthetic stories (and long single takes) in worker processes, for training.

:func:`render_dataset` returns a :class:`RenderedSet`: all frames in one uint8 array plus a table of
shots (story, first frame, length, cut flag, location, prompt, attribute labels). Deterministic by
seed whatever the number of workers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from filmweaver.parallel import process_pool
from filmweaver.progress import progress_bar
from filmweaver.synth.stories import make_cast_story, make_long_take, make_story
from filmweaver.synth.world import (
    ALL_ATTRIBUTES,
    MAX_CAST,
    cast_labels,
    character_boxes,
    frame_labels,
    render_shot_with_mask,
)

LABEL_KEYS = list(ALL_ATTRIBUTES)


@dataclass
class RenderedSet:
    frames: np.ndarray  # [N, H, W, 3] uint8, shots back to back
    shot_story: np.ndarray  # [S] story id (-1: a long take, a story of its own)
    shot_start: np.ndarray  # [S] index of the shot's first frame in `frames`
    shot_length: np.ndarray  # [S]
    shot_cut: np.ndarray  # [S] bool: False = continues the previous shot (MI2V)
    shot_location: np.ndarray  # [S] location id, unique across the set
    shot_labels: np.ndarray  # [S, len(LABEL_KEYS)] ground-truth class indices
    prompts: list[str]  # [S]
    # [N, len(COVERAGE_LAYERS), H, W] uint8: how much of each pixel the character / the props cover (0-255)
    coverage: np.ndarray | None = None
    # casts (a set of cast stories): [S, MAX_CAST, 4] each shot's characters' attributes left to right
    # (-1: empty slot), [N, MAX_CAST, 4] float32 each frame's character boxes (NaN: none / out of view),
    # and per shot its characters' names left to right
    shot_cast: np.ndarray | None = None
    frame_boxes: np.ndarray | None = None
    cast_names: list[list[str]] | None = None

    @property
    def num_shots(self) -> int:
        return len(self.prompts)

    def frame_labels(self) -> np.ndarray:
        """``[N, len(LABEL_KEYS)]``: every frame's labels (those of its shot)."""
        return np.repeat(self.shot_labels, self.shot_length, axis=0)


def _cast_truth(specs, names, height, width):
    """Per shot its cast labels, per frame its boxes, per shot the cast's names."""
    boxes = [np.array([[b if b is not None else (np.nan,) * 4 for b in character_boxes(s, t, height, width)]
                       + [(np.nan,) * 4] * (MAX_CAST - len(s.cast)) for t in range(s.num_frames)], dtype=np.float32)
             for s in specs]
    return [cast_labels(s) for s in specs], boxes, names


def _render_story(args):
    seed, frames, height, width, cast = args
    story = make_cast_story(seed, frames=tuple(frames)) if cast else make_story(seed, frames=tuple(frames))
    clips = [render_shot_with_mask(s, height, width) for s in story.shots]
    locs = [story.locations.index(s.location) for s in story.shots]
    labels = [[frame_labels(s)[k] for k in LABEL_KEYS] for s in story.shots]
    names = ([[story.cast_names[j] for j in who] for who in story.shot_cast] if cast
             else [[story.name]] * len(story.shots))
    return clips, story.cuts, locs, labels, story.prompts, _cast_truth(story.shots, names, height, width)


def _render_take(args):
    seed, frames, height, width, _ = args
    spec, prompt = make_long_take(seed, frames)
    return ([render_shot_with_mask(spec, height, width)], [True], [0], [[frame_labels(spec)[k] for k in LABEL_KEYS]],
            [prompt], _cast_truth([spec], [[]], height, width))  # a take has no memory: no names needed


def render_dataset(num_stories: int, num_long_takes: int = 0, first_seed: int = 0, shot_frames=(12,),
                   long_take_frames: int = 32, height: int = 64, width: int = 64, workers: int = 0,
                   progress: bool = True, cast_stories: int = 0) -> RenderedSet:
    """``num_stories`` single-character stories, then ``cast_stories`` multi-character ones (seeds after
    them), then ``num_long_takes`` long single takes."""
    jobs = [(_render_story, (first_seed + i, list(shot_frames), height, width, False)) for i in range(num_stories)]
    jobs += [(_render_story, (first_seed + num_stories + i, list(shot_frames), height, width, True))
             for i in range(cast_stories)]
    num_stories += cast_stories
    jobs += [(_render_take, (first_seed + 10_000_000 + i, long_take_frames, height, width, False))
             for i in range(num_long_takes)]
    # the cores this process may run on (taskset, a container's CPU set), not the machine's count
    workers = workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()) or 1
    if workers > 1 and len(jobs) > 8:
        with process_pool(workers) as pool:
            results = list(progress_bar(pool.map(_call, jobs, chunksize=8), total=len(jobs), desc="render", enabled=progress))
    else:
        results = [_call(j) for j in progress_bar(jobs, desc="render", enabled=progress)]
    frames, coverage, story, start, length, cut, loc, labels, prompts = [], [], [], [], [], [], [], [], []
    casts, boxes, names = [], [], []
    n, loc_base = 0, 0
    for sid, (clips, cuts, locs, labs, prs, (cl, bx, nm)) in enumerate(results):
        is_take = sid >= num_stories
        casts += cl
        boxes += bx
        names += nm
        for (clip, cover), c, lo, lab, p in zip(clips, cuts, locs, labs, prs, strict=True):
            frames.append(clip)
            coverage.append(cover)
            story.append(-1 if is_take else sid)
            start.append(n)
            length.append(len(clip))
            cut.append(c)
            loc.append(loc_base + lo)
            labels.append(lab)
            prompts.append(p)
            n += len(clip)
        loc_base += max(locs) + 1
    return RenderedSet(np.concatenate(frames), np.array(story), np.array(start), np.array(length), np.array(cut),
                       np.array(loc), np.array(labels), prompts, np.concatenate(coverage), np.stack(casts),
                       np.concatenate(boxes), names)


def _call(job):
    fn, args = job
    return fn(args)


# the arrays of a RenderedSet as saved on disk (one .npy each; prompts go to prompts.txt)
_ARRAYS = ("frames", "shot_story", "shot_start", "shot_length", "shot_cut", "shot_location", "shot_labels",
           "coverage", "shot_cast", "frame_boxes")


def save_rendered(data: RenderedSet, directory) -> None:
    from pathlib import Path

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for name in _ARRAYS:
        if getattr(data, name) is not None:
            np.save(d / f"{name}.npy", getattr(data, name))
    (d / "prompts.txt").write_text("\n".join(data.prompts))
    if data.cast_names is not None:
        (d / "cast_names.txt").write_text("\n".join(",".join(n) for n in data.cast_names))


def load_rendered(directory) -> RenderedSet | None:
    from pathlib import Path

    d = Path(directory)
    if not (d / "prompts.txt").is_file():
        return None
    # a cache written before coverage layers existed loads without them (no region-weighted loss)
    arrays = {name: np.load(d / f"{name}.npy", mmap_mode="r" if name in ("frames", "coverage") else None)
              for name in _ARRAYS if (d / f"{name}.npy").is_file()}
    names = [line.split(",") for line in (d / "cast_names.txt").read_text().split("\n")] \
        if (d / "cast_names.txt").is_file() else None
    return RenderedSet(**arrays, prompts=(d / "prompts.txt").read_text().split("\n"), cast_names=names)

