"""Training on a curated dataset (``data: {kind: curated, path: DATASET}``): its scenes are the trainer's
stories.

A sample of ``filmweaver curate`` is one scene: several shots of the same place and people, its
script's prompts (captioned together, so a character keeps one description) and, where the captions
name characters, its entity schedule. Here every kept shot becomes one row of a :class:`ShotTable`
and its VAE latents one range of latent frames, which is what :class:`~filmweaver.train.data.LatentStore`
samples the four modes from: memory keyframes from earlier shots of the same scene, negatives from
other scenes, the temporal cache from the shot's own earlier latent frames.

Latents come from the shards where they were precomputed by the same VAE at the same resolution (the
VAE's fingerprint is in their metadata); otherwise each clip is decoded and encoded once. Either way
they are written shot by shot to one flat file (``output_dir/latents.bin``, float16, described by
``latents.json``, written last) and read back memory-mapped: the dataset never has to fit in host or
GPU memory, each batch reads its own rows (the operating system pages them in), and the next run of
the same dataset, VAE and settings reuses the file. A file whose size does not match its description
(a run killed while writing it, a damaged copy) is made again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from filmweaver.io import write_json
from filmweaver.progress import progress_bar


@dataclass
class ShotTable:
    """One row per shot, as a rendered synthetic set also provides them: ``shot_story [S]`` the scene,
    ``shot_start / shot_length [S]`` its range of latent frames in the store, ``shot_cut [S]`` (a
    curated shot always starts with a cut), ``shot_location [S]`` (unknown here: the scene), its
    prompt and the characters its scene's schedule names in it."""

    shot_story: np.ndarray
    shot_start: np.ndarray
    shot_length: np.ndarray
    shot_cut: np.ndarray
    shot_location: np.ndarray
    prompts: list[str]
    cast_names: list[list[str]] | None
    keys: list[str]  # the sample each shot comes from
    # per shot, its prompt with the characters named instead of described (unrestated_prompt), where a
    # later shot of its scene describes one; None elsewhere (augment.unrestate trains on them)
    unrestated: list[str | None] | None = None
    coverage = None  # no per-pixel layers: real footage has no renderer's masks

    @property
    def num_shots(self) -> int:
        return len(self.prompts)


def _decode(clip: bytes) -> torch.Tensor:
    from filmweaver.io import read_video

    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        f.write(clip)
        f.flush()
        return read_video(f.name)[0]


def _sample_shots(sample: dict) -> tuple[list[str], list[list[str]]]:
    """Each shot's prompt and the characters its scene's schedule names in it."""
    from filmweaver.script import parse_story

    shots = parse_story(sample["script"], file=f"{sample['key']}.script.json").shots()
    return [s.prompt for s in shots], [list(s.entities.characters) for s in shots]


def unrestated_prompt(prompt: str, characters: list[dict]) -> str | None:
    """``prompt`` with each character of the scene's sheet (``{"name", "description"}``) named instead
    of described, where the prompt states its description verbatim ("Ada, a tall woman in a red coat,
    walks" -> "Ada walks"); None when it states none. A curated caption describes every character in
    every shot, a story script only where one first appears: trained on these, a later shot takes the
    look from memory, as it must at generation."""
    out = prompt
    for c in characters:
        name, desc = str(c.get("name", "")), str(c.get("description", "")).strip().rstrip(".,")
        if not name or not desc or desc == name:
            continue
        said = desc if desc.startswith(name) else f"{name}, {desc}"
        for form in (said + ",", said):
            if form in out:
                out = out.replace(form, name)
                break
    return out if out != prompt else None


TABLE_VERSION = 2  # the cached shot table's columns (2: unrestated prompts); another version is made again
LATENT_DTYPE = np.float16  # the stored latents' precision (the VAE's output is float32; training is bf16)


def clip_size(clip: bytes) -> tuple[int, int]:
    """An mp4's frame size (h, w), from its header."""
    import io

    import av

    with av.open(io.BytesIO(clip)) as container:
        stream = container.streams.video[0]
        return stream.codec_context.height, stream.codec_context.width


