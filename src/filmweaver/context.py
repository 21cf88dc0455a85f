"""The one type that crosses from the caches to the backbone: a block of context latent frames.

A :class:`ContextFrames` is what "in-context conditioning" means here: extra latent frames that the
transformer sees as extra tokens, placed at explicit temporal RoPE positions, optionally at their own
noise level and optionally patchified more coarsely (FramePack-style compression).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass
class ContextFrames:
    """``latents [B, C, F, h, w]`` (normalised VAE latents, C = the transformer's input channels);
    ``positions [F]`` temporal RoPE position of each latent frame (the generated chunk sits at
    ``0 .. F_gen-1``, so memory lives at negative positions); ``timestep``: the diffusion timestep
    (0..1000) these frames are presented at, ``None`` = the same as the frames being generated;
    ``compression``: patchify kernel multiplier (1 = the base patch embedding, 2 or 4 = extra
    projections that merge ``c x c x c`` base patches into one token); ``spatial``: spatial-only
    pooling (1, 2 or 4) for single keyframes, ``s x s`` base patches average-pooled into one token and
    embedded with the base patch embedding (no new weights: what a FramePack-initialised
    ``(1, s, s)`` kernel computes), ``s**2`` times fewer tokens."""

    latents: torch.Tensor
    positions: torch.Tensor
    timestep: float | torch.Tensor | None = 0.0
    compression: int = 1
    kind: str = "context"  # "shot" | "temporal" | "continuation" | "memory" (for logs and manifests)
    spatial: int = 1
    # whom each frame shows, for a backbone with entity tags: ``[F, D_text]`` (or per sample ``[B, F,
    # D_text]``) pooled text embeddings of the entities' names (zeros: nobody), added to the frame's
    # tokens through a learned projection
    entity_embeddings: torch.Tensor | None = None
    # which of the generated shot's named characters each frame shows, by their order in the shot (its
    # ``characters`` list, which its prompt names in the same order): ``[F, SLOTS]`` (or ``[B, F, SLOTS]``),
    # 1 at slot j where the frame shows the shot's j-th character; for a backbone with entity slots.
    # Or where in the frame: ``[F, h, w, SLOTS]`` (or ``[B, F, h, w, SLOTS]``) over the latent pixels,
    # each character's slot only where it is (:func:`filmweaver.backbone.entity_tags.slot_regions`)
    entity_slots: torch.Tensor | None = None

    def __post_init__(self):
        if self.latents.ndim != 5:
            raise ValueError(f"context latents must be [B, C, F, h, w], got {tuple(self.latents.shape)}")
        if self.positions.shape != (self.latents.shape[2],):
            raise ValueError(f"{self.latents.shape[2]} context frames but {tuple(self.positions.shape)} positions")
        if self.compression not in (1, 2, 4):
            raise ValueError(f"compression must be 1, 2 or 4, got {self.compression}")
        if self.entity_embeddings is not None and (self.entity_embeddings.ndim not in (2, 3) or self.compression != 1
                                                   or self.entity_embeddings.shape[-2] != self.latents.shape[2]):
            raise ValueError(f"entity embeddings are [F, D] for the {self.latents.shape[2]} frames of an "
                             f"uncompressed block, got {tuple(self.entity_embeddings.shape)}")
        if self.entity_slots is not None:
            regions = self.entity_slots.ndim in (4, 5)
            frames = self.entity_slots.shape[-4 if regions else -2] if self.entity_slots.ndim >= 2 else -1
            if self.entity_slots.ndim not in (2, 3, 4, 5) or self.compression != 1 or frames != self.latents.shape[2] \
                    or (regions and tuple(self.entity_slots.shape[-3:-1]) != tuple(self.latents.shape[3:])):
                raise ValueError(f"entity slots are [F, SLOTS] or [F, h, w, SLOTS] for the {self.latents.shape[2]} "
                                 f"frames of an uncompressed block of {tuple(self.latents.shape[3:])} latents, got "
                                 f"{tuple(self.entity_slots.shape)}")
        if self.spatial not in (1, 2, 4) or (self.spatial > 1 and self.compression > 1):
            raise ValueError(f"spatial pooling must be 1, 2 or 4 and is not combined with compression, got "
                             f"spatial={self.spatial}, compression={self.compression}")

    @property
    def num_frames(self) -> int:
        return self.latents.shape[2]


def noise_to_timestep(latents: torch.Tensor, timestep: float | torch.Tensor, generator: torch.Generator | None = None,
                      noise: torch.Tensor | None = None) -> torch.Tensor:
    """Put clean context latents at diffusion ``timestep`` (0..1000) on the flow-matching path,
    ``x_t = (1 - s) x_0 + s eps`` with ``s = t / 1000``; ``timestep`` is a float or ``[B]``.

    Training presents cache frames this way (asymmetric noising: shot cache at 100-400, temporal
    cache at 0-100) and inference must present them the same way, so both call this function.
    """
    # the all-clean shortcut only where checking it costs no device sync (a float or a CPU tensor)
    if not torch.is_tensor(timestep) or timestep.device.type == "cpu":
        if bool((torch.as_tensor(timestep) == 0).all()):
            return latents
    s = torch.as_tensor(timestep, dtype=torch.float32, device=latents.device).reshape(-1) / 1000.0
    if noise is None:
        noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32,
                            device="cpu" if generator is None else generator.device).to(latents.device)
    return flow_interpolate(latents, noise.to(latents.dtype), s.view(-1, *([1] * (latents.ndim - 1))).to(latents.dtype))


def flow_interpolate(x0: torch.Tensor, noise: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The rectified-flow path ``x_s = (1 - s) x_0 + s eps`` (``s`` in [0, 1], broadcast over ``x0``);
    its velocity is ``eps - x_0``. Training's noisy targets and every presentation of context use it."""
    return (1 - s) * x0 + s * noise


def present_at_timestep(blocks: list[ContextFrames], generator: torch.Generator | None = None) -> list[ContextFrames]:
    """The blocks with their latents noised to their ``timestep`` (see :func:`noise_to_timestep`);
    blocks at ``None`` (the generated frames' level) or 0 are returned as they are."""
    return [b if b.timestep is None else dataclasses.replace(b, latents=noise_to_timestep(b.latents, b.timestep, generator))
            for b in blocks]
