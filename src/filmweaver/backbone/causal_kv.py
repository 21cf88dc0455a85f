"""Causal context: context tokens attend only to context, so their keys/values are computed once per
chunk and reused at every denoising step.

With ``context_attention="causal"`` (a property of the trained weights, saved in filmweaver.json) and
context blocks at fixed timesteps, a context token's keys and values at every layer depend neither on
the generated frames nor on the step. The forward then runs in two passes: the context alone, with
each block's self-attention recording its keys/values, and the generated tokens attending to
``[recorded context | own]``. :class:`ContextKVCache` keeps the recorded keys/values of a chunk, so a
step costs the generated tokens plus attention over the extra keys, instead of every context token
through every block.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import WanAttnProcessor, _get_qkv_projections

from filmweaver.backbone.rope import apply_rotary

CONTEXT_ATTENTION = ("full", "causal")


class KVState:
    """What the self-attention processors of one backbone do on the current pass."""

    def __init__(self):
        self.mode: str | None = None  # None (plain attention) | "record" | "use"


class ContextKVAttnProcessor:
    """Self-attention of one Wan block that can record its keys/values or prepend recorded ones.

    The stock ``WanAttnProcessor`` computation for self-attention (q/k/v projections, RMS norms across
    heads, interleaved RoPE, the configured attention backend); in ``record`` mode it also stores the
    (post-RoPE) keys and values, in ``use`` mode the queries attend to ``[recorded keys | own keys]``.
    """

    _attention_backend = None  # set by ``set_attention_backend`` like the stock processor's
    _parallel_config = None

    def __init__(self, state: KVState):
        # the keys/values live on the processor, not in a list indexed by layer: torch.compile treats
        # integer attributes as constants, so an index would compile one graph per block
        self.state = state
        self.kv: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if encoder_hidden_states is not None:
            raise ValueError("ContextKVAttnProcessor is for self-attention (attn1) only")
        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))
        if rotary_emb is not None:
            query, key = apply_rotary(query, *rotary_emb), apply_rotary(key, *rotary_emb)
        mode = self.state.mode
        if mode == "record":
            self.kv = (key, value)
        elif mode == "use":
            k0, v0 = self.kv
            key, value = torch.cat([k0.to(key.dtype), key], dim=1), torch.cat([v0.to(value.dtype), value], dim=1)
        out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                    backend=self._attention_backend, parallel_config=self._parallel_config)
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


class ContextKVCache:
    """Context keys/values of every layer, computed on a chunk's first forward and reused after.

    Owned by whoever runs the denoising loop of one chunk (its context is fixed). One entry per
    (backbone, prompt tensor): the two experts of Wan2.2 and the conditional / unconditional / batched
    prompts of classifier-free guidance each get their own. The prompt tensor is matched by identity,
    so the caller passes the same tensor object at every step.

    Memory: ``2 x layers x context tokens x inner dim`` values per prompt batch (1.3B, 10 keyframes +
    temporal cache, batched CFG: 2 x 30 x 19,214 x 1,536 x 2 x 2 bytes = about 7 GB in bf16).
    """

    def __init__(self):
        self._entries: list[tuple[nn.Module, torch.Tensor, list]] = []
        self.hits = 0
        self.misses = 0

    def get(self, backbone: nn.Module, text: torch.Tensor) -> list | None:
        for bb, t, kv in self._entries:
            if bb is backbone and t is text:
                self.hits += 1
                return kv
        self.misses += 1
        return None

    def put(self, backbone: nn.Module, text: torch.Tensor, kv: list) -> None:
        self._entries.append((backbone, text, kv))


def set_context_attention(transformer, state: KVState, mode: str, current: str) -> None:
    """Swap every block's self-attention processor for ``mode`` (``"causal"``: recording processors
    sharing ``state``; ``"full"``: diffusers' stock ones), keeping the attention backend and the
    context-parallel configuration each processor had."""
    if mode not in CONTEXT_ATTENTION:
        raise ValueError(f"context_attention must be one of {CONTEXT_ATTENTION}, got {mode!r}")
    if mode == current:
        return
    for blk in transformer.blocks:
        old = blk.attn1.processor
        new = ContextKVAttnProcessor(state) if mode == "causal" else WanAttnProcessor()
        blk.attn1.set_processor(new)
        new._attention_backend = getattr(old, "_attention_backend", None)
        new._parallel_config = getattr(old, "_parallel_config", None)


# run_blocks(hidden [B, N, D], tproj, rotary, gather=...) -> hidden [B, N, D]: every block on one token
# group (gather=False: the output is not needed, a context-parallel run need not gather it)
RunBlocks = Callable[..., torch.Tensor]


def causal_context_blocks(blocks, state: KVState, run_blocks: RunBlocks, hidden: torch.Tensor, n_ctx: int,
                          tproj: torch.Tensor, per_token: bool, rope_context: Callable[[], tuple], rope_generated: tuple,
                          cached: list | None) -> tuple[torch.Tensor, list]:
    """The blocks with causal context: unless ``cached`` holds every layer's context keys/values, a
    context-only pass records them; then the generated tokens attend to ``[context | generated]``.

    ``hidden [B, N_ctx + N_gen, D]``; ``tproj`` per token ``[B, N, 6, D]`` (``per_token``) or shared.
    Returns the generated tokens' hidden states ``[B, N_gen, D]`` and the context keys/values (one
    ``(k, v)`` per layer)."""
    procs = [blk.attn1.processor for blk in blocks]
    try:
        if cached is None:
            state.mode = "record"
            run_blocks(hidden[:, :n_ctx], tproj[:, :n_ctx] if per_token else tproj, rope_context(), gather=False)
            cached = [p.kv for p in procs]
        for p, layer_kv in zip(procs, cached, strict=True):
            p.kv = layer_kv
        state.mode = "use"
        h = run_blocks(hidden[:, n_ctx:], tproj[:, n_ctx:] if per_token else tproj, rope_generated)
    finally:
        state.mode = None
        for p in procs:
            p.kv = None  # the cache (if any) keeps them; nothing else should
    return h, cached


def causal_context_blocks_checkpointed(blocks, state: KVState, checkpoint: Callable, hidden: torch.Tensor, n_ctx: int,
                                       text: torch.Tensor, tproj: torch.Tensor, per_token: bool, rope_context: tuple,
                                       rope_generated: tuple) -> torch.Tensor:
    """:func:`causal_context_blocks` for training with gradient checkpointing: layer by layer, the
    context tokens' pass (recording that layer's keys/values) and the generated tokens' pass (using
    them) run inside one checkpointed function, so the backward pass recomputes both together and the
    recorded keys/values never outlive their layer. The same result as the two-pass form: the
    generated tokens of layer ``l`` need only layer ``l``'s context keys/values. Returns the
    generated tokens' hidden states ``[B, N_gen, D]``."""
    t_ctx, t_gen = (tproj[:, :n_ctx], tproj[:, n_ctx:]) if per_token else (tproj, tproj)

    def layer(blk, h_ctx, h_gen):
        proc = blk.attn1.processor
        try:
            state.mode = "record"
            h_ctx = blk(h_ctx, text, t_ctx, rope_context)
            state.mode = "use"
            h_gen = blk(h_gen, text, t_gen, rope_generated)
        finally:
            state.mode = None
            proc.kv = None
        return h_ctx, h_gen

    h_ctx, h_gen = hidden[:, :n_ctx], hidden[:, n_ctx:]
    for blk in blocks:
        h_ctx, h_gen = checkpoint(layer, blk, h_ctx, h_gen)
    return h_gen
