"""Flow-matching sampling (rectified flow, as Wan is trained) with diffusers schedulers.

The sampler knows nothing about caches: it integrates ``velocity(x, t, text)`` from noise, with
classifier-free guidance, using a fresh scheduler per chunk (schedulers carry step state).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from pydantic import BaseModel, Field

from filmweaver.parallel import CFGParallel
from filmweaver.progress import progress_bar

VelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class SamplerConfig(BaseModel):
    scheduler: Literal["unipc", "euler"] = "unipc"
    num_inference_steps: int = Field(50, ge=1, le=1000)
    guidance_scale: float = Field(5.0, ge=0, le=100, allow_inf_nan=False)
    shift: float | None = Field(None, gt=0, le=100, allow_inf_nan=False)  # flow shift; None keeps the scheduler config's (Wan: 3.0 at 480p, 5.0 at 720p)
    batch_cfg: bool = True  # conditional and unconditional passes in one batch
    # Wan2.2 A14B: the low-noise expert's guidance scale (steps below the expert boundary); None = same
    guidance_scale_2: float | None = Field(None, ge=0, le=100, allow_inf_nan=False)
    # guidance on the shot cache as well as the text (one more forward per step while the shot cache
    # holds keyframes): v = v(-, -) + m (v(-, mem) - v(-, -)) + g (v(text, mem) - v(-, mem)),
    # "-" = empty prompt / no keyframes; 1.0 = plain classifier-free guidance
    memory_guidance_scale: float = Field(1.0, ge=0, le=100, allow_inf_nan=False)


def make_scheduler(cfg: SamplerConfig, base_config: dict | None = None):
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    base = dict(base_config or {})
    if cfg.scheduler == "unipc":
        if base.get("_class_name") != "UniPCMultistepScheduler":
            base = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "num_train_timesteps": 1000,
                    "flow_shift": base.get("flow_shift", base.get("shift", 3.0))}
        if cfg.shift is not None:
            base["flow_shift"] = cfg.shift
        return UniPCMultistepScheduler.from_config(base)
    if base.get("_class_name") != "FlowMatchEulerDiscreteScheduler":
        base = {"num_train_timesteps": 1000, "shift": base.get("flow_shift", base.get("shift", 3.0))}
    if cfg.shift is not None:
        base["shift"] = cfg.shift
    return FlowMatchEulerDiscreteScheduler.from_config(base)


def guided_velocity(v_cond: torch.Tensor, v_uncond: torch.Tensor | None, scale: float,
                    v_no_memory: torch.Tensor | None = None, memory_scale: float = 1.0) -> torch.Tensor:
    """Classifier-free guidance on the text (``v_cond`` vs ``v_uncond``, both with memory) and, when
    ``v_no_memory`` (empty prompt, no keyframes) is given, on the memory as well."""
    if v_uncond is None:
        return v_cond
    base = v_uncond if v_no_memory is None else v_no_memory + memory_scale * (v_uncond - v_no_memory)
    return base + scale * (v_cond - v_uncond)


class FlowMatchSampler:
    def __init__(self, cfg: SamplerConfig, scheduler_config: dict | None = None, boundary: float | None = None):
        self.cfg = cfg
        self.scheduler_config = scheduler_config
        self.boundary = boundary  # timestep where a two-expert backbone switches (guidance_scale_2 below it)
        self.cfg_parallel: CFGParallel | None = None  # classifier-free guidance split over two ranks

    def enable_cfg_parallel(self, group=None) -> None:
        """Split classifier-free guidance over the two ranks of ``group`` (:class:`~filmweaver.parallel.CFGParallel`).
        Each rank runs batch 1 where batched CFG runs batch 2 on one GPU, so a guided step takes about
        half the time; the extra memory-guidance forward (``memory_guidance_scale != 1``) runs on both ranks."""
        self.cfg_parallel = CFGParallel(group)

    def guidance_at(self, t: float) -> float:
        low = self.boundary is not None and self.cfg.guidance_scale_2 is not None and float(t) < self.boundary
        return self.cfg.guidance_scale_2 if low else self.cfg.guidance_scale

    @torch.no_grad()
    def sample(
        self,
        velocity: VelocityFn,
        noise: torch.Tensor,
        text: torch.Tensor,
        negative_text: torch.Tensor | None = None,
        progress: bool = True,
        desc: str = "denoise",
        velocity_without_memory: VelocityFn | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """Integrate from ``noise [B, C, F, h, w]`` to clean latents.

        ``velocity(x, t, text)`` gets ``x [B', C, F, h, w]`` in the model's dtype, ``t [B']`` and text
        ``[B', L, D]``; with batched CFG ``B' = 2B`` (conditional first). ``velocity_without_memory``:
        the same model without the shot-cache keyframes, for ``memory_guidance_scale`` (used with the
        empty prompt only). ``on_step(steps done, steps)`` after every step.
        """
        cfg = self.cfg
        scheduler = make_scheduler(cfg, self.scheduler_config)
        scheduler.set_timesteps(cfg.num_inference_steps, device=noise.device)
        scheduler.set_begin_index(0)
        latents = noise.float()
        b = latents.shape[0]
        # one tensor for every step (not a new one per step): backbones may cache per prompt tensor
        both = torch.cat([text, negative_text]) if negative_text is not None and cfg.batch_cfg else None
        for k, t in enumerate(progress_bar(scheduler.timesteps, desc=desc, leave=False, enabled=progress)):
            scale = self.guidance_at(t)
            use_cfg = scale > 1.0 and negative_text is not None
            v_uncond = v_none = None
            if use_cfg and self.cfg_parallel is not None:
                v_cond, v_uncond = self.cfg_parallel.velocities(velocity, latents, t.expand(b), text, negative_text)
            elif use_cfg and cfg.batch_cfg:
                v_cond, v_uncond = velocity(torch.cat([latents, latents]), t.expand(2 * b), both).chunk(2)
            else:
                v_cond = velocity(latents, t.expand(b), text)
                if use_cfg:
                    v_uncond = velocity(latents, t.expand(b), negative_text)
            if use_cfg and velocity_without_memory is not None and cfg.memory_guidance_scale != 1.0:
                v_none = velocity_without_memory(latents, t.expand(b), negative_text)
            v = guided_velocity(v_cond, v_uncond, scale, v_none, cfg.memory_guidance_scale)
            latents = scheduler.step(v, t, latents, return_dict=False)[0]
            if on_step is not None:
                on_step(k + 1, len(scheduler.timesteps))
        return latents
