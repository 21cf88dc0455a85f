"""Attention backends: diffusers' own, plus FlashAttention-4 from a locally installed package.

:func:`set_attention_backend` is the one place the CLI, the benchmark and the engine choose the kernel
that every attention layer of a transformer dispatches to (self-attention with or without context,
the cached context keys/values, cross-attention to the text).

* Any name diffusers knows (``native``, ``_native_cudnn``, ``flash``, ``_flash_3``, ``sage``...) goes to
  ``ModelMixin.set_attention_backend`` unchanged.
* ``flash4`` runs FlashAttention-4 (the CuTe-DSL kernels of the ``flash-attn-4`` package: Hopper and
  Blackwell) from the *installed* package. diffusers only offers it as ``flash_4_hub``, which downloads
  a kernel from the Hub at run time; filmweaver never downloads, so the same dispatch slot is pointed at
  the local kernel instead. The kernel is wrapped in a ``torch.library`` custom op with a shape-only
  fake implementation, so ``--compile`` (regional compilation, ``fullgraph=True``) traces through it
  instead of breaking the graph. Forward only: it is for sampling and benchmarks, not training.
"""

from __future__ import annotations

import math

import torch

LOCAL_BACKENDS = ("flash4",)


@torch.library.custom_op("filmweaver::flash_attn4_fwd", mutates_args=())
def _flash_attn4_fwd(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """``query [B, Sq, H, D]``, ``key/value [B, Sk, H, D]`` (bf16/fp16, CUDA) -> ``[B, Sq, H, Dv]``."""
    from flash_attn.cute import flash_attn_func

    out = flash_attn_func(query, key, value, softmax_scale=scale)
    return out[0] if isinstance(out, tuple) else out


@_flash_attn4_fwd.register_fake
def _(query, key, value, scale):
    return query.new_empty((*query.shape[:-1], value.shape[-1]))


def _flash4_kernel(q, k, v, softmax_scale=None, causal=False):
    """What diffusers' FlashAttention-4 dispatch calls (its hub kernel's signature)."""
    if causal:
        raise ValueError("flash4: causal attention is not used by filmweaver's models")
    scale = 1.0 / math.sqrt(q.shape[-1]) if softmax_scale is None else float(softmax_scale)
    return _flash_attn4_fwd(q, k, v, scale)


def flash4_available() -> str | None:
    """``None`` when ``flash4`` can run here, else why not."""
    try:
        import flash_attn.cute  # noqa: F401
    except ImportError as e:
        return f"the flash-attn-4 package is not installed (pip install flash-attn-4): {e}"
    if not torch.cuda.is_available():
        return "FlashAttention-4 needs a CUDA GPU"
    major, _ = torch.cuda.get_device_capability()
    if major < 9:
        return f"FlashAttention-4 needs a Hopper or Blackwell GPU (compute capability 9.0+), this one is {major}.x"
    return None


def _point_processors(transformer, backend) -> None:
    """Set every attention processor's backend (what ``ModelMixin.set_attention_backend`` does after its
    checks), including filmweaver's context processors, which carry the same attribute."""
    for module in transformer.modules():
        proc = getattr(module, "processor", None)
        if proc is not None and hasattr(proc, "_attention_backend"):
            proc._attention_backend = backend


def set_attention_backend(transformer, name: str) -> None:
    """Route every attention layer of ``transformer`` (a diffusers model) to backend ``name``.

    Raises ``ValueError`` / ``RuntimeError`` / ``ImportError`` with the reason when the backend cannot run
    here (unknown name, package missing, wrong GPU)."""
    if name not in LOCAL_BACKENDS:
        transformer.set_attention_backend(name)
        return
    why = flash4_available()
    if why:
        raise RuntimeError(why)
    from diffusers.models.attention_dispatch import _HUB_KERNELS_REGISTRY, AttentionBackendName

    for module in transformer.modules():
        if getattr(getattr(module, "processor", None), "_parallel_config", None) is not None:
            raise ValueError("flash4 does not support context parallelism: use flash, _native_cudnn or native")
    backend = AttentionBackendName.FLASH_4_HUB
    # the hub slot with a local kernel: diffusers skips its download when the kernel is already set
    _HUB_KERNELS_REGISTRY[backend].kernel_fn = _flash4_kernel
    _point_processors(transformer, backend)
