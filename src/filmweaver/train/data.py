"""Training samples for the cache-guided objective, drawn from VAE latents of rendered shots.

Every shot's latents live in one tensor on the training device, so a batch is a handful of index
operations. A batch has one inference mode (the context structure must be the same across the batch):

* ``text``: a chunk at the start of a shot, no cache;
* ``temporal``: a chunk inside a shot (or the start of a ``cut: false`` shot, whose cache holds the
  previous shot's last frame: MI2V), with the frames before it in the temporal cache;
* ``shot``: the start of a later shot of a story, with keyframes of earlier shots in the shot cache;
* ``both``: a chunk inside a later shot, with both caches.

Memory keyframes come from earlier shots of the same story (preferring, like prompt retrieval, shots
at the same location); with ``negative_sampling`` a slot may hold a keyframe of another story. With
``entity_memory`` a sample's memory is drawn as the ``entity`` shot-cache policy retrieves it: each
character the shot shows one keyframe of its least crowded earlier appearance, last and in the order
the shot names them, the free slots before them drawn as above.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from filmweaver.backbone.entity_tags import column_strips
from filmweaver.backbone.vae import LatentCodec, latent_frame_count, pixel_frame_count
from filmweaver.progress import progress_bar
from filmweaver.synth.dataset import RenderedSet  # or a curated dataset's ShotTable: the same per-shot fields

# AutoencoderKLWan encodes the first frame, then chunks of 4 frames (with or without temporal downsampling)
WAN_ENCODER_CHUNK = 4


@dataclass
class Batch:
    mode: str
    target: torch.Tensor  # [B, C, F, h, w] clean latents of the chunk to generate
    shot_index: torch.Tensor  # [B] which shot (prompt) each sample comes from
    history: list[torch.Tensor] | None  # B tensors [C, T_i, h, w]: frames before the chunk (temporal cache)
    memory: torch.Tensor | None  # [B, C, K, h, w] shot-cache keyframes, oldest first
    negatives: int = 0  # memory slots that hold another story's keyframe
    coverage: torch.Tensor | None = None  # [B, F, L, h, w] coverage of each target latent pixel by each layer (0-1)
    memory_source: torch.Tensor | None = None  # [B, K] the shot each keyframe comes from (whom it shows)
    # [B, K, SLOTS] 1 where keyframe k shows the target shot's j-th character (entity slots)
    memory_slots: torch.Tensor | None = None


class LatentStore:
    """All shots' latents ``[N, C, h, w]`` (one latent frame per video frame for the synthetic VAE), and
    optionally each latent pixel's coverage by the renderer's layers ``[N, L, h, w]``
    (:data:`~filmweaver.synth.world.COVERAGE_LAYERS`: character, props; for a region-weighted loss)."""

    def __init__(self, latents: torch.Tensor, data: RenderedSet, temporal_factor: int = 1,
                 coverage: torch.Tensor | None = None, device=None, dtype: torch.dtype | None = None):
        """``latents`` may live on the host (a memory-mapped file: a curated dataset) while batches go
        to ``device`` in ``dtype`` (default: where and as the latents are)."""
        # every index here counts latent frames (one per video frame for the synthetic VAE). With
        # temporal compression only a shot's first latent frame encodes one image, as a keyframe of
        # the engine's is encoded: memory then takes first latent frames only
        self.image_frames_only = temporal_factor > 1
        self.latents = latents
        self.device = torch.device(device) if device is not None else latents.device
        self.dtype = dtype or latents.dtype
        self.coverage = coverage
        self.data = data
        self.start = data.shot_start
        self.length = data.shot_length
        self.story_shots: dict[int, list[int]] = {}
        for s, story in enumerate(data.shot_story.tolist()):
            if story >= 0:
                self.story_shots.setdefault(story, []).append(s)
        self.position = {s: k for shots in self.story_shots.values() for k, s in enumerate(shots)}
        self.story_ids = np.array(sorted(self.story_shots))
        story = data.shot_story
        self.story_shot_ids = np.nonzero(story >= 0)[0]
        self.take_ids = np.nonzero(story < 0)[0]
        self.later_shot_ids = np.array([s for s in self.story_shot_ids if self.position[s] > 0])
        self._index_memory_sources()
        self._index_appearances()
        self._index_cast_ids()

    def _index_cast_ids(self) -> None:
        """``_cast_ids [S, SLOTS]``: each shot's characters in its order as ids unique to (story, name),
        -1 past its cast, so a keyframe of another story never shares a character (a negative)."""
        from filmweaver.backbone.entity_tags import SLOTS

        names = self.data.cast_names
        self._cast_ids = np.full((len(self.data.shot_story), SLOTS), -1, dtype=np.int64)
        if names is None:
            return
        ids: dict[tuple[int, str], int] = {}
        for shot, (story, cast) in enumerate(zip(self.data.shot_story.tolist(), names, strict=True)):
            for j, name in enumerate(cast[:SLOTS]):
                self._cast_ids[shot, j] = ids.setdefault((story, name), len(ids))

    def memory_slots(self, shots: np.ndarray, source: np.ndarray) -> torch.Tensor:
        """``[B, K, SLOTS]``: 1 where keyframe ``source[b, k]`` shows shot ``shots[b]``'s j-th character."""
        target = self._cast_ids[shots]  # [B, SLOTS]
        shown = self._cast_ids[source]  # [B, K, SLOTS]
        hit = (shown[:, :, :, None] == target[:, None, None, :]).any(2) & (target[:, None, :] >= 0)
        return torch.from_numpy(hit.astype(np.float32))

    def memory_slot_regions(self, shots: np.ndarray, source: np.ndarray, hw: tuple[int, int]) -> torch.Tensor:
        """``[B, K, h, w, SLOTS]``: :meth:`memory_slots` marked where each character is, by the layout the
        engine assumes without a detector (:func:`filmweaver.backbone.entity_tags.slot_regions`): the
        i-th of a keyframe's n characters in the i-th vertical strip, a lone character everywhere."""
        h, w = hw
        target = self._cast_ids[shots]  # [B, SLOTS]
        shown = self._cast_ids[source]  # [B, K, SLOTS], each keyframe's characters in its own shot's order
        strips = column_strips(torch.from_numpy((shown >= 0).sum(-1)), w).numpy()  # [B, K, w]
        owner = np.minimum(strips, shown.shape[-1] - 1)
        at = np.take_along_axis(shown, owner, axis=2)  # [B, K, w]: whom each column shows
        hit = (at[..., None] == target[:, None, None, :]) & (target[:, None, None, :] >= 0) & (at[..., None] >= 0)
        return torch.from_numpy(np.broadcast_to(hit[:, :, None].astype(np.float32), (*hit.shape[:2], h, *hit.shape[2:])).copy())

    def _index_memory_sources(self) -> None:
        """Padded tables for drawing a whole batch's memory at once (no per-sample Python).

        Row ``r`` of ``_earlier`` / ``_earlier_cdf`` belongs to shot ``later_shot_ids[r]``: its story's
        earlier shots and the cumulative probability of drawing each (a shot at the same location
        counts 3x, as prompt retrieval prefers it); padding has probability 0. ``_story_table`` holds
        every story's shots (padded with -1) for negatives, ``_story_row`` a story id's row in it."""
        data = self.data
        later = self.later_shot_ids
        width = max([self.position[int(s)] for s in later], default=1)
        self._earlier = np.zeros((len(later), width), dtype=np.int64)
        self._earlier_cdf = np.ones((len(later), width))
        names = data.cast_names
        for r, s in enumerate(later.tolist()):
            earlier = self.story_shots[int(data.shot_story[s])][: self.position[s]]
            w = np.array([3.0 if data.shot_location[e] == data.shot_location[s] else 1.0 for e in earlier])
            if names is not None and len({n for e in earlier + [s] for n in names[e]}) > 1:
                # a cast story: as the entity policy retrieves, shots showing the shot's characters first
                # (each one shared weighs 3x more); a one-character story keeps the location weights alone
                w = w * np.array([1.0 + 2.0 * len(set(names[e]) & set(names[s])) for e in earlier])
            self._earlier[r, : len(earlier)] = earlier
            self._earlier_cdf[r, : len(earlier)] = np.cumsum(w) / w.sum()
            self._earlier_cdf[r, len(earlier) - 1] = 1.0  # exactly: a draw in [0, 1) never lands in the padding
        self._later_row = np.full(len(data.shot_story), -1, dtype=np.int64)
        self._later_row[later] = np.arange(len(later))
        most = max((len(v) for v in self.story_shots.values()), default=1)
        self._story_table = np.full((len(self.story_ids), most), -1, dtype=np.int64)
        self._story_count = np.zeros(len(self.story_ids), dtype=np.int64)
        for i, story in enumerate(self.story_ids.tolist()):
            shots = self.story_shots[story]
            self._story_table[i, : len(shots)] = shots
            self._story_count[i] = len(shots)
        self._story_row = np.full(int(data.shot_story.max(initial=-1)) + 1, -1, dtype=np.int64)  # story id -> row
        self._story_row[self.story_ids] = np.arange(len(self.story_ids))

    def _index_appearances(self) -> None:
        """Padded tables for the entity policy's draw: ``_appearances[r, j]`` the earlier shots of
        later shot ``later_shot_ids[r]``'s story that show its ``j``-th character (in the shot's order)
        least crowded (fewest characters), ``_appearance_count[r, j]`` how many (0: first seen here, or
        no ``j``-th character). Without cast names every shot shows its story's one character."""
        data, later = self.data, self.later_shot_ids
        names = data.cast_names or [["?"]] * len(data.shot_story)
        slots = max([len(names[int(s)]) for s in later], default=1)
        width = max([self.position[int(s)] for s in later], default=1)
        self._appearances = np.zeros((len(later), slots, width), dtype=np.int64)
        self._appearance_count = np.zeros((len(later), slots), dtype=np.int64)
        for r, s in enumerate(later.tolist()):
            earlier = self.story_shots[int(data.shot_story[s])][: self.position[s]]
            for j, name in enumerate(names[s]):
                seen = [e for e in earlier if name in names[e]]
                if seen:
                    fewest = min(len(names[e]) for e in seen)
                    best = [e for e in seen if len(names[e]) == fewest]
                    self._appearances[r, j, : len(best)] = best
                    self._appearance_count[r, j] = len(best)

    @classmethod
    @torch.no_grad()
    def encode(cls, data: RenderedSet, codec: LatentCodec, device: torch.device, batch_size: int = 32,
               dtype: torch.dtype = torch.float16, progress: bool = True) -> LatentStore:
        """Encode every shot with the (causal) VAE; shots are padded to the Wan encoder's chunks (``1 + 4k`` frames) by repeating
        the last frame (later frames do not change earlier latents) and the padding is dropped. One latent per
        frame: the synthetic world's VAE has no temporal compression."""
        if codec.temporal_factor != 1:
            raise ValueError(f"the latent store holds one latent per frame: it needs a VAE without temporal "
                             f"compression, not one of factor {codec.temporal_factor}")
        c = codec.latent_channels
        h, w = codec.latent_size(data.frames.shape[1], data.frames.shape[2])
        out = torch.empty((len(data.frames), c, h, w), dtype=dtype, device=device)
        by_len: dict[int, list[int]] = {}
        for s, n in enumerate(data.shot_length.tolist()):
            by_len.setdefault(n, []).append(s)
        bar = progress_bar(total=data.num_shots, desc="encode", enabled=progress)
        for n, shots in by_len.items():
            padded = pixel_frame_count(latent_frame_count(n, WAN_ENCODER_CHUNK, round_up=True), WAN_ENCODER_CHUNK)
            for k in range(0, len(shots), batch_size):
                group = shots[k : k + batch_size]
                idx = np.stack([np.minimum(np.arange(padded), n - 1) + data.shot_start[s] for s in group])
                pix = torch.from_numpy(data.frames[idx]).to(codec.device).permute(0, 4, 1, 2, 3).float() / 255.0
                z = codec.encode(pix)[:, :, :n]  # [b, C, n, h, w]
                for s, zs in zip(group, z, strict=True):
                    out[data.shot_start[s] : data.shot_start[s] + n] = zs.permute(1, 0, 2, 3).to(dtype)
                bar.update(len(group))
        bar.close()
        return cls(out, data, coverage=latent_coverage(data.coverage, (h, w), device, dtype))

    # -- sampling ------------------------------------------------------------------------------------
    def _gather(self, frame_index: np.ndarray, table: torch.Tensor | None = None) -> torch.Tensor:
        """Rows of ``table`` (default: the latents) at global frame indices ``[...]`` -> ``[..., *row]``,
        one indexing op on the table's device."""
        table = self.latents if table is None else table
        rows = table[to_device(torch.from_numpy(frame_index), table.device)]
        if rows.device != self.device:
            rows = to_device(rows, self.device)
        return rows.to(self.dtype)  # a no-op where they are already

    def sample(self, mode: str, batch_size: int, chunk: int, history: int, num_memory: int, rng: np.random.Generator,
               long_takes: float = 0.0, negative_sampling: float = 0.0, entity_memory: float = 0.0,
               slot_regions: bool = False) -> Batch:
        """A batch of ``mode``, drawn for the whole batch at once (a per-sample Python loop cost ~10 ms
        a memory batch on the training host, which bounds the step rate of this small model).
        ``slot_regions``: the keyframes' entity slots per latent pixel (:meth:`memory_slot_regions`)."""
        b = batch_size
        if mode == "text":
            shots, f0 = rng.choice(self.story_shot_ids, size=b), np.zeros(b, dtype=np.int64)
        elif mode == "temporal":
            shots = rng.choice(self.story_shot_ids, size=b)
            if len(self.take_ids):
                takes = rng.random(b) < long_takes
                shots = np.where(takes, rng.choice(self.take_ids, size=b), shots)
            f0 = self._inner_starts(shots, chunk, rng)
        elif mode == "shot":
            shots, f0 = rng.choice(self.later_shot_ids, size=b), np.zeros(b, dtype=np.int64)
        else:  # both
            shots = rng.choice(self.later_shot_ids, size=b)
            f0 = self._inner_starts(shots, chunk, rng)
        first = self.start[shots] + f0  # global index of each chunk's first frame
        window = first[:, None] + np.arange(chunk)  # [B, chunk]
        target = self._gather(window).permute(0, 2, 1, 3, 4).contiguous()  # [B, C, chunk, h, w]
        cover = None
        if self.coverage is not None:
            cover = self._gather(window, self.coverage)  # [B, chunk, L, h, w]
        hist = None
        if mode in ("temporal", "both"):
            # f0 == 0 (the first chunk of a cut: false shot) continues from the previous shot's last
            # frame (MI2V); otherwise up to `history` frames of the shot before the chunk
            prev = np.maximum(shots - 1, 0)
            begin = np.where(f0 == 0, self.start[prev] + self.length[prev] - 1, first - np.minimum(f0, history))
            count = np.where(f0 == 0, 1, np.minimum(f0, history))
            # every sample's range begin .. begin + count - 1, concatenated without a Python loop
            flat = np.repeat(begin - (np.cumsum(count) - count), count) + np.arange(count.sum())
            frames = self._gather(flat)  # [sum(count), C, h, w]
            hist = [h.permute(1, 0, 2, 3) for h in torch.split(frames, count.tolist())]
        mem, negatives, source, slots = None, 0, None, None
        if mode in ("shot", "both"):
            mem, negatives, source = self._memory(shots, num_memory, rng, negative_sampling, entity_memory)
            slots = (self.memory_slot_regions(shots, source.numpy(), tuple(mem.shape[3:])) if slot_regions
                     else self.memory_slots(shots, source.numpy()))
        return Batch(mode, target, torch.from_numpy(shots), hist, mem, negatives, cover, source, slots)

    def _inner_starts(self, shots: np.ndarray, chunk: int, rng: np.random.Generator) -> np.ndarray:
        """A chunk start inside each shot; a continuing story shot (``cut: false``) starts at 0 a quarter
        of the time (its first chunk, conditioned on the previous shot's last frame)."""
        n = self.length[shots]
        start = rng.integers(1, np.maximum(2, n - chunk + 1))
        continuing = ~self.data.shot_cut[shots] & (self.data.shot_story[shots] >= 0) & (rng.random(len(shots)) < 0.25)
        return np.where(continuing, 0, start)

    def _memory(self, shots: np.ndarray, k: int, rng: np.random.Generator, negative_sampling: float,
                entity_memory: float = 0.0) -> tuple[torch.Tensor, int, torch.Tensor]:
        """``[B, C, k, h, w]`` keyframes of earlier shots of each sample's story (with replacement,
        same-location shots 3x as likely), a random slot but one of each sample replaced with
        probability ``negative_sampling`` by a keyframe of another story; with probability
        ``entity_memory`` a sample's last slots hold its characters' appearances instead
        (:meth:`_entity_slots`). Each keyframe is the shot's first frame half of the time, else a
        random frame of it. Returns the keyframes, the number of negatives and each keyframe's source
        shot ``[B, k]``."""
        b = len(shots)
        rows = self._later_row[shots]
        draw = rng.random((b, k))
        pick = (draw[:, :, None] > self._earlier_cdf[rows][:, None, :]).sum(-1)  # inverse CDF, [B, k]
        source = np.take_along_axis(self._earlier[rows], pick, axis=1)
        keep = rng.integers(k, size=b)  # at least one slot stays relevant
        negative = (rng.random((b, k)) < negative_sampling) & (np.arange(k)[None, :] != keep[:, None])
        if negative.any() and len(self.story_ids) > 1:
            own = self._story_row[self.data.shot_story[shots]]
            other = rng.integers(len(self.story_ids) - 1, size=(b, k))
            other += other >= own[:, None]  # uniform over the other stories
            shot_in = (rng.random((b, k)) * self._story_count[other]).astype(np.int64)
            source = np.where(negative, self._story_table[other, shot_in], source)
        else:
            negative[:] = False
        if entity_memory > 0:
            source, negative = self._entity_slots(rows, source, negative, rng.random(b) < entity_memory, rng)
        n = self.length[source]
        frame = np.where(rng.random((b, k)) < 0.5, 0, (rng.random((b, k)) * n).astype(np.int64))
        if self.image_frames_only:
            frame[:] = 0
        # slots in drawing order, negatives where they fell, as retrieval returns bank order
        mem = self._gather(self.start[source] + frame).permute(0, 2, 1, 3, 4).contiguous()  # [B, C, k, h, w]
        return mem, int(negative.sum()), torch.from_numpy(source)

    def _entity_slots(self, rows: np.ndarray, source: np.ndarray, negative: np.ndarray, chosen: np.ndarray,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """For the samples ``chosen [B]``: the last ``m`` of the ``k`` slots become one least crowded
        earlier appearance of each of the shot's first ``m`` characters seen before (``m`` at most
        ``k``), in the shot's order, as the ``entity`` policy places them; never negatives."""
        b, k = source.shape
        count = self._appearance_count[rows]  # [B, slots]
        have = (count > 0) & chosen[:, None]
        rank = np.cumsum(have, axis=1) - 1  # each present character's place among the shot's present ones
        have &= rank < k
        m = have.sum(1)  # [B] portraits per sample
        pick = (rng.random(count.shape) * np.maximum(count, 1)).astype(np.int64)
        drawn = np.take_along_axis(self._appearances[rows], pick[:, :, None], axis=2)[:, :, 0]  # [B, slots]
        source, negative = source.copy(), negative.copy()
        for j in range(count.shape[1]):
            i = np.nonzero(have[:, j])[0]
            slot = k - m[i] + rank[i, j]
            source[i, slot] = drawn[i, j]
            negative[i, slot] = False
        return source, negative


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """Host -> device without a stream sync (a copy from pageable memory waits for the device)."""
    if torch.device(device).type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def latent_coverage(coverage, latent_hw: tuple[int, int], device, dtype=torch.float16,
                    chunk: int = 4096) -> torch.Tensor | None:
    """Pixel coverage ``[N, L, H, W]`` uint8 -> each layer's share of each latent pixel ``[N, L, h, w]``
    in [0, 1], dilated by one latent pixel: the latents next to an edge carry the object too (the VAE's
    receptive field). ``None`` when the rendered set has no coverage."""
    if coverage is None:
        return None
    h, w = latent_hw
    out = torch.empty((len(coverage), coverage.shape[1], h, w), dtype=dtype, device=device)
    for a in range(0, len(coverage), chunk):
        m = torch.from_numpy(np.ascontiguousarray(coverage[a : a + chunk])).to(device).float() / 255.0
        m = torch.nn.functional.adaptive_avg_pool2d(m, (h, w))
        m = torch.nn.functional.max_pool2d(m, 3, stride=1, padding=1)
        out[a : a + chunk] = m.to(dtype)
    return out


class BucketedStore:
    """One :class:`LatentStore` per aspect bucket of a curated dataset (a bucket's latents share one
    size). A batch comes from one bucket, picked with probability proportional to the shots it has for
    the batch's mode; its shot indices are global (the buckets' tables concatenated, in order)."""

    def __init__(self, stores: list[LatentStore]):
        self.stores = stores
        self.offsets = np.cumsum([0] + [s.data.num_shots for s in stores[:-1]])

    def sample(self, mode: str, batch_size: int, chunk: int, history: int, num_memory: int, rng: np.random.Generator,
               long_takes: float = 0.0, negative_sampling: float = 0.0, entity_memory: float = 0.0,
               slot_regions: bool = False) -> Batch:
        """:meth:`LatentStore.sample` from one bucket (drawn first, from ``rng``)."""
        counts = np.array([len(s.later_shot_ids if mode in ("shot", "both") else s.story_shot_ids) for s in self.stores],
                          dtype=float)
        if counts.sum() == 0:
            raise ValueError(f"no bucket has shots for a {mode!r} batch")
        k = int(rng.choice(len(self.stores), p=counts / counts.sum()))
        batch = self.stores[k].sample(mode, batch_size, chunk, history, num_memory, rng, long_takes, negative_sampling,
                                      entity_memory, slot_regions)
        off = int(self.offsets[k])
        return dataclasses.replace(batch, shot_index=batch.shot_index + off,
                                   memory_source=None if batch.memory_source is None else batch.memory_source + off)

