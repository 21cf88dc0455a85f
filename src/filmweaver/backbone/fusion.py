"""Inference-only rewrites of a ``WanTransformer3DModel``: fused projections and compiled blocks.

None of these changes what the model computes beyond rounding; all of them change the weights'
layout (joint q/k/v products, merged adapters), so a fused model is not saved
(:func:`fused_for_inference`).
"""

from __future__ import annotations

import torch
import torch._dynamo
import torch.nn as nn
import torch.nn.functional as F
from diffusers.models.activations import GELU
from diffusers.models.transformers.transformer_wan import WanAttention
from peft.tuners.tuners_utils import BaseTunerLayer


class FusedAway(nn.Module):
    """Stands where a projection was before :func:`fuse_qkv` folded it into a fused one: it holds no
    weights, and calling it is an error rather than a silent wrong answer."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, *args, **kwargs):
        raise RuntimeError(f"{self.name} was fused into a joint projection (fuse_qkv); nothing should call it")


class BiasGELUProjection(nn.Module):
    """``gelu_tanh(x @ W^T + b)`` of an FFN's up-projection ``proj`` (``[.., in] -> [.., out]``) as one
    ``torch._addmm_activation`` call: on CUDA, cuBLASLt's bias + GELU epilogue (tanh approximation,
    applied to the fp32 accumulator), so the ``[N, out]`` activations are written once instead of
    written, read and written again. torch.compile keeps the call as an extern kernel. Off CUDA that
    op applies the exact GELU, so there the stock computation runs instead. ``proj`` keeps its name:
    the state dict is unchanged (``ffn.net.0.proj.weight``)."""

    def __init__(self, proj: nn.Linear):
        super().__init__()
        self.proj = proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_cuda:
            return F.gelu(self.proj(x), approximate="tanh")
        return self.fused(x)

    def fused(self, x: torch.Tensor) -> torch.Tensor:
        """The single call (the activation its device's op applies: tanh-GELU on CUDA, exact on CPU)."""
        y = torch._addmm_activation(self.proj.bias, x.reshape(-1, x.shape[-1]), self.proj.weight.t(), use_gelu=True)
        return y.reshape(*x.shape[:-1], y.shape[-1])


def merge_adapters(transformer: nn.Module) -> None:
    """Merge every peft adapter into its base weights (a fused projection bypasses the adapters)."""
    for module in transformer.modules():
        if isinstance(module, BaseTunerLayer) and not module.merged:
            module.merge()


def fuse_ffn_gelu(transformer: nn.Module) -> None:
    """Each block's FFN up-projection and its tanh-GELU in one cuBLASLt call (bias + GELU epilogue,
    :class:`BiasGELUProjection`) instead of a matrix product followed by a separate elementwise pass
    over the ``[N, ffn_dim]`` activations. CUDA only does the fusing; elsewhere the module computes the
    stock way. LoRA adapters are merged first (see :func:`fuse_qkv`). Idempotent."""
    merge_adapters(transformer)
    for blk in transformer.blocks:
        act = blk.ffn.net[0]
        if isinstance(act, GELU) and act.proj.bias is not None:
            if act.approximate != "tanh":
                raise ValueError(f"fuse_ffn_gelu needs the tanh-approximate GELU Wan uses, got {act.approximate!r}")
            blk.ffn.net[0] = BiasGELUProjection(getattr(act.proj, "base_layer", act.proj))


def fuse_qkv(transformer: nn.Module) -> None:
    """One matrix product for self-attention's q, k, v (and cross-attention's k, v) per block instead
    of three (two): diffusers' ``fuse_qkv_projections``, which our processors read through
    ``_get_qkv_projections``. The same numbers up to bf16 rounding of the concatenated product.

    A LoRA adapter attached with peft lives on ``to_q`` / ``to_k`` / ``to_v``, which the fused
    projection bypasses, so adapters are merged into the base weights first (they cannot be switched
    off afterwards). The separate projections are then dropped (:class:`FusedAway`): diffusers keeps
    them, which costs the 14B model about 10 GB for weights nothing reads. Idempotent."""
    merge_adapters(transformer)
    transformer.fuse_qkv_projections()
    for attn in transformer.modules():
        if isinstance(attn, WanAttention) and attn.fused_projections:
            names = ["to_k", "to_v"] + ([] if attn.is_cross_attention else ["to_q"])  # cross: q stays
            if getattr(attn, "to_added_kv", None) is not None:  # Wan2.1-I2V's image keys/values
                names += ["add_k_proj", "add_v_proj"]
            for name in names:
                setattr(attn, name, FusedAway(name))


def fused_for_inference(transformer: nn.Module) -> bool:
    """Whether :func:`fuse_qkv` or :func:`fuse_ffn_gelu` ran: the weights are then in a layout (joint
    q/k/v products, merged adapters) that ``from_pretrained`` does not read back."""
    return any(getattr(m, "fused_projections", False) or isinstance(m, BiasGELUProjection)
               for m in transformer.modules())


def compile_blocks(transformer, dynamic: bool | None = None, backend: str = "inductor", mode: str | None = None) -> None:
    """``torch.compile`` the repeated transformer blocks (diffusers' regional compilation).

    One block code object is specialised per (attention mode, token count): no context, and with
    causal context the context pass and the generated pass, for every context size a run meets. That
    exceeds dynamo's default of 8 recompiles, so the limit is raised. ``dynamic=True`` (training, where
    every batch mode and memory size is another token count) compiles token-count-generic graphs
    instead of one per shape. ``mode``: torch.compile's (``"max-autotune-no-cudagraphs"`` also times
    Triton matrix-product templates against cuBLAS and fuses their epilogues)."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    transformer.compile_repeated_blocks(fullgraph=True, dynamic=dynamic, backend=backend, mode=mode)
