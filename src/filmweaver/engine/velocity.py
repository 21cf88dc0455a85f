"""How the assembled context reaches the backbone: one ``velocity(x, t, text)`` per backbone layout.

* **in-context** (filmweaver's backbone): the context blocks go in as extra tokens; a causal-context
  model computes their keys/values once per chunk (:class:`~filmweaver.backbone.causal_kv.ContextKVCache`);
* **M2V** (StoryMem's I2V channel layout): every context frame becomes a memory frame of the input,
  keyframes fixed and recent frames sliding;
* **first-shot model** (StoryMem: a T2V release for what has no memory).

The sampler integrates whichever function it is given and knows nothing of the caches.
"""

from __future__ import annotations

import dataclasses

import torch

from filmweaver.backbone.causal_kv import ContextKVCache
from filmweaver.backbone.m2v import m2v_inputs
from filmweaver.backbone.regional_text import TextRegions
from filmweaver.context import ContextFrames
from filmweaver.sampler import VelocityFn


def velocity_fn(models, m2v: bool, context: list[ContextFrames], image: torch.Tensor | None = None,
                regional: tuple[torch.Tensor, TextRegions | None] | None = None) -> VelocityFn:
    """``velocity(x, t, text)`` of the backbone with ``context`` (and, for Wan2.1-I2V, the shot's CLIP
    image tokens ``image [1, L_img, image_dim]``). ``regional``: ``(prompt [1, L, D], its regions)``;
    the batch rows whose text is that prompt get its cross-attention masks (regional prompts), the
    others (the negative prompt) none. In-context backbones only."""
    backbone = models.backbone
    dtype = backbone.dtype
    first_shot = models.first_shot_backbone
    if not context and first_shot is not None:
        def velocity(x, t, text):
            return first_shot(x.to(first_shot.dtype), t, text.to(first_shot.dtype)).float()

        return velocity

    if not m2v:
        ctx = [dataclasses.replace(b, latents=b.latents.to(backbone.device, dtype)) for b in context]
        # one chunk's context is fixed: a causal-context model computes its keys/values once here
        kv_cache = ContextKVCache()
        prompt, regions = regional if regional is not None else (None, None)

        def velocity(x, t, text):
            extra = {}
            if regions is not None:  # the rows of the shot's own prompt, not the negative's
                extra["text_regions"] = [regions if torch.equal(row, prompt[0]) else None for row in text]
            return backbone(x.to(dtype), t, text.to(dtype), context=ctx, kv_cache=kv_cache, **extra).float()

        return velocity

    mem, fixed, pos = [], [], []
    for b in context:
        mem.append(b.latents)
        fixed += [b.kind == "shot"] * b.latents.shape[2]
        pos.append(b.positions)
    memory = torch.cat(mem, dim=2).to(backbone.device, dtype) if mem else None
    positions = torch.cat(pos) if pos else None

    def velocity(x, t, text):
        x_in, ctx = m2v_inputs(x.to(dtype), memory, fixed, positions)
        return backbone(x_in, t, text.to(dtype), context=ctx, encoder_hidden_states_image=image).float()

    return velocity


def velocity_without_memory(models, m2v: bool, memory_guidance_scale: float, context: list[ContextFrames],
                            image: torch.Tensor | None = None) -> VelocityFn | None:
    """The velocity without the shot-cache keyframes (memory guidance), or None when it is off or
    there are no keyframes in ``context``."""
    if memory_guidance_scale == 1.0 or not any(b.kind == "shot" for b in context):
        return None
    return velocity_fn(models, m2v, [b for b in context if b.kind != "shot"], image)
