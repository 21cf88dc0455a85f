"""StoryMem's memory-to-video (M2V) input layout for I2V-type Wan transformers (36 input channels).

StoryMem conditions Wan2.2-I2V on memory keyframes by putting them *before* the video on the time
axis and using the I2V channel concatenation ``[noisy 16 | mask 4 | condition 16]``:

* mask = 1 for fixed memory (sink / references, and a fixed first frame in MI2V), 2 for sliding
  memory, 0 for frames to generate (written on all 4 mask channels, one per pixel frame a latent
  frame covers);
* condition = the memory latents at memory positions (and the first-frame latent in MI2V), zero
  for frames to generate;
* the noisy slot carries the (clean) memory latents at memory positions; their outputs are dropped.

:func:`m2v_inputs` builds the 36-channel generated-frame input and the memory as a
:class:`ContextFrames` block, so the same :class:`ContextWanTransformer` forward serves both layouts.
"""

from __future__ import annotations

import torch

from filmweaver.context import ContextFrames

MASK_GENERATE, MASK_FIXED, MASK_SLIDING = 0.0, 1.0, 2.0


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
