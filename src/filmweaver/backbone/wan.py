"""In-context cache injection for diffusers' ``WanTransformer3DModel``, without touching its layers.

:class:`ContextWanTransformer` runs the stock model's own modules (patch embedding, condition
embedder, blocks, output head) in a forward pass that additionally takes context latent frames
(:class:`~filmweaver.context.ContextFrames`). Compared with the stock forward it adds:

* **explicit temporal RoPE positions**: every token's (t, h, w) position is given, so memory frames
  sit at negative times before the video, with an optional gap;
* **per-token timesteps**: each context block can be presented at its own noise level (clean memory at
  t=0, or noised as in training); the stock per-token path of Wan2.2-TI2V modulation is reused;
* **compressed context**: 2x/4x blocks are patchified with extra ``Conv3d`` projections whose kernels
  are ``c`` times the base patch, initialised from the base patch embedding (FramePack) so that at
  initialisation they equal average-pooling followed by the base embedding;
* output only for the generated frames (context tokens are dropped before the output projection);
* optionally **causal context** (``context_attention="causal"``, a property of the trained weights):
  context tokens attend only to context tokens, so with fixed context timesteps their keys and values
  at every layer do not depend on the generated frames or the denoising step. They are then computed
  once per chunk (and prompt) and reused at every step (:mod:`filmweaver.backbone.causal_kv`).

What is not the forward lives beside it: positions and rotary tables in :mod:`~filmweaver.backbone.rope`,
causal key/value reuse in :mod:`~filmweaver.backbone.causal_kv`, fused projections and compilation in
:mod:`~filmweaver.backbone.fusion`, context parallelism in :mod:`filmweaver.parallel`.

With no context and positions 0..F-1 this is numerically the stock forward (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from filmweaver.backbone import fusion
from filmweaver.backbone.causal_kv import (  # noqa: F401 - re-exported: the backbone's public names
    CONTEXT_ATTENTION,
    ContextKVAttnProcessor,
    ContextKVCache,
    KVState,
    causal_context_blocks,
    causal_context_blocks_checkpointed,
    set_context_attention,
)
from filmweaver.backbone.entity_tags import (
    ENTITY_PROJ_FILE,
    ENTITY_SLOTS_FILE,
    TEXT_SLOTS_FILE,
    add_entity_tags,
    add_slot_regions,
    add_text_slots,
    entity_projection,
    save_entity_projection,
    saved_entity_projection,
    slot_projection,
    text_slot_projection,
)
from filmweaver.backbone.fusion import BiasGELUProjection, FusedAway  # noqa: F401 - re-exported
from filmweaver.backbone.regional_text import (
    RegionalTextState,
    TextRegions,
    enable_regional_text,
    region_masks,
)
from filmweaver.backbone.rope import RopeTables, grid_positions, rope_from_positions  # noqa: F401 - re-exported
from filmweaver.context import ContextFrames
from filmweaver.offload import execution_device
from filmweaver.parallel import ContextParallel

CONTEXT_PROJ_FILE = "context_projections.safetensors"


def compressed_patch_embedding(base: nn.Conv3d, factor: int) -> nn.Conv3d:
    """A ``Conv3d`` whose kernel is ``factor`` x the base patch, initialised so that it equals
    average-pooling by ``factor`` followed by ``base`` (FramePack's initialisation)."""
    kt, kh, kw = base.kernel_size
    k = (kt * factor, kh * factor, kw * factor)
    conv = nn.Conv3d(base.in_channels, base.out_channels, kernel_size=k, stride=k, device=base.weight.device,
                     dtype=base.weight.dtype)
    with torch.no_grad():
        w = base.weight.repeat_interleave(factor, 2).repeat_interleave(factor, 3).repeat_interleave(factor, 4)
        conv.weight.copy_(w / factor**3)
        conv.bias.copy_(base.bias)
    return conv


@dataclass
class TokenLayout:
    """Where each context block and the generated frames sit in the token sequence."""

    spans: list[tuple[str, int, int]]  # (kind, start, end)
    num_generated: int

    @property
    def num_tokens(self) -> int:
        return self.spans[-1][2] if self.spans else 0

    @property
    def num_context(self) -> int:
        return self.num_tokens - self.num_generated


@dataclass
class _Tokens:
    """The embedded sequence of one forward: context blocks first, the generated frames last."""

    hidden: torch.Tensor  # [B, N, D]
    positions: list[torch.Tensor]  # per block [N_i, 3] float64, the generated frames' last
    spans: list[tuple[str, int, int]]
    timesteps: list[tuple[int, float | None]]  # per context block: (tokens, its own timestep or None)
    num_generated: int


class ContextWanTransformer(nn.Module):
    """A ``WanTransformer3DModel`` plus the (small) extra projections for compressed context.

    The wrapped ``transformer`` is the pretrained model, untouched; ``context_proj`` holds one
    ``Conv3d`` per compression factor (2, 4). LoRA adapters (peft) attach to ``transformer`` as usual.
    """

    # A little over 250 lines: besides embedding and forward (~200), the class keeps one-line entry
    # points to its modes (causal context, parallelism, fusion, compilation, entity tags; each lives in
    # its own module) so that every caller configures one object.

    # the optional entity projections: attribute, saved file, the method that creates it, what errors call it
    ENTITY_PROJECTIONS = (("entity_proj", ENTITY_PROJ_FILE, "enable_entity_tags", "entity projection"),
                          ("slot_proj", ENTITY_SLOTS_FILE, "enable_entity_slots", "entity slots"),
                          ("text_slot_proj", TEXT_SLOTS_FILE, "enable_text_slots", "text slots"))

    def __init__(self, transformer, compressions: tuple[int, ...] = (2, 4), context_attention: str = "full"):
        super().__init__()
        self.transformer = transformer
        self._kv_state = KVState()
        self._context_attention = "full"
        self.context_attention = context_attention
        self.context_parallel: ContextParallel | None = None  # the tokens split over ranks (enable_context_parallel)
        self.context_proj = nn.ModuleDict(
            {str(c): compressed_patch_embedding(transformer.patch_embedding, c) for c in compressions}
        )
        self._rope = RopeTables(transformer.config.attention_head_dim)
        self.entity_proj: nn.Linear | None = None  # entity tags on memory tokens (enable_entity_tags)
        self.slot_proj: nn.Linear | None = None  # entity slots on memory tokens (enable_entity_slots)
        self.text_slot_proj: nn.Linear | None = None  # entity slots on prompt tokens (enable_text_slots)
        # entity slots marked where each character is in a memory frame (trained so; in filmweaver.json)
        self.slot_regions = False
        self._regional: RegionalTextState | None = None  # cross-attention masks (enable_regional_text)

    # -- modes: causal context, parallelism, fusion, compilation (each in its own module) -------------
    @property
    def context_attention(self) -> str:
        """``"full"`` (every token attends to every token: the stock model) or ``"causal"`` (context
        tokens attend only to context; what the weights were trained with, saved in filmweaver.json)."""
        return self._context_attention

    @context_attention.setter
    def context_attention(self, mode: str) -> None:
        set_context_attention(self.transformer, self._kv_state, mode, self._context_attention)
        self._context_attention = mode

    def enable_context_parallel(self, mode: str = "ulysses", degree: int | None = None) -> None:
        """Split every forward's tokens across the ranks of the default process group (one story on
        several GPUs, launched with ``torchrun``; every rank runs the same story with the same seeds):
        :class:`~filmweaver.parallel.ContextParallel`."""
        self.context_parallel = ContextParallel(self.transformer, mode, degree, self.device)

    def fuse_qkv(self) -> None:
        """One q/k/v matrix product per attention layer (:func:`~filmweaver.backbone.fusion.fuse_qkv`)."""
        fusion.fuse_qkv(self.transformer)

    def fuse_ffn_gelu(self) -> None:
        """The FFN's up-projection and GELU in one call (:func:`~filmweaver.backbone.fusion.fuse_ffn_gelu`)."""
        fusion.fuse_ffn_gelu(self.transformer)

    @property
    def fused_for_inference(self) -> bool:
        return fusion.fused_for_inference(self.transformer)

    def compile_blocks(self, dynamic: bool | None = None, backend: str = "inductor", mode: str | None = None) -> None:
        """``torch.compile`` the repeated blocks (:func:`~filmweaver.backbone.fusion.compile_blocks`)."""
        fusion.compile_blocks(self.transformer, dynamic=dynamic, backend=backend, mode=mode)

    def enable_entity_tags(self) -> None:
        """Memory tokens carry whom they show (:mod:`~filmweaver.backbone.entity_tags`; zero at first)."""
        if self.entity_proj is None:
            self.entity_proj = entity_projection(self.transformer)

    def enable_entity_slots(self) -> None:
        """Memory tokens carry which of the shot's characters they show, by position (zero at first)."""
        if self.slot_proj is None:
            self.slot_proj = slot_projection(self.transformer)

    def enable_text_slots(self) -> None:
        """Prompt tokens carry which of the shot's characters they speak of (zero at first)."""
        if self.text_slot_proj is None:
            self.text_slot_proj = text_slot_projection(self.transformer)

    def enable_regional_text(self) -> None:
        """Let a forward's ``text_regions`` mask the cross-attention: each character's description read
        only where it is drawn (:mod:`~filmweaver.backbone.regional_text`; no weights)."""
        if self._regional is None:
            self._regional = enable_regional_text(self.transformer, self._kv_state)

    def add_text_slots(self, text: torch.Tensor, slots: torch.Tensor | None) -> torch.Tensor:
        """``text [B, L, D_text]`` with its tokens' character slots ``[B', L]`` added (the prompt
        embedding this backbone was trained with); unchanged without text slots or ``slots``."""
        if self.text_slot_proj is None or slots is None:
            return text
        return add_text_slots(self.text_slot_proj, text, slots)

    @property
    def config(self):
        return self.transformer.config

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    @property
    def device(self) -> torch.device:
        return execution_device(self) or self.transformer.device

    def save_context_projections(self, directory: str | Path, dtype: torch.dtype = torch.float32) -> None:
        state = {k: v.detach().to(dtype).cpu().contiguous() for k, v in self.context_proj.state_dict().items()}
        save_file(state, str(Path(directory) / CONTEXT_PROJ_FILE))
        for attr, name, _, _ in self.ENTITY_PROJECTIONS:
            if getattr(self, attr) is not None:
                save_entity_projection(getattr(self, attr), directory, dtype, name)

    def load_context_projections(self, directory: str | Path) -> bool:
        """Load trained projections if the directory has them; keep the FramePack init otherwise. A
        saved entity projection enables the entity tags (and so for entity and text slots)."""
        for attr, name, enable, _ in self.ENTITY_PROJECTIONS:
            state = saved_entity_projection(directory, name)
            if state is not None:
                getattr(self, enable)()
                getattr(self, attr).load_state_dict(state)
        path = Path(directory) / CONTEXT_PROJ_FILE
        if not path.is_file():
            return False
        self.context_proj.load_state_dict(load_file(str(path)))
        return True

    # -- forward ------------------------------------------------------------------------------------
    def _embed(self, latents: torch.Tensor, compression: int, spatial: int = 1) -> tuple[torch.Tensor, int, int]:
        """``[B, C, F, H, W]`` -> tokens ``[B, N, D]`` and the block's base-token grid (h, w)."""
        p_t, p_h, p_w = self.config.patch_size
        h, w = latents.shape[3] // p_h, latents.shape[4] // p_w
        if spatial > 1:  # pool s x s base patches, then the base embedding (no new weights)
            ph, pw = (-latents.shape[3]) % (p_h * spatial), (-latents.shape[4]) % (p_w * spatial)
            if ph or pw:
                latents = F.pad(latents, (0, pw, 0, ph, 0, 0), mode="replicate")
            x = self.transformer.patch_embedding(F.avg_pool3d(latents, (1, spatial, spatial)))
        elif compression == 1:
            x = self.transformer.patch_embedding(latents)
        else:
            c = compression
            # pad space (replicate) so every merged token covers a full c x c block of base patches
            ph, pw = (-latents.shape[3]) % (p_h * c), (-latents.shape[4]) % (p_w * c)
            if ph or pw:
                latents = F.pad(latents, (0, pw, 0, ph, 0, 0), mode="replicate")
            x = self.context_proj[str(c)](latents)
        return x.flatten(2).transpose(1, 2), h, w

    def _tokens(self, latents: torch.Tensor, context, frame_positions: torch.Tensor) -> _Tokens:
        """Every context block, then the generated frames, embedded into one sequence."""
        b = latents.shape[0]
        tokens, positions, spans, timesteps = [], [], [], []
        start = 0
        for block in context:
            x, h, w = self._embed(block.latents.to(device=latents.device, dtype=latents.dtype), block.compression,
                                  block.spatial)
            if x.shape[0] != b:  # context shared across the batch (e.g. cond/uncond of batched CFG)
                x = x.repeat(b // x.shape[0], 1, 1)
            if block.entity_embeddings is not None and self.entity_proj is not None:
                x = add_entity_tags(self.entity_proj, x, block.entity_embeddings)
            if block.entity_slots is not None and self.slot_proj is not None:
                if block.entity_slots.ndim >= 4:  # where each character is, per latent pixel
                    patch = (self.config.patch_size[1] * block.spatial, self.config.patch_size[2] * block.spatial)
                    x = add_slot_regions(self.slot_proj, x, block.entity_slots, patch)
                else:
                    x = add_entity_tags(self.slot_proj, x, block.entity_slots)
            tokens.append(x)
            positions.append(grid_positions(block.positions, h, w, block.compression, block.spatial))
            spans.append((block.kind, start, start + x.shape[1]))
            start += x.shape[1]
            timesteps.append((x.shape[1], block.timestep))
        x_gen, h, w = self._embed(latents, 1)
        tokens.append(x_gen)
        positions.append(grid_positions(frame_positions, h, w, 1))
        spans.append(("generated", start, start + x_gen.shape[1]))
        hidden = torch.cat(tokens, dim=1).contiguous() if len(tokens) > 1 else x_gen.contiguous()
        return _Tokens(hidden, positions, spans, timesteps, x_gen.shape[1])

    def _condition(self, tokens: _Tokens, timestep: torch.Tensor, text: torch.Tensor, image: torch.Tensor | None):
        """Time and text conditioning: ``(temb, tproj, text tokens, per_token)``.

        Per-token timesteps only when some context block has its own noise level (``temb [B, N, D]``,
        ``tproj [B, N, 6, D]``); otherwise the scalar path, exactly the stock computation (``temb [B, D]``,
        ``tproj [B, 6, D]``). Wan2.1-I2V's image tokens go before the text."""
        tr, b = self.transformer, timestep.shape[0]
        per_token = any(t is not None for _, t in tokens.timesteps)
        if per_token:
            # every token of a block shares its timestep: embed one per (sample, block), then expand
            # (the MLP on every token would cost ~2 % of a 1.3B forward at 52k tokens)
            ts = [timestep if t is None else torch.as_tensor(t, dtype=timestep.dtype, device=tokens.hidden.device).reshape(-1).expand(b)
                  for _, t in tokens.timesteps] + [timestep]
            counts = [n for n, _ in tokens.timesteps] + [tokens.num_generated]
            temb, tproj, text, image = tr.condition_embedder(torch.stack(ts, dim=1).flatten(), text, image,
                                                             timestep_seq_len=len(ts))  # [B, blocks, D], [B, blocks, 6D]
            temb = torch.cat([temb[:, i : i + 1].expand(-1, n, -1) for i, n in enumerate(counts)], dim=1)
            tproj = torch.cat([tproj[:, i : i + 1].expand(-1, n, -1) for i, n in enumerate(counts)], dim=1)
            tproj = tproj.unflatten(2, (6, -1))
        else:
            temb, tproj, text, image = tr.condition_embedder(timestep, text, image)
            tproj = tproj.unflatten(1, (6, -1))
        if image is not None:  # Wan2.1-I2V: image tokens first (one image shared across a CFG batch)
            text = torch.cat([image.expand(text.shape[0], -1, -1), text], dim=1)
        return temb, tproj, text, per_token

    def _run_blocks(self, hidden: torch.Tensor, text: torch.Tensor, tproj: torch.Tensor, rotary: tuple,
                    per_token: bool, gather: bool = True) -> torch.Tensor:
        """Every block over ``hidden [B, N, D]`` (this rank's share of it under context parallelism)."""
        cp, n = self.context_parallel, hidden.shape[1]
        if cp is not None:
            hidden, tproj, rotary = cp.split_inputs(hidden, tproj, rotary, per_token)
        for blk in self.transformer.blocks:
            hidden = blk(hidden, text, tproj, rotary)
        return hidden if cp is None or not gather else cp.gather(hidden, n)

    def _output_head(self, hidden: torch.Tensor, temb: torch.Tensor, per_token: bool, shape: tuple) -> torch.Tensor:
        """The generated tokens ``[B, N_gen, D]`` -> velocity ``[B, C_out, F, H, W]`` (``shape`` the latents')."""
        tr = self.transformer
        p_t, p_h, p_w = tr.config.patch_size
        b, _, f, hh, ww = shape
        if per_token:
            temb = temb[:, temb.shape[1] - hidden.shape[1] :]
            shift, scale = (tr.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)
            shift, scale = shift.squeeze(2), scale.squeeze(2)
        else:
            shift, scale = (tr.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
        hidden = (tr.norm_out(hidden.float()) * (1 + scale) + shift).type_as(hidden)
        hidden = tr.proj_out(hidden)
        hidden = hidden.reshape(b, f, hh // p_h, ww // p_w, p_t, p_h, p_w, -1)
        return hidden.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        context: list[ContextFrames] | tuple = (),
        frame_positions: torch.Tensor | None = None,
        encoder_hidden_states_image: torch.Tensor | None = None,
        return_layout: bool = False,
        kv_cache: ContextKVCache | None = None,
        text_regions: TextRegions | list[TextRegions | None] | None = None,
    ):
        """Predict the flow velocity of the generated frames.

        Args:
            latents: ``[B, C, F, H, W]`` noisy latents of the chunk being generated.
            timestep: ``[B]`` diffusion timestep (0..1000) of the generated frames.
            encoder_hidden_states: ``[B, L, text_dim]`` prompt embeddings.
            context: context blocks (shot cache keyframes, temporal cache, continuation frames).
            frame_positions: ``[F]`` temporal positions of the generated frames (default ``0..F-1``).
            encoder_hidden_states_image: ``[B, L_img, image_dim]`` for I2V-type transformers.
            kv_cache: with ``context_attention="causal"`` and context at fixed timesteps, where the
                context's keys/values are kept between the denoising steps of a chunk.
            text_regions: where each character the prompt describes is in the generated frames
                (regional prompts; needs :meth:`enable_regional_text`): per batch row (None: that row
                unmasked; one entry: every row), or one batched :class:`TextRegions` for all rows.

        Returns:
            ``[B, C_out, F, H, W]`` velocity for the generated frames only (and the token layout if
            ``return_layout``).
        """
        tr = self.transformer
        if tr.config.patch_size[0] != 1:
            raise NotImplementedError("temporal patch sizes other than 1 are not supported")
        b, f, device = latents.shape[0], latents.shape[2], latents.device
        if frame_positions is None:
            frame_positions = torch.arange(f, dtype=torch.float64)
        timestep = timestep.reshape(-1).expand(b) if timestep.numel() in (1, b) else timestep

        # 1. Tokens: context blocks, then the generated frames; 2. time and text conditioning.
        tokens = self._tokens(latents, context, frame_positions)
        temb, tproj, text, per_token = self._condition(tokens, timestep, encoder_hidden_states, encoder_hidden_states_image)
        n_gen = tokens.num_generated

        # 3. The blocks: causal context in two passes (context keys/values reused), else one pass.
        self._set_text_regions(text_regions, latents.shape, encoder_hidden_states.shape[1], b, device)
        try:
            hidden = self._blocks(tokens, text, tproj, per_token, context, encoder_hidden_states, kv_cache, device)
        finally:
            if self._regional is not None:
                self._regional.generated = None

        # 4. Output head on the generated tokens only (the causal path returns them alone).
        out = self._output_head(hidden[:, -n_gen:], temb, per_token, latents.shape)
        if return_layout:
            return out, TokenLayout(tokens.spans, n_gen)
        return out

    def _blocks(self, tokens: _Tokens, text, tproj, per_token, context, text_key, kv_cache, device) -> torch.Tensor:
        """Every block over the sequence: ``[B, N, D]``, or ``[B, N_gen, D]`` on the causal path."""
        tr, hidden = self.transformer, tokens.hidden
        n_ctx = hidden.shape[1] - tokens.num_generated
        if self._context_attention == "causal" and n_ctx:
            return self._causal_blocks(tokens, text, tproj, per_token, context, text_key, kv_cache)
        if torch.is_grad_enabled() and tr.gradient_checkpointing:
            rotary = self._rope(torch.cat(tokens.positions), device)
            for blk in tr.blocks:
                hidden = tr._gradient_checkpointing_func(blk, hidden, text, tproj, rotary)
            return hidden
        return self._run_blocks(hidden, text, tproj, self._rope(torch.cat(tokens.positions), device), per_token)

    def _set_text_regions(self, regions, shape: tuple, text_len: int, batch: int, device) -> None:
        """The cross-attention masks of this forward's generated tokens (regional prompts)."""
        if regions is None or (isinstance(regions, list) and not regions):
            return
        if self._regional is None:
            raise ValueError("text_regions needs enable_regional_text() first")
        if self.context_parallel is not None:
            raise NotImplementedError("regional prompts with context parallelism")
        if torch.is_grad_enabled() and self.transformer.gradient_checkpointing:  # the recompute would miss the mask
            raise NotImplementedError("regional prompts with gradient checkpointing")
        _, p_h, p_w = self.config.patch_size
        per_frame = math.ceil(shape[3] / p_h) * math.ceil(shape[4] / p_w)
        self._regional.generated = region_masks(regions, batch, shape[2], (p_h, p_w), per_frame, text_len, device)

    def _causal_blocks(self, tokens: _Tokens, text, tproj, per_token, context, text_key, kv_cache):
        """:func:`~filmweaver.backbone.causal_kv.causal_context_blocks` with this backbone's blocks,
        RoPE tables and context parallelism. The keys/values are cached only if nothing in the context
        pass changes between steps: context blocks at their own fixed timesteps (a block at the
        generated frames' timestep changes every step)."""
        tr = self.transformer
        device = tokens.hidden.device
        n_ctx = tokens.hidden.shape[1] - tokens.num_generated
        if torch.is_grad_enabled() and tr.gradient_checkpointing:  # training: layer by layer, nothing cached
            if self.context_parallel is not None:
                raise NotImplementedError("gradient checkpointing with causal context and context parallelism")
            return causal_context_blocks_checkpointed(
                tr.blocks, self._kv_state, tr._gradient_checkpointing_func, tokens.hidden, n_ctx, text, tproj,
                per_token, self._rope(torch.cat(tokens.positions[:-1]), device), self._rope(tokens.positions[-1], device))
        cacheable = kv_cache is not None and all(b.timestep is not None for b in context)
        cached = kv_cache.get(self, text_key) if cacheable else None

        def run_blocks(hidden, tproj_part, rotary, gather=True):
            return self._run_blocks(hidden, text, tproj_part, rotary, per_token, gather)

        h, kv = causal_context_blocks(tr.blocks, self._kv_state, run_blocks, tokens.hidden, n_ctx, tproj, per_token,
                                      lambda: self._rope(torch.cat(tokens.positions[:-1]), device),
                                      self._rope(tokens.positions[-1], device), cached)
        if cacheable and cached is None:
            kv_cache.put(self, text_key, kv)
        return h

    def count_tokens(self, context: list[ContextFrames], latent_hw: tuple[int, int]) -> int:
        """Context tokens these blocks would add (for budgets and tests), without running the model."""
        _, p_h, p_w = self.config.patch_size
        h, w = latent_hw[0] // p_h, latent_hw[1] // p_w
        return sum((blk.num_frames // blk.compression) * math.ceil(h / (blk.compression * blk.spatial))
                   * math.ceil(w / (blk.compression * blk.spatial)) for blk in context)