def nearest_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket (h, w) whose aspect is nearest ``size``'s (on a log scale: 2:1 and 1:2 are as far from 1:1)."""
    aspect = np.log(size[1] / size[0])
    return tuple(min(buckets, key=lambda b: abs(np.log(b[1] / b[0]) - aspect)))


def load_curated(path: str | Path, codec, size: tuple[int, int], min_length: int, min_shots: int = 2,
                 cache: Path | None = None, progress: bool = True,
                 buckets: list[tuple[int, int]] | None = None) -> tuple[torch.Tensor, ShotTable, dict]:
    """Every usable shot of the dataset at ``path``: latents ``[N, C, h, w]`` (one row per latent frame,
    float16 on the CPU: memory-mapped from ``cache`` (a ``.bin`` path) when given, else in memory), the
    :class:`ShotTable`, and a summary (samples and shots used, skipped and why, where the latents came
    from). Shots shorter than ``min_length`` latent frames (one training chunk) are left out, then
    scenes with fewer than ``min_shots`` shots. With ``buckets``: only the scenes whose nearest bucket
    (:func:`nearest_bucket`, by their first clip) is ``size``; ``story`` ids stay the dataset's."""
    from filmweaver.curate import read_samples
    from filmweaver.curate.latents import FIT

    fingerprint = codec.fingerprint()
    index = Path(path) / "index.json"
    if not index.is_file():
        raise ValueError(f"data.path: {path} is not a curated dataset (no index.json; make one with filmweaver curate)")
    digest = hashlib.sha256(index.read_bytes() + f"{fingerprint}{size}{min_length}{min_shots}{FIT}{buckets}"
                            f"{TABLE_VERSION}".encode()
                            ).hexdigest()[:16]
    cached = _read_cache(cache, digest)
    if cached is not None:
        return cached
    rows, start = [], 0
    summary = {"samples": 0, "shots": 0, "skipped": {}, "latents": {"precomputed": 0, "encoded": 0}}
    sink = _LatentSink(cache)

    def skip(why):
        summary["skipped"][why] = summary["skipped"].get(why, 0) + 1

    bar = progress_bar(desc="curated samples", enabled=progress)
    for story, sample in enumerate(read_samples(path)):
        bar.update(1)
        if buckets and sample["clips"] and nearest_bucket(clip_size(sample["clips"][0]), buckets) != tuple(size):
            continue  # another bucket's scene
        prompts, names = _sample_shots(sample)
        sheet = sample["script"].get("characters") or []
        meta = sample.get("latents_meta", {})
        ready = (meta.get("vae") == fingerprint and (int(meta.get("height", 0)), int(meta.get("width", 0))) == tuple(size)
                 and meta.get("fit") == FIT and len(sample.get("latents", {})) == len(prompts))
        shots = []
        for i, (prompt, who) in enumerate(zip(prompts, names, strict=True)):
            if ready:
                z = sample["latents"][f"shot_{i + 1:03d}"]
                summary["latents"]["precomputed"] += 1
            else:
                from filmweaver.curate.latents import clip_latents

                z = clip_latents(codec, _decode(sample["clips"][i]), size)
                summary["latents"]["encoded"] += 1
            if z.shape[1] < min_length:
                skip(f"shorter than {min_length} latent frames")
                continue
            shots.append((z.permute(1, 0, 2, 3).contiguous(), prompt, who))
        if len(shots) < min_shots:
            skip(f"scene with fewer than {min_shots} usable shots")
            continue
        for j, (z, prompt, who) in enumerate(shots):
            rows.append({"story": story, "start": start, "length": int(z.shape[0]), "prompt": prompt, "names": who,
                         "key": sample["key"], "unrestated": unrestated_prompt(prompt, sheet) if j else None})
            sink.write(z)
            start += z.shape[0]
        summary["samples"] += 1
        summary["shots"] += len(shots)
    bar.close()
    if not rows and buckets:
        return None, None, summary  # no scene of this aspect
    if not rows:
        raise ValueError(f"data.path: no scene of {path} has {min_shots} shots of at least {min_length} latent "
                         f"frames (skipped: {summary['skipped'] or 'no samples'})")
    latents = sink.finish({"digest": digest, "table": rows, "summary": summary})
    return latents, _table(rows), summary


