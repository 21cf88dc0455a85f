"""Token positions and Wan's rotary embedding for arbitrary (negative, fractional) positions.

Memory frames sit at negative times before the video and compressed blocks at the mean of the base
positions they cover, so the tables are built from explicit ``(t, h, w)`` positions instead of
diffusers' ``WanRotaryPosEmbed`` grid (identical values for integer positions, tested).
"""

from __future__ import annotations

import math

import torch


def rope_frequencies(head_dim: int, theta: float = 10000.0) -> tuple[list[int], list[torch.Tensor]]:
    """Wan's axis split of one head's dims into (t, h, w) and each axis' inverse frequencies (float64)."""
    h_dim = w_dim = 2 * (head_dim // 6)
    t_dim = head_dim - h_dim - w_dim
    dims = [t_dim, h_dim, w_dim]
    inv = [1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64)[: d // 2] / d)) for d in dims]
    return dims, inv


def rope_from_positions(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables for arbitrary (possibly negative or fractional) token positions.

    ``positions [N, 3]`` (t, h, w) float64 -> ``(cos, sin)`` each ``[1, N, 1, head_dim]`` float32, in
    the interleaved layout of diffusers' ``WanRotaryPosEmbed`` (identical values for integer positions).
    """
    _, inv = rope_frequencies(head_dim, theta)
    angles = torch.cat([torch.outer(positions[:, a].to(torch.float64), inv[a].to(positions.device)) for a in range(3)], dim=1)
    cos = angles.cos().repeat_interleave(2, dim=1).float()
    sin = angles.sin().repeat_interleave(2, dim=1).float()
    return cos[None, :, None, :], sin[None, :, None, :]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved rotary embedding (``x [B, N, heads, d]``, tables ``[1, N, 1, d]``)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * c - x2 * s
    out[..., 1::2] = x1 * s + x2 * c
    return out.type_as(x)


def grid_positions(t: torch.Tensor, h: int, w: int, compression: int = 1, spatial: int = 1) -> torch.Tensor:
    """Token positions for a block patchified with kernel ``compression`` x base patch.

    ``t [F]`` temporal positions of the block's latent frames (F divisible by ``compression``); ``h, w``
    the block's size in *base* tokens. Each merged token sits at the mean of the base positions it
    covers. ``spatial`` merges ``s x s`` base patches of each frame (time untouched). Returns
    ``[F/c * ceil(h/c') * ceil(w/c'), 3]`` float64 (``c' = c * s``), in (t, h, w) raster order.
    """
    c, cs = compression, compression * spatial
    tt = t.to(torch.float64).view(-1, c).mean(dim=1)
    hh = torch.arange(math.ceil(h / cs), dtype=torch.float64) * cs + (cs - 1) / 2
    ww = torch.arange(math.ceil(w / cs), dtype=torch.float64) * cs + (cs - 1) / 2
    g = torch.stack(torch.meshgrid(tt, hh, ww, indexing="ij"), dim=-1)
    return g.reshape(-1, 3)


class RopeTables:
    """(cos, sin) tables by token layout, on the device. A story (or a training run) repeats a handful
    of layouts, and building one on the host and copying it over would stall the device on every
    forward."""

    def __init__(self, head_dim: int, max_entries: int = 64):
        self.head_dim = head_dim
        self.max_entries = max_entries
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, positions: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``positions [N, 3]`` float64 (on the host) -> the tables on ``device``."""
        key = (positions.numpy().tobytes(), str(device))
        tables = self._tables.get(key)
        if tables is None:
            if len(self._tables) >= self.max_entries:
                self._tables.clear()
            tables = tuple(r.to(device) for r in rope_from_positions(positions, self.head_dim))
            self._tables[key] = tables
        return tables
