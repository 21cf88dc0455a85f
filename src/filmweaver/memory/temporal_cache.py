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


@dataclass
class TemporalCache:
    schedule: list[tuple[int, int]] = field(default_factory=lambda: [(1, 2), (2, 2), (4, 4)])
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

        A compressed group that is only partly filled is padded by repeating its oldest frame, so
        every group always yields the same number of tokens once any frame is in it.
        """
        if self.frames is None or self.capacity == 0:
            return []
        out = []
        newest = self.frames.flip(2)  # newest first
        start = 0
        for c, n in self.schedule:
            group = newest[:, :, start : start + n]
            if group.shape[2] == 0:
                break
            have = group.shape[2]
            positions = -(torch.arange(start, start + have, dtype=torch.float64) + 1)
            pad = (-have) % c
            if pad:
                group = torch.cat([group, group[:, :, -1:].expand(-1, -1, pad, -1, -1)], dim=2)
                positions = torch.cat([positions, positions[-1] - torch.arange(1, pad + 1, dtype=torch.float64)])
            # back to oldest-first order inside the block, as the patch embedding expects time forward
            out.append(ContextFrames(group.flip(2), positions.flip(0), timestep, c, kind="temporal"))
            start += n
        return out
