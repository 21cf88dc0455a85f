"""Memory-to-video (M2V) inputs for I2V-type Wan transformers (36 input channels).

Both layouts use the I2V channel concatenation ``[noisy 16 | mask 4 | condition 16]`` with memory
keyframes before the video on the time axis. They differ in what the memory and the video's
condition are, and there are two on purpose:

**StoryMem as released** (:class:`StoryMemLayout`; ``--method storymem``), read from StoryMem's
``wan/memory2video.py`` (``WanM2V.generate``) and ``pipeline.py``:

* one sequence of ``M + F`` latent frames is denoised: Gaussian noise over memory *and* video, the
  memory's outputs used by the solver like any other and dropped after the last step;
* RoPE positions ``0 .. M+F-1``: memory right before the video (``-M .. -1`` relative to it, no gap);
* mask 1 on every memory frame (the pipeline never passes ``fix_mem``), 0 on the video, 1 on the
  video frames a continuation fixes (MI2V: the first latent frame, MM2V: the first two, which cover
  the 5 carried-over frames);
* condition = each memory image's VAE latent (one latent frame each), then the VAE encoding of the
  video's condition clip: a grey video (zero pixels in [-1, 1]) for a cut; for MM2V the previous
  shot's last 5 frames followed by grey. For MI2V the released code builds ``[last frame, grey...]``
  and then overwrites it with the all-grey encoding (an ``if``/``else`` on the MM2V file only), so
  MI2V as released fixes frame 0 in the mask but conditions it on grey; ``corrected_mi2v`` keeps
  the last frame (``--method storymem_corrected``).

**filmweaver's own M2V layout** (:func:`m2v_inputs`): memory as a clean :class:`ContextFrames`
block (the noisy slot holds the clean latents), latent-zero condition for the video, mask 2 for
sliding memory (recent frames), memory behind the temporal cache's positions. It serves the
engine's temporal cache and shot cache on M2V backbones with its own documented choices.
"""

from __future__ import annotations

import torch

from filmweaver.context import ContextFrames

MASK_GENERATE, MASK_FIXED, MASK_SLIDING = 0.0, 1.0, 2.0


def storymem_mask(num_memory: int, num_pixel_frames: int, fixed_pixel_frames: int, latent_hw: tuple[int, int],
                  fix_mem: int | None = None, temporal_factor: int = 4) -> torch.Tensor:
    """StoryMem's mask ``[1, 4, M + F_lat, h, w]``.

    Built as StoryMem builds it: one value per memory image and per video pixel frame, the memory
    images and the video's first frame repeated ``temporal_factor`` times (each is a latent frame of
    its own), then folded ``temporal_factor`` pixel frames to a latent frame, one per mask channel.
    ``fixed_pixel_frames``: video frames fixed by a continuation (MI2V 1, MM2V 5, a cut 0);
    ``fix_mem``: memory beyond the first ``fix_mem`` gets 2 (the released pipeline passes None)."""
    h, w = latent_hw
    values = torch.ones(num_memory + num_pixel_frames)
    if fix_mem is not None and num_memory > fix_mem:
        values[fix_mem:num_memory] = MASK_SLIDING
    values[num_memory:] = MASK_GENERATE
    values[num_memory:num_memory + fixed_pixel_frames] = MASK_FIXED
    values = torch.cat([values[:num_memory + 1].repeat_interleave(temporal_factor), values[num_memory + 1:]])
    if values.numel() % temporal_factor:
        raise ValueError(f"{num_pixel_frames} video frames do not make whole latent frames (expected 1 + "
                         f"{temporal_factor}k)")
    mask = values.view(-1, temporal_factor).T  # [4, M + F_lat]
    return mask[None, :, :, None, None].expand(1, temporal_factor, mask.shape[1], h, w).contiguous()


