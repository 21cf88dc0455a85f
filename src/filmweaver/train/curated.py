"""Training on a curated dataset (``data: {kind: curated, path: DATASET}``): its scenes are the trainer's
stories.

A sample of ``filmweaver curate`` is one scene: several shots of the same place and people, its
script's prompts (captioned together, so a character keeps one description) and, where the captions
name characters, its entity schedule. Here every kept shot becomes one row of a :class:`ShotTable`
and its VAE latents one range of latent frames, which is what :class:`~filmweaver.train.data.LatentStore`
samples the four modes from: memory keyframes from earlier shots of the same scene, negatives from
other scenes, the temporal cache from the shot's own earlier latent frames.

Latents come from the shards where they were precomputed by the same VAE at the same resolution (the
VAE's fingerprint is in their metadata); otherwise each clip is decoded and encoded once and the
result kept in ``output_dir/latents.safetensors`` for the next run.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

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


def load_curated(path: str | Path, codec, size: tuple[int, int], min_length: int, min_shots: int = 2,
                 cache: Path | None = None, progress: bool = True) -> tuple[torch.Tensor, ShotTable, dict]:
    """Every usable shot of the dataset at ``path``: latents ``[N, C, h, w]`` (one row per latent frame,
    on the CPU), the :class:`ShotTable`, and a summary (samples and shots used, skipped and why, where
    the latents came from). Shots shorter than ``min_length`` latent frames (one training chunk) are
    left out, then scenes with fewer than ``min_shots`` shots."""
    from filmweaver.curate import read_samples

    fingerprint = codec.fingerprint()
    index = Path(path) / "index.json"
    if not index.is_file():
        raise ValueError(f"data.path: {path} is not a curated dataset (no index.json; make one with filmweaver curate)")
    digest = hashlib.sha256(index.read_bytes() + f"{fingerprint}{size}{min_length}{min_shots}".encode()).hexdigest()[:16]
    cached = _read_cache(cache, digest)
    if cached is not None:
        return cached
    rows, parts, start = [], [], 0
    summary = {"samples": 0, "shots": 0, "skipped": {}, "latents": {"precomputed": 0, "encoded": 0}}

    def skip(why):
        summary["skipped"][why] = summary["skipped"].get(why, 0) + 1

    bar = progress_bar(desc="curated samples", enabled=progress)
    for story, sample in enumerate(read_samples(path)):
        bar.update(1)
        prompts, names = _sample_shots(sample)
        meta = sample.get("latents_meta", {})
        ready = (meta.get("vae") == fingerprint and (int(meta.get("height", 0)), int(meta.get("width", 0))) == tuple(size)
                 and len(sample.get("latents", {})) == len(prompts))
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
        for z, prompt, who in shots:
            rows.append({"story": story, "start": start, "length": int(z.shape[0]), "prompt": prompt, "names": who,
                         "key": sample["key"]})
            parts.append(z.float())
            start += z.shape[0]
        summary["samples"] += 1
        summary["shots"] += len(shots)
    bar.close()
    if not rows:
        raise ValueError(f"data.path: no scene of {path} has {min_shots} shots of at least {min_length} latent "
                         f"frames (skipped: {summary['skipped'] or 'no samples'})")
    latents = torch.cat(parts)
    if cache is not None:
        _write_cache(cache, digest, latents, rows, summary)
    return latents, _table(rows), summary


def _read_cache(cache: Path | None, digest: str) -> tuple[torch.Tensor, ShotTable, dict] | None:
    """What :func:`load_curated` kept in ``cache`` for the same dataset, VAE and settings (``digest``)."""
    if cache is None or not cache.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(cache), "pt") as f:
        meta = f.metadata() or {}
        if meta.get("digest") != digest:
            return None
        return f.get_tensor("latents"), _table(json.loads(meta["table"])), json.loads(meta["summary"])


def _write_cache(cache: Path, digest: str, latents: torch.Tensor, rows: list[dict], summary: dict) -> None:
    from safetensors.torch import save_file

    from filmweaver.io import atomic_path

    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache) as tmp:
        save_file({"latents": latents}, tmp, metadata={"digest": digest, "table": json.dumps(rows),
                                                       "summary": json.dumps(summary)})


def _table(rows: list[dict]) -> ShotTable:
    names = [r["names"] for r in rows]
    story = np.array([r["story"] for r in rows], dtype=np.int64)
    return ShotTable(shot_story=story, shot_start=np.array([r["start"] for r in rows], dtype=np.int64),
                     shot_length=np.array([r["length"] for r in rows], dtype=np.int64),
                     shot_cut=np.ones(len(rows), dtype=bool), shot_location=story.copy(),
                     prompts=[r["prompt"] for r in rows], cast_names=names if any(names) else None,
                     keys=[r["key"] for r in rows])
