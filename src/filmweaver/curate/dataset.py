"""The curated dataset on disk: WebDataset shards of multi-shot samples.

Why WebDataset: a sample is a few small files (a script, its shots' clips, its provenance) that are
read whole and in order, which is what tar shards stream best, from local disk or object storage,
with no database or extra service; a shard is a plain ``.tar`` any tool can open. (Lance's strength,
random access to columns of many rows, is not what training on whole multi-shot samples needs.)

Layout of ``DATASET/``::

    shards/STEM-000000.tar   per source video, samples_per_shard samples a shard; each sample:
        KEY.script.json      the scene as an ST-Bench script (a story of one scene: one prompt per
                             shot, the character sheet and entity schedule where captions name them)
        KEY.shot_001.mp4 ... its shots' clips, in order
        KEY.provenance.json  source file and digest, each shot's frame and time range, detector scores,
                             the captioner and each caption's validation
        KEY.latents.safetensors, KEY.text.safetensors   (latents.model set) each shot's VAE latents
                             and prompt embedding, by that model at its resolution
    videos/STEM.json         the video's record: every detected shot, kept or dropped and why (written
                             last: a video with a record is done)
    index.json               every sample: key, shard, shots; report.html: the pictures
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

from safetensors.torch import load

from filmweaver.curate.captions import SceneCaptions
from filmweaver.io import atomic_path

FORMAT = "filmweaver-curated/1"


def sample_key(name: str) -> str:
    """A WebDataset key: no dots (they separate a key from its file names) nor path separators."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def sample_script(name: str, caps: SceneCaptions) -> dict:
    script = {"story_name": name, "story_overview": "", "scenes": [
        {"scene_num": 1, "video_prompts": list(caps.shots), "cut": [True] * len(caps.shots)}]}
    if caps.characters:
        script["characters"] = caps.characters
    schedule = caps.entity_schedule()
    if schedule:
        script["entity_schedule"] = schedule
    return script


class ShardWriter:
    """Samples of one source video into ``DIR/PREFIX-NNNNNN.tar`` shards, each written atomically."""

    def __init__(self, directory: Path, prefix: str, per_shard: int):
        self.directory, self.prefix, self.per_shard = Path(directory), sample_key(prefix), per_shard
        self.pending: list[tuple[str, list[tuple[str, bytes]]]] = []
        self.written: list[str] = []

    def add(self, script: dict, clips: list[Path], provenance: dict, extra: list[tuple[str, bytes]] = ()) -> str:
        """One sample; ``extra``: more (suffix, bytes) members (precomputed latents, text embeddings)."""
        key = sample_key(script["story_name"])
        files = [("script.json", json.dumps(script, indent=1).encode()),
                 *((f"shot_{i + 1:03d}.mp4", Path(c).read_bytes()) for i, c in enumerate(clips)),
                 ("provenance.json", json.dumps({"format": FORMAT, **provenance}, indent=1).encode()), *extra]
        self.pending.append((key, files))
        if len(self.pending) == self.per_shard:
            self._flush()
        return key

    def _flush(self) -> None:
        name = f"{self.prefix}-{len(self.written):06d}.tar"
        with atomic_path(self.directory / name) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for key, files in self.pending:
                for suffix, data in files:
                    info = tarfile.TarInfo(f"{key}.{suffix}")
                    info.size, info.mtime, info.mode = len(data), 0, 0o644  # reproducible shards
                    tar.addfile(info, io.BytesIO(data))
        self.written.append(name)
        self.pending = []

    def close(self) -> list[str]:
        if self.pending:
            self._flush()
        return self.written


def read_samples(dataset: str | Path) -> Iterator[dict]:
    """Every sample of a dataset, in shard order: ``{"key", "script", "provenance", "clips": [bytes]}``
    plus ``latents`` / ``text`` (``{shot_NNN: tensor}``, with ``latents_meta`` / ``text_meta``: the
    model and resolution they were made by) where they were precomputed (through
    ``webdataset``, as a training loader reads the shards)."""
    import webdataset as wds

    shards = sorted(str(p) for p in (Path(dataset) / "shards").glob("*.tar"))
    if not shards:
        return
    for sample in wds.WebDataset(shards, shardshuffle=False, empty_check=False):
        clips = [sample[k] for k in sorted(k for k in sample if k.startswith("shot_") and k.endswith(".mp4"))]
        out = {"key": sample["__key__"], "script": json.loads(sample["script.json"]),
               "provenance": json.loads(sample["provenance.json"]), "clips": clips}
        for name in ("latents", "text"):
            if f"{name}.safetensors" in sample:
                out[name] = load(sample[f"{name}.safetensors"])
                out[f"{name}_meta"] = safetensors_metadata(sample[f"{name}.safetensors"])
        yield out


def safetensors_metadata(data: bytes) -> dict:
    """The ``__metadata__`` of a safetensors file's bytes (its header: a little-endian length, then JSON)."""
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]).get("__metadata__", {})
