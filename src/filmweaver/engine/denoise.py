"""Stage 3, denoise: a shot's chunks, one after another, each guided by the shot cache and the
temporal cache as they stand before it (the chunk loop).

A keyframe-first shot starts with an **anchor**: a one-frame chunk from text and shot cache alone,
which seeds the temporal cache (as an MI2V continuation would) and is not part of the video.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from filmweaver.backbone.regional_text import TextRegions
from filmweaver.context import present_at_timestep
from filmweaver.engine.memory import ShotMemory
from filmweaver.engine.plan import ShotPlan
from filmweaver.engine.records import MODES, ChunkRecord
from filmweaver.engine.velocity import velocity_fn, velocity_without_memory
from filmweaver.progress import progress_bar

ANCHOR_SEED_OFFSET = 7_919  # the anchor's noise is its own, not the first chunk's
CHUNK_SEED_STRIDE = 1_000_003  # chunk c of a shot draws from seed + c * stride
CONTEXT_NOISE_OFFSET = 17  # the context's presentation noise: another stream than the chunk's


@dataclass
class Chunk:
    label: int | str  # index in the shot, or "anchor"
    seed: int
    num_frames: int  # latent frames
    in_video: bool  # False for the anchor: it only seeds the temporal cache


def chunk_schedule(plan: ShotPlan, chunk_frames: int, first_chunk: int, anchor: bool) -> list[Chunk]:
    """The chunks still to make: chunks ``first_chunk..num_chunks-1``, after an anchor if ``anchor``."""
    chunks = [Chunk("anchor", plan.seed + ANCHOR_SEED_OFFSET, 1, False)] if anchor else []
    return chunks + [Chunk(c, plan.seed if c == 0 else plan.seed + CHUNK_SEED_STRIDE * c, chunk_frames, True)
                     for c in range(first_chunk, plan.num_chunks)]


def denoise_chunks(models, sampler, step_cache, cfg, m2v: bool, plan: ShotPlan, memory: ShotMemory,
                   schedule: list[Chunk], text: torch.Tensor, negative: torch.Tensor, latent_hw: tuple[int, int],
                   progress: bool, on_step=None, text_regions: TextRegions | None = None
                   ) -> tuple[list[torch.Tensor], list[ChunkRecord]]:
    """Each chunk of ``schedule`` in turn; every chunk made is pushed onto ``memory.temporal``.

    ``text`` / ``negative`` ``[1, L, D]`` in the backbone's dtype, the same tensors at every step (a
    causal-context model's key/value cache recognises the prompt by identity). Returns the video's
    chunks ``[1, C, F, h, w]`` each (on the CPU) and a record per chunk. ``on_step(chunk label, steps
    done, steps)`` after every denoising step. ``text_regions``: where each character ``text`` describes
    is drawn (regional prompts), or None."""
    backbone, i = models.backbone, plan.shot.index
    h, w = latent_hw
    video, records = [], []
    for chunk in progress_bar(schedule, desc=f"shot {plan.shot.number} chunks", leave=False, enabled=progress):
        t0 = time.perf_counter()
        # cache frames are shown at the noise level the model was trained with (asymmetric noising)
        context = present_at_timestep(memory.shot_context + memory.temporal.context(cfg.temporal_cache.timestep),
                                      torch.Generator(device="cpu").manual_seed(chunk.seed + CONTEXT_NOISE_OFFSET))
        mode = MODES[(bool(memory.shot_context), len(memory.temporal) > 0)]
        noise = torch.randn((1, models.codec.latent_channels, chunk.num_frames, h, w),
                            generator=torch.Generator(device="cpu").manual_seed(chunk.seed), dtype=torch.float32)
        anchor = chunk.label == "anchor"
        with step_cache.scope(f"shot{i}-anchor" if anchor else f"shot{i}-chunk{chunk.label}"):
            latents = sampler.sample(
                velocity_fn(models, m2v, context, memory.image, (text, text_regions)), noise.to(backbone.device), text, negative,
                progress=progress, desc="anchor frame" if anchor else f"chunk {chunk.label + 1}/{plan.num_chunks}",
                velocity_without_memory=velocity_without_memory(models, m2v, cfg.sampler.memory_guidance_scale,
                                                                context, memory.image),
                on_step=None if on_step is None else (lambda k, n, c=chunk.label: on_step(c, k, n)))
        memory.temporal.push(latents)
        if chunk.in_video:
            video.append(latents.cpu())
        records.append(ChunkRecord(chunk.label, mode, chunk.seed, round(time.perf_counter() - t0, 3),
                                   context_tokens=backbone.count_tokens(context, (h, w))))
    return video, records
