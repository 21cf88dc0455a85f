"""Stage 3 for StoryMem's layout (``--method storymem`` with an M2V backbone): a shot as StoryMem's
``WanM2V.generate`` makes it, one clip, memory keyframes and video denoised as one sequence, the video
conditioned on a grey clip (or a continuation's frames)."""

from __future__ import annotations

import time

import torch

from filmweaver.backbone.m2v import StoryMemLayout
from filmweaver.engine.memory import ShotMemory, tail_frames
from filmweaver.engine.plan import ShotPlan
from filmweaver.engine.records import ChunkRecord
from filmweaver.engine.velocity import velocity_fn
from filmweaver.io import as_8bit


def storymem_shot(models, samplers, step_cache, cfg, project, plan: ShotPlan, memory: ShotMemory,
                  text: torch.Tensor, negative: torch.Tensor, latent_hw: tuple[int, int], progress: bool,
                  on_step=None):
    """Returns ``(video latents [1, C, F, h, w], video frames to trim, continuation, chunk record)``.

    ``samplers``: (the M2V sampler, the first-shot sampler). A continuation's leading frames are fixed
    by the condition and dropped from the shot, as StoryMem does."""
    backbone, codec, i = models.backbone, models.codec, plan.shot.index
    h, w = latent_hw
    t0 = time.perf_counter()
    lead, continuation = None, None
    if not plan.shot.cut and cfg.continuation != "none" and i > 0:
        tail = tail_frames(project, i - 1)
        k = 1 if cfg.continuation == "mi2v" else min(cfg.mm2v_frames, tail.shape[0])
        lead = as_8bit(tail[-k:])  # the previous shot's frames as StoryMem reads them back from its files
        continuation = cfg.continuation
    keep_lead = lead is not None and (continuation == "mm2v" or cfg.storymem.corrected_mi2v)
    clip = StoryMemLayout.condition_clip(codec.num_pixel_frames(cfg.chunk_frames), cfg.height, cfg.width,
                                         lead if keep_lead else None)
    bank, retrieved = memory.bank, memory.retrieved
    keyframes = torch.cat([bank.entries[r.bank_index].latent for r in retrieved], dim=1)[None] if retrieved else None
    layout = StoryMemLayout(keyframes, codec.encode(clip).cpu(), 0 if lead is None else lead.shape[0],
                            codec.temporal_factor)
    gen = torch.Generator(device="cpu").manual_seed(plan.seed)
    noise = torch.randn((1, codec.latent_channels, layout.noise_frames(cfg.chunk_frames), h, w), generator=gen)
    if not retrieved and models.first_shot_backbone is not None:  # the T2V release, its own sampling settings
        velocity, sampler = velocity_fn(models, True, []), samplers[1]
    else:
        def velocity(x, t, e):
            return backbone(layout.inputs(x.to(backbone.dtype)), t, e.to(backbone.dtype),
                            encoder_hidden_states_image=memory.image).float()

        sampler = samplers[0]
    with step_cache.scope(f"shot{i}-chunk0"):
        latents = sampler.sample(velocity, noise.to(backbone.device), text, negative, progress=progress,
                                 desc=f"shot {plan.shot.number}",
                                 on_step=None if on_step is None else (lambda k, n: on_step(0, k, n)))
    mode = "shot" if retrieved else ("temporal" if lead is not None else "text")
    record = ChunkRecord(0, mode, plan.seed, round(time.perf_counter() - t0, 3), layout="storymem",
                         memory_frames=len(retrieved))
    return layout.video(latents), 0 if lead is None else lead.shape[0], continuation, record
