"""Wan2.2 A14B: two experts, one for high noise and one for low noise, switched at a boundary.

diffusers' ``WanPipeline`` for Wan2.2-T2V/I2V-A14B has ``transformer`` (high-noise expert) and
``transformer_2`` (low-noise expert) and ``boundary_ratio`` in ``model_index.json``: a denoising step
with timestep ``t >= boundary_ratio * 1000`` runs the first, later steps the second. Each may carry its
own guidance scale (``guidance_scale_2``, in the sampler). Context injection is the same for both, so
each expert is a :class:`~filmweaver.backbone.wan.ContextWanTransformer` and this switch looks like
one to the engine.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from filmweaver.backbone.wan import ContextWanTransformer


class ExpertSwitch(nn.Module):
    def __init__(self, high_noise: ContextWanTransformer | None, low_noise: ContextWanTransformer | None,
                 boundary_ratio: float, num_train_timesteps: int = 1000):
        """One expert may be None: a switch loaded to train the other one's LoRA (it never denoises)."""
        super().__init__()
        if high_noise is None and low_noise is None:
            raise ValueError("an expert switch needs at least one expert")
        if not 0.0 < boundary_ratio < 1.0:
            raise ValueError(f"boundary_ratio must be in (0, 1), got {boundary_ratio}")
        self.high_noise, self.low_noise = high_noise, low_noise
        self.boundary_ratio = boundary_ratio
        self.boundary = boundary_ratio * num_train_timesteps

    # the engine's view: one backbone
    @property
    def config(self):
        return self.experts[0].config

    @property
    def transformer(self):
        return self.experts[0].transformer

    @property
    def experts(self) -> list[ContextWanTransformer]:
        return [e for e in (self.high_noise, self.low_noise) if e is not None]

    @property
    def dtype(self) -> torch.dtype:
        return self.experts[0].dtype

    @property
    def device(self) -> torch.device:
        return self.experts[0].device

    def expert_for(self, timestep: torch.Tensor | float) -> ContextWanTransformer:
        """The expert for a denoising step; every sample of a batch is at the same step."""
        t = float(torch.as_tensor(timestep).reshape(-1)[0])
        return self.high_noise if t >= self.boundary else self.low_noise

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor, **kwargs):
        return self.expert_for(timestep)(latents, timestep, encoder_hidden_states, **kwargs)

    def count_tokens(self, context, latent_hw) -> int:
        return self.experts[0].count_tokens(context, latent_hw)

    def save_context_projections(self, directory) -> None:
        self.high_noise.save_context_projections(directory)