class StoryMemLayout:
    """StoryMem's M2V input for one chunk, as released (see the module docstring).

    ``memory [1, 16, M, h, w]`` (each keyframe's latent), ``condition [1, 16, F_lat, h, w]`` (the VAE
    encoding of the video's condition clip, :meth:`condition_clip`), ``fixed_pixel_frames`` (1 for
    MI2V, 5 for MM2V, 0 for a cut). The sampled tensor is ``[1, 16, M + F_lat, h, w]``: memory noise
    first, then the video's; :meth:`video` takes the video back out."""

    def __init__(self, memory: torch.Tensor | None, condition: torch.Tensor, fixed_pixel_frames: int,
                 temporal_factor: int = 4):
        c, f_lat, h, w = condition.shape[1:]
        self.num_memory = 0 if memory is None else memory.shape[2]
        mem = memory if memory is not None else condition[:, :, :0]
        self.y = torch.cat([
            storymem_mask(self.num_memory, 1 + temporal_factor * (f_lat - 1), fixed_pixel_frames, (h, w),
                          temporal_factor=temporal_factor).to(condition),
            torch.cat([mem.to(condition), condition], dim=2),
        ], dim=1)  # [1, 4 + 16, M + F_lat, h, w]: StoryMem's y (mask, then the condition latents)

    @staticmethod
    def condition_clip(num_pixel_frames: int, height: int, width: int, lead: torch.Tensor | None = None) -> torch.Tensor:
        """The video's condition clip ``[1, 3, F, H, W]`` in [0, 1]: ``lead`` frames ``[k, 3, H, W]``
        (a continuation's), then grey (0.5 here is StoryMem's zero in [-1, 1])."""
        clip = torch.full((1, 3, num_pixel_frames, height, width), 0.5)
        if lead is not None:
            clip[0, :, : lead.shape[0]] = lead.permute(1, 0, 2, 3).float()
        return clip

    def noise_frames(self, video_latent_frames: int) -> int:
        return self.num_memory + video_latent_frames

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, 16, M + F_lat, h, w]`` -> the transformer input ``[B, 36, M + F_lat, h, w]``."""
        return torch.cat([x, self.y.to(x).expand(x.shape[0], -1, -1, -1, -1)], dim=1)

    def video(self, x: torch.Tensor) -> torch.Tensor:
        """The video's latents ``[B, 16, F_lat, h, w]`` of a sampled ``[B, 16, M + F_lat, h, w]``."""
        return x[:, :, self.num_memory:]


def _mask(value: float, like: torch.Tensor, channels: int = 4) -> torch.Tensor:
    b, _, f, h, w = like.shape
    return torch.full((b, channels, f, h, w), value, dtype=like.dtype, device=like.device)


def m2v_inputs(
    noisy: torch.Tensor,
    memory: torch.Tensor | None,
    memory_fixed: list[bool] | None = None,
    memory_positions: torch.Tensor | None = None,
    first_frame: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[ContextFrames]]:
    """Build StoryMem's layout.

    Args:
        noisy: ``[B, 16, F, h, w]`` latents being denoised.
        memory: ``[B, 16, M, h, w]`` memory keyframe latents (one latent frame each), or ``None``.
        memory_fixed: per memory frame, True = fixed (mask 1), False = sliding (mask 2); default all fixed.
        memory_positions: ``[M]`` temporal positions (default ``-M .. -1``).
        first_frame: ``[B, 16, 1, h, w]`` MI2V first-frame latent, fixed at video frame 0.

    Returns:
        ``(x [B, 36, F, h, w], context)``: the transformer input for the generated frames and the
        memory as one context block at the generated frames' timestep (StoryMem uses one timestep).
    """
    cond = torch.zeros_like(noisy)
    mask = _mask(MASK_GENERATE, noisy)
    if first_frame is not None:
        cond[:, :, :1] = first_frame
        mask[:, :, :1] = MASK_FIXED
    x = torch.cat([noisy, mask, cond], dim=1)
    if memory is None or memory.shape[2] == 0:
        return x, []
    m = memory.shape[2]
    fixed = memory_fixed if memory_fixed is not None else [True] * m
    if len(fixed) != m:
        raise ValueError(f"{m} memory frames but {len(fixed)} fixed/sliding flags")
    mem_mask = torch.stack(
        [_mask(MASK_FIXED if fx else MASK_SLIDING, memory[:, :, i : i + 1]) for i, fx in enumerate(fixed)], dim=2
    ).squeeze(3)
    ctx_latents = torch.cat([memory, mem_mask, memory], dim=1)
    if memory_positions is None:
        memory_positions = -torch.arange(m, 0, -1, dtype=torch.float64)
    return x, [ContextFrames(ctx_latents, memory_positions, None, 1, kind="memory")]