class _LatentSink:
    """Latent rows written as they come: appended to ``cache``'s temporary file (then renamed, its
    description written last) or, without a cache, collected in memory."""

    def __init__(self, cache: Path | None):
        self.cache, self.parts, self.shape = cache, [], None
        self.file = None
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            _description(cache).unlink(missing_ok=True)  # no old description beside new rows
            self.tmp = cache.with_name(cache.name + ".partial")
            self.file = open(self.tmp, "wb")  # noqa: SIM115 (closed in finish)

    def write(self, z: torch.Tensor) -> None:
        z = z.detach().cpu().to(torch.float16)
        self.shape = tuple(z.shape[1:])
        if self.file is None:
            self.parts.append(z)
        else:
            self.file.write(z.contiguous().numpy().tobytes())

    def finish(self, meta: dict) -> torch.Tensor:
        if self.file is None:
            return torch.cat(self.parts)
        self.file.close()
        os.replace(self.tmp, self.cache)
        rows = self.cache.stat().st_size // (np.dtype(LATENT_DTYPE).itemsize * int(np.prod(self.shape)))
        write_json(_description(self.cache), {**meta, "shape": [int(rows), *self.shape], "dtype": "float16"})
        return _mapped(self.cache, (int(rows), *self.shape))


def _description(cache: Path) -> Path:
    return cache.with_suffix(".json")


def _mapped(cache: Path, shape: tuple[int, ...]) -> torch.Tensor:
    """The file's rows as a tensor backed by the file (copy-on-write: nothing is written back)."""
    return torch.from_numpy(np.memmap(cache, dtype=LATENT_DTYPE, mode="c", shape=shape))


def _read_cache(cache: Path | None, digest: str) -> tuple[torch.Tensor, ShotTable, dict] | None:
    """What :func:`load_curated` kept in ``cache`` for the same dataset, VAE and settings (``digest``);
    None when there is none, it is another's, or its size does not match its description."""
    if cache is None or not cache.is_file() or not _description(cache).is_file():
        return None
    try:
        meta = json.loads(_description(cache).read_text())
        shape = tuple(int(x) for x in meta["shape"])
    except (ValueError, KeyError, TypeError):
        return None
    if meta.get("digest") != digest or cache.stat().st_size != np.dtype(LATENT_DTYPE).itemsize * int(np.prod(shape)):
        return None
    return _mapped(cache, shape), _table(meta["table"]), meta["summary"]


def concat_tables(tables: list[ShotTable]) -> ShotTable:
    """The buckets' tables as one (its prompts and names, in bucket order: global shot indices)."""
    cat = np.concatenate
    return ShotTable(cat([t.shot_story for t in tables]), cat([t.shot_start for t in tables]),
                     cat([t.shot_length for t in tables]), cat([t.shot_cut for t in tables]),
                     cat([t.shot_location for t in tables]), [p for t in tables for p in t.prompts],
                     None if all(t.cast_names is None for t in tables)
                     else [n for t in tables for n in (t.cast_names or [[]] * t.num_shots)],
                     [k for t in tables for k in t.keys],
                     [u for t in tables for u in (t.unrestated or [None] * t.num_shots)])


def _table(rows: list[dict]) -> ShotTable:
    names = [r["names"] for r in rows]
    story = np.array([r["story"] for r in rows], dtype=np.int64)
    return ShotTable(shot_story=story, shot_start=np.array([r["start"] for r in rows], dtype=np.int64),
                     shot_length=np.array([r["length"] for r in rows], dtype=np.int64),
                     shot_cut=np.ones(len(rows), dtype=bool), shot_location=story.copy(),
                     prompts=[r["prompt"] for r in rows], cast_names=names if any(names) else None,
                     keys=[r["key"] for r in rows], unrestated=[r.get("unrestated") for r in rows])
