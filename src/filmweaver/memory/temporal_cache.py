"""Temporal cache: the most recent latent frames of the current shot, differentially compressed.

``schedule`` lists ``(compression, frames)`` from newest to oldest; the default
``[(1, 2), (2, 2), (4, 4)]`` keeps the 2 newest latent frames at full resolution (1x patchify), the 2
before them merged 2x in time and space, and the 4 before those merged 4x. The window holds
``sum(frames)`` latent frames at most, so the token count is bounded however long the shot grows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from filmweaver.context import ContextFrames

# The one home of the temporal cache's default (EngineConfig.temporal_cache and the trainer read it)
DEFAULT_SCHEDULE: tuple[tuple[int, int], ...] = ((1, 2), (2, 2), (4, 4))


@dataclass
class TemporalCache:
    schedule: list[tuple[int, int]] = field(default_factory=lambda: list(DEFAULT_SCHEDULE))
    frames: torch.Tensor | None = None  # [B, C, T, h, w], oldest first, T <= capacity

    def __post_init__(self):
        for c, n in self.schedule:
            if c not in (1, 2, 4):
                raise ValueError(f"temporal cache: compression must be 1, 2 or 4, got {c}")
            if n < 0 or n % c:
                raise ValueError(f"temporal cache: {n} frames at {c}x is not a whole number of {c}-frame groups")

    @property
    def capacity(self) -> int:
        return sum(n for _, n in self.schedule)

    def __len__(self) -> int:
        return 0 if self.frames is None else self.frames.shape[2]

    def clear(self) -> None:
        self.frames = None

    def push(self, latents: torch.Tensor) -> None:
        """Append ``[B, C, f, h, w]`` newest frames; keep only the last ``capacity``."""
        frames = latents if self.frames is None else torch.cat([self.frames, latents], dim=2)
        self.frames = frames[:, :, -self.capacity :].detach() if self.capacity else None

    def context(self, timestep: float | torch.Tensor | None = 0.0) -> list[ContextFrames]:
        """The cache as context blocks, newest at position -1 (the chunk being generated starts at 0).

        History shorter than the window is padded by repeating the oldest frame (at the positions it
        would have had), as FramePack pads missing history: every block is always whole, so the token
        count is the same from the first cached chunk on, whatever the shot length (and sequence
        lengths stay fixed for compiled kernels).
        """
        if self.frames is None or self.capacity == 0:
            return []
        newest = self.frames.flip(2)  # newest first
        if newest.shape[2] < self.capacity:
            pad = self.capacity - newest.shape[2]
            newest = torch.cat([newest, newest[:, :, -1:].expand(-1, -1, pad, -1, -1)], dim=2)
        positions = -(torch.arange(self.capacity, dtype=torch.float64) + 1)
        out, start = [], 0
        for c, n in self.schedule:
            if n == 0:
                continue
            group, pos = newest[:, :, start : start + n], positions[start : start + n]
            # oldest-first inside the block, as the patch embedding expects time to run forward
            out.append(ContextFrames(group.flip(2), pos.flip(0), timestep, c, kind="temporal"))
            start += n
        return out
