"""Training samples for the cache-guided objective, drawn from VAE latents of rendered shots.

Every shot's latents live in one tensor on the training device, so a batch is a handful of index
operations. A batch has one inference mode (the context structure must be the same across the batch):

* ``text``: a chunk at the start of a shot, no cache;
* ``temporal``: a chunk inside a shot (or the start of a ``cut: false`` shot, whose cache holds the
  previous shot's last frame: MI2V), with the frames before it in the temporal cache;
* ``shot``: the start of a later shot of a story, with keyframes of earlier shots in the shot cache;
* ``both``: a chunk inside a later shot, with both caches.

Memory keyframes come from earlier shots of the same story (preferring, like prompt retrieval, shots
at the same location); with ``negative_sampling`` a slot may hold a keyframe of another story.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from filmweaver.backbone.vae import LatentCodec
from filmweaver.synth.dataset import RenderedSet


@dataclass
class Batch:
    mode: str
    target: torch.Tensor  # [B, C, F, h, w] clean latents of the chunk to generate
    shot_index: torch.Tensor  # [B] which shot (prompt) each sample comes from
    history: list[torch.Tensor] | None  # B tensors [C, T_i, h, w]: frames before the chunk (temporal cache)
    memory: torch.Tensor | None  # [B, C, K, h, w] shot-cache keyframes, oldest first
    negatives: int = 0  # memory slots that hold another story's keyframe
    coverage: torch.Tensor | None = None  # [B, F, L, h, w] coverage of each target latent pixel by each layer (0-1)


class LatentStore:
    """All shots' latents ``[N, C, h, w]`` (one latent frame per video frame for the synthetic VAE), and
    optionally each latent pixel's coverage by the renderer's layers ``[N, L, h, w]``
    (:data:`~filmweaver.synth.world.COVERAGE_LAYERS`: character, props; for a region-weighted loss)."""

    def __init__(self, latents: torch.Tensor, data: RenderedSet, temporal_factor: int = 1,
                 coverage: torch.Tensor | None = None):
        if temporal_factor != 1:
            raise NotImplementedError("the sampler indexes frames 1:1 with latents (temporal_factor 1)")
        self.latents = latents
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
        self.continuation_ids = np.array([s for s in self.later_shot_ids if not data.shot_cut[s]])

    @classmethod
    @torch.no_grad()
    def encode(cls, data: RenderedSet, codec: LatentCodec, device: torch.device, batch_size: int = 32,
               dtype: torch.dtype = torch.float16, progress: bool = True) -> LatentStore:
        """Encode every shot with the (causal) VAE; shots are padded to ``1 + 4k`` frames by repeating
        the last frame (later frames do not change earlier latents) and the padding is dropped."""
        c = codec.latent_channels
        h, w = codec.latent_size(data.frames.shape[1], data.frames.shape[2])
        out = torch.empty((len(data.frames), c, h, w), dtype=dtype, device=device)
        by_len: dict[int, list[int]] = {}
        for s, n in enumerate(data.shot_length.tolist()):
            by_len.setdefault(n, []).append(s)
        bar = tqdm(total=data.num_shots, desc="encode", disable=not progress)
        for n, shots in by_len.items():
            padded = 1 + 4 * -(-(n - 1) // 4)
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
    def _frames(self, shot: int, first: int, count: int) -> torch.Tensor:
        """``[C, count, h, w]`` latents of ``shot`` from frame ``first``."""
        a = int(self.start[shot]) + first
        return self.latents[a : a + count].permute(1, 0, 2, 3)

    def _coverage(self, shot: int, first: int, count: int) -> torch.Tensor:
        a = int(self.start[shot]) + first
        return self.coverage[a : a + count]

    def sample(self, mode: str, batch_size: int, chunk: int, history: int, num_memory: int, rng: np.random.Generator,
               long_takes: float = 0.0, negative_sampling: float = 0.0) -> Batch:
        targets, cover, shots, hist, mems, negatives = [], [], [], [], [], 0
        for _ in range(batch_size):
            if mode == "text":
                s = int(rng.choice(self.story_shot_ids))
                f0 = 0
            elif mode == "temporal":
                pool = self.take_ids if (len(self.take_ids) and rng.random() < long_takes) else self.story_shot_ids
                s = int(rng.choice(pool))
                f0 = self._inner_start(s, chunk, rng)
            elif mode == "shot":
                s = int(rng.choice(self.later_shot_ids))
                f0 = 0
            else:  # both
                s = int(rng.choice(self.later_shot_ids))
                f0 = self._inner_start(s, chunk, rng)
            targets.append(self._frames(s, f0, chunk))
            if self.coverage is not None:
                cover.append(self._coverage(s, f0, chunk))
            shots.append(s)
            if mode in ("temporal", "both"):
                if f0 == 0:  # the first chunk of a cut: false shot continues from the previous shot (MI2V)
                    prev = s - 1
                    hist.append(self._frames(prev, int(self.length[prev]) - 1, 1))
                else:
                    a = max(0, f0 - history)
                    hist.append(self._frames(s, a, f0 - a))
            if mode in ("shot", "both"):
                m, n_neg = self._memory(s, num_memory, rng, negative_sampling)
                mems.append(m)
                negatives += n_neg
        return Batch(mode, torch.stack(targets), torch.tensor(shots), hist or None,
                     torch.stack(mems) if mems else None, negatives, torch.stack(cover) if cover else None)

    def _inner_start(self, s: int, chunk: int, rng: np.random.Generator) -> int:
        n = int(self.length[s])
        if not self.data.shot_cut[s] and self.data.shot_story[s] >= 0 and rng.random() < 0.25:
            return 0
        return int(rng.integers(1, max(2, n - chunk + 1)))

    def _memory(self, s: int, k: int, rng: np.random.Generator, negative_sampling: float) -> tuple[torch.Tensor, int]:
        story = int(self.data.shot_story[s])
        earlier = self.story_shots[story][: self.position[s]]
        loc = self.data.shot_location[s]
        weights = np.array([3.0 if self.data.shot_location[e] == loc else 1.0 for e in earlier])
        picks = rng.choice(earlier, size=k, p=weights / weights.sum())
        frames, n_neg = [], 0
        keep = int(rng.integers(k))  # at least one slot stays relevant
        for j, e in enumerate(picks):
            if j != keep and rng.random() < negative_sampling:
                other = int(rng.choice(self.story_ids))
                while other == story and len(self.story_ids) > 1:
                    other = int(rng.choice(self.story_ids))
                e = int(rng.choice(self.story_shots[other]))
                n_neg += 1
            n = int(self.length[e])
            fi = 0 if rng.random() < 0.5 else int(rng.integers(n))
            frames.append(self._frames(int(e), fi, 1))
        # story order (negatives fall where they were drawn), as retrieval returns bank order
        return torch.cat(frames, dim=1), n_neg


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
