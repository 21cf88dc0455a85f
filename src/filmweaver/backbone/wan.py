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
  once per chunk (and prompt) and reused at every step (:class:`ContextKVCache`): a step costs the
  generated tokens plus attention over the extra keys, instead of running every context token
  through every block.

With no context and positions 0..F-1 this is numerically the stock forward (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from filmweaver.context import ContextFrames

CONTEXT_PROJ_FILE = "context_projections.safetensors"


def rope_frequencies(head_dim: int, theta: float = 10000.0) -> tuple[list[int], list[torch.Tensor]]:
    """Wan's axis split of one head's dims into (t, h, w) and each axis' inverse frequencies (float64)."""
    h_dim = w_dim = 2 * (head_dim // 6)
    t_dim = head_dim - h_dim - w_dim
    dims = [t_dim, h_dim, w_dim]
    inv = [1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64)[: d // 2] / d)) for d in dims]
    return dims, inv


def rope_from_positions(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables for arbitrary (possibly negative or fractional) token positions.

    ``positions [N, 3]`` (t, h, w) float64 -> ``(cos, sin)`` each ``[1, N, 1, head_dim]`` float32, in
    the interleaved layout of diffusers' ``WanRotaryPosEmbed`` (identical values for integer positions).
    """
    _, inv = rope_frequencies(head_dim, theta)
    angles = torch.cat([torch.outer(positions[:, a].to(torch.float64), inv[a].to(positions.device)) for a in range(3)], dim=1)
    cos = angles.cos().repeat_interleave(2, dim=1).float()
    sin = angles.sin().repeat_interleave(2, dim=1).float()
    return cos[None, :, None, :], sin[None, :, None, :]


def grid_positions(t: torch.Tensor, h: int, w: int, compression: int = 1, spatial: int = 1) -> torch.Tensor:
    """Token positions for a block patchified with kernel ``compression`` x base patch.

    ``t [F]`` temporal positions of the block's latent frames (F divisible by ``compression``); ``h, w``
    the block's size in *base* tokens. Each merged token sits at the mean of the base positions it
    covers. ``spatial`` merges ``s x s`` base patches of each frame (time untouched). Returns
    ``[F/c * ceil(h/c') * ceil(w/c'), 3]`` float64 (``c' = c * s``), in (t, h, w) raster order.
    """
    c, cs = compression, compression * spatial
    tt = t.to(torch.float64).view(-1, c).mean(dim=1)
    hh = torch.arange(math.ceil(h / cs), dtype=torch.float64) * cs + (cs - 1) / 2
    ww = torch.arange(math.ceil(w / cs), dtype=torch.float64) * cs + (cs - 1) / 2
    g = torch.stack(torch.meshgrid(tt, hh, ww, indexing="ij"), dim=-1)
    return g.reshape(-1, 3)


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


CONTEXT_ATTENTION = ("full", "causal")


class _KVState:
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

    def __init__(self, state: _KVState):
        # the keys/values live on the processor, not in a list indexed by layer: torch.compile treats
        # integer attributes as constants, so an index would compile one graph per block
        self.state = state
        self.kv: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.transformers.transformer_wan import _get_qkv_projections

        if encoder_hidden_states is not None:
            raise ValueError("ContextKVAttnProcessor is for self-attention (attn1) only")
        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))
        if rotary_emb is not None:
            query, key = _apply_rotary(query, *rotary_emb), _apply_rotary(key, *rotary_emb)
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


class FusedAway(nn.Module):
    """Stands where a projection was before :meth:`ContextWanTransformer.fuse_qkv` folded it into a
    fused one: it holds no weights, and calling it is an error rather than a silent wrong answer."""

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


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved rotary embedding (``x [B, N, heads, d]``, tables ``[1, N, 1, d]``)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * c - x2 * s
    out[..., 1::2] = x1 * s + x2 * c
    return out.type_as(x)


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


class ContextWanTransformer(nn.Module):
    """A ``WanTransformer3DModel`` plus the (small) extra projections for compressed context.

    The wrapped ``transformer`` is the pretrained model, untouched; ``context_proj`` holds one
    ``Conv3d`` per compression factor (2, 4). LoRA adapters (peft) attach to ``transformer`` as usual.
    """

    def __init__(self, transformer, compressions: tuple[int, ...] = (2, 4), context_attention: str = "full"):
        super().__init__()
        self.transformer = transformer
        self._kv_state = _KVState()
        self._context_attention = "full"
        self.context_attention = context_attention
        self._cp_group = None  # context parallelism: the process group the tokens are split over
        self.context_proj = nn.ModuleDict(
            {str(c): compressed_patch_embedding(transformer.patch_embedding, c) for c in compressions}
        )
        # RoPE tables by token layout: a story (or a training run) repeats a handful of layouts, and
        # building one on the host and copying it over would stall the device on every forward
        self._rope_tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- construction / persistence -----------------------------------------------------------------
    @property
    def context_attention(self) -> str:
        """``"full"`` (every token attends to every token: the stock model) or ``"causal"`` (context
        tokens attend only to context; what the weights were trained with, saved in filmweaver.json)."""
        return self._context_attention

    @context_attention.setter
    def context_attention(self, mode: str) -> None:
        if mode not in CONTEXT_ATTENTION:
            raise ValueError(f"context_attention must be one of {CONTEXT_ATTENTION}, got {mode!r}")
        if mode == "causal" and self._context_attention != "causal":
            for blk in self.transformer.blocks:
                proc = ContextKVAttnProcessor(self._kv_state)
                proc._attention_backend = getattr(blk.attn1.processor, "_attention_backend", None)
                proc._parallel_config = getattr(blk.attn1.processor, "_parallel_config", None)
                blk.attn1.set_processor(proc)
        elif mode == "full" and self._context_attention == "causal":
            from diffusers.models.transformers.transformer_wan import WanAttnProcessor

            for blk in self.transformer.blocks:
                old = blk.attn1.processor
                blk.attn1.set_processor(WanAttnProcessor())
                blk.attn1.processor._attention_backend = old._attention_backend
                blk.attn1.processor._parallel_config = old._parallel_config
        self._context_attention = mode

    # -- context parallelism ------------------------------------------------------------------------
    def enable_context_parallel(self, mode: str = "ulysses", degree: int | None = None) -> None:
        """Split every forward's tokens across the ranks of the default process group (one story on
        several GPUs, launched with ``torchrun``; every rank runs the same story with the same seeds).

        Each rank embeds all tokens, keeps its share of the sequence (and of the RoPE tables and
        per-token modulation) through the blocks, and self-attention exchanges what it needs through
        diffusers' context-parallel attention (``ContextParallelConfig``): ``"ulysses"`` (all-to-all
        over heads; any token count) or ``"ring"`` (keys/values passed around; needs an attention
        backend that returns log-sum-exp, e.g. ``_native_cudnn`` or ``flash``, and token counts
        divisible by the degree). The generated tokens are gathered again before the output head.
        """
        import torch.distributed as dist
        from diffusers import ContextParallelConfig, ParallelConfig
        from torch.distributed.device_mesh import init_device_mesh

        if not dist.is_initialized():
            raise RuntimeError("context parallelism needs torch.distributed initialised (launch with torchrun)")
        degree = degree or dist.get_world_size()
        if mode == "ulysses":
            heads = self.transformer.config.num_attention_heads
            if heads % degree:
                raise ValueError(f"ulysses degree {degree} must divide the {heads} attention heads")
            cp = ContextParallelConfig(ulysses_degree=degree, ulysses_anything=True)
        elif mode == "ring":
            cp = ContextParallelConfig(ring_degree=degree)
        else:
            raise ValueError(f"context parallel mode must be 'ulysses' or 'ring', got {mode!r}")
        # What ``ModelMixin.enable_parallelism`` sets up, minus its input-splitting hooks (this forward
        # splits the tokens itself) and on the model's own device type (it assumes an accelerator)
        config = ParallelConfig(context_parallel_config=cp)
        device = self.device
        mesh = init_device_mesh(device.type, mesh_shape=cp.mesh_shape, mesh_dim_names=cp.mesh_dim_names)
        config.setup(dist.get_rank(), dist.get_world_size(), device, mesh=mesh)
        self.transformer._parallel_config = config
        for module in self.transformer.modules():
            proc = getattr(module, "processor", None)
            if proc is not None and hasattr(proc, "_parallel_config"):
                proc._parallel_config = config
        self._cp_group = dist.group.WORLD
        self._cp_mode = mode

    def _cp_shard(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's share of ``x`` along the token dimension ``dim`` (first ranks one longer)."""
        import torch.distributed as dist

        return torch.tensor_split(x, dist.get_world_size(self._cp_group), dim=dim)[dist.get_rank(self._cp_group)]

    def _cp_gather(self, h: torch.Tensor, n_total: int) -> torch.Tensor:
        """``[B, n_local, D]`` shards of every rank -> ``[B, n_total, D]`` in token order."""
        import torch.distributed as dist
        import torch.distributed._functional_collectives as funcol

        world = dist.get_world_size(self._cp_group)
        sizes = [t.shape[1] for t in torch.tensor_split(torch.empty(1, n_total), world, dim=1)]
        pad = sizes[0] - h.shape[1]
        if pad:
            h = F.pad(h, (0, 0, 0, pad))
        g = funcol.all_gather_tensor(h.contiguous(), 1, self._cp_group)
        g = g.wait() if hasattr(g, "wait") else g
        return torch.cat([c[:, :n] for c, n in zip(g.chunk(world, dim=1), sizes, strict=True)], dim=1)

    def _cp_split_inputs(self, hidden, tproj, rotary, per_token):
        """Shard tokens, per-token modulation and RoPE tables (no-op without context parallelism)."""
        if self._cp_group is None:
            return hidden, tproj, rotary
        import torch.distributed as dist

        world = dist.get_world_size(self._cp_group)
        if self._cp_mode == "ring" and hidden.shape[1] % world:
            raise ValueError(f"ring context parallelism needs a token count divisible by {world}, got "
                             f"{hidden.shape[1]} (use 'ulysses', which takes any count)")
        return (self._cp_shard(hidden, 1), self._cp_shard(tproj, 1) if per_token else tproj,
                tuple(self._cp_shard(r, 1) for r in rotary))

    def fuse_ffn_gelu(self) -> None:
        """Each block's FFN up-projection and its tanh-GELU in one cuBLASLt call (bias + GELU epilogue,
        :class:`BiasGELUProjection`) instead of a matrix product followed by a separate elementwise
        pass over the ``[N, ffn_dim]`` activations. CUDA only does the fusing; elsewhere the module
        computes the stock way. LoRA adapters are merged first (see :meth:`fuse_qkv`). Idempotent."""
        from diffusers.models.activations import GELU

        self._merge_adapters()
        for blk in self.transformer.blocks:
            act = blk.ffn.net[0]
            if isinstance(act, GELU) and act.proj.bias is not None:
                if act.approximate != "tanh":
                    raise ValueError(f"fuse_ffn_gelu needs the tanh-approximate GELU Wan uses, got {act.approximate!r}")
                blk.ffn.net[0] = BiasGELUProjection(getattr(act.proj, "base_layer", act.proj))

    def _merge_adapters(self) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in self.transformer.modules():
            if isinstance(module, BaseTunerLayer) and not module.merged:
                module.merge()

    def fuse_qkv(self) -> None:
        """One matrix product for self-attention's q, k, v (and cross-attention's k, v) per block instead
        of three (two): diffusers' ``fuse_qkv_projections``, which our processors read through
        ``_get_qkv_projections``. The same numbers up to bf16 rounding of the concatenated product.

        A LoRA adapter attached with peft lives on ``to_q`` / ``to_k`` / ``to_v``, which the fused
        projection bypasses, so adapters are merged into the base weights first (they cannot be
        switched off afterwards). The separate projections are then dropped (:class:`FusedAway`):
        diffusers keeps them, which costs the 14B model about 10 GB for weights nothing reads. Idempotent."""
        from diffusers.models.transformers.transformer_wan import WanAttention

        self._merge_adapters()
        self.transformer.fuse_qkv_projections()
        for attn in self.transformer.modules():
            if isinstance(attn, WanAttention) and attn.fused_projections:
                names = ["to_k", "to_v"] + ([] if attn.is_cross_attention else ["to_q"])  # cross: q stays
                if getattr(attn, "to_added_kv", None) is not None:  # Wan2.1-I2V's image keys/values
                    names += ["add_k_proj", "add_v_proj"]
                for name in names:
                    setattr(attn, name, FusedAway(name))

    @property
    def fused_for_inference(self) -> bool:
        """Whether :meth:`fuse_qkv` or :meth:`fuse_ffn_gelu` ran: the weights are then in a layout (joint
        q/k/v products, merged adapters) that ``from_pretrained`` does not read back."""
        return any(getattr(m, "fused_projections", False) or isinstance(m, BiasGELUProjection)
                   for m in self.transformer.modules())

    def compile_blocks(self, dynamic: bool | None = None, backend: str = "inductor", mode: str | None = None) -> None:
        """``torch.compile`` the repeated transformer blocks (diffusers' regional compilation).

        One block code object is specialised per (attention mode, token count): no context, and with
        causal context the context pass and the generated pass, for every context size a run meets.
        That exceeds dynamo's default of 8 recompiles, so the limit is raised. ``dynamic=True`` (training,
        where every batch mode and memory size is another token count) compiles token-count-generic
        graphs instead of one per shape. ``mode``: torch.compile's (``"max-autotune-no-cudagraphs"``
        also times Triton matrix-product templates against cuBLAS and fuses their epilogues)."""
        import torch._dynamo

        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        self.transformer.compile_repeated_blocks(fullgraph=True, dynamic=dynamic, backend=backend, mode=mode)

    @property
    def config(self):
        return self.transformer.config

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    @property
    def device(self) -> torch.device:
        from filmweaver.offload import execution_device

        return execution_device(self) or self.transformer.device

    def save_context_projections(self, directory: str | Path, dtype: torch.dtype = torch.float32) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().to(dtype).cpu().contiguous() for k, v in self.context_proj.state_dict().items()}
        save_file(state, str(Path(directory) / CONTEXT_PROJ_FILE))

    def load_context_projections(self, directory: str | Path) -> bool:
        """Load trained projections if the directory has them; keep the FramePack init otherwise."""
        from safetensors.torch import load_file

        path = Path(directory) / CONTEXT_PROJ_FILE
        if not path.is_file():
            return False
        self.context_proj.load_state_dict(load_file(str(path)))
        return True

    # -- forward ------------------------------------------------------------------------------------
    def _rope(self, positions: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``positions [N, 3]`` float64 -> the (cos, sin) tables on ``device``, memoised by layout."""
        key = (positions.numpy().tobytes(), str(device))
        tables = self._rope_tables.get(key)
        if tables is None:
            if len(self._rope_tables) >= 64:
                self._rope_tables.clear()
            head_dim = self.transformer.config.attention_head_dim
            tables = tuple(r.to(device) for r in rope_from_positions(positions, head_dim))
            self._rope_tables[key] = tables
        return tables

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

        Returns:
            ``[B, C_out, F, H, W]`` velocity for the generated frames only (and the token layout if
            ``return_layout``).
        """
        tr = self.transformer
        cfg = tr.config
        p_t, p_h, p_w = cfg.patch_size
        b, _, f, hh, ww = latents.shape
        if p_t != 1:
            raise NotImplementedError("temporal patch sizes other than 1 are not supported")
        device = latents.device
        if frame_positions is None:
            frame_positions = torch.arange(f, dtype=torch.float64)
        timestep = timestep.reshape(-1).expand(b) if timestep.numel() in (1, b) else timestep

        tokens, positions, spans, token_t = [], [], [], []
        start = 0
        for block in context:
            x, h, w = self._embed(block.latents.to(device=device, dtype=latents.dtype), block.compression, block.spatial)
            if x.shape[0] != b:  # context shared across the batch (e.g. cond/uncond of batched CFG)
                x = x.repeat(b // x.shape[0], 1, 1)
            tokens.append(x)
            positions.append(grid_positions(block.positions, h, w, block.compression, block.spatial))
            spans.append((block.kind, start, start + x.shape[1]))
            start += x.shape[1]
            token_t.append((x.shape[1], block.timestep))
        x_gen, h, w = self._embed(latents, 1)
        tokens.append(x_gen)
        positions.append(grid_positions(frame_positions, h, w, 1))
        spans.append(("generated", start, start + x_gen.shape[1]))
        n_gen = x_gen.shape[1]
        hidden = torch.cat(tokens, dim=1).contiguous() if len(tokens) > 1 else x_gen.contiguous()
        n_tokens = hidden.shape[1]
        rotary = None if self._context_attention == "causal" and len(tokens) > 1 else self._rope(torch.cat(positions), device)

        # Per-token timesteps only when some context block has its own noise level; otherwise the
        # scalar path (exactly the stock computation).
        per_token = any(t is not None for _, t in token_t)
        if per_token:
            # every token of a block shares its timestep: embed one per (sample, block), then expand
            # (the MLP on every token would cost ~2 % of a 1.3B forward at 52k tokens)
            ts = [timestep if t is None else torch.as_tensor(t, dtype=timestep.dtype, device=device).reshape(-1).expand(b)
                  for _, t in token_t] + [timestep]
            counts = [n for n, _ in token_t] + [n_gen]
            temb, tproj, text, image = tr.condition_embedder(
                torch.stack(ts, dim=1).flatten(), encoder_hidden_states, encoder_hidden_states_image,
                timestep_seq_len=len(ts))  # temb [B, blocks, D], tproj [B, blocks, 6D]
            temb = torch.cat([temb[:, i : i + 1].expand(-1, n, -1) for i, n in enumerate(counts)], dim=1)
            tproj = torch.cat([tproj[:, i : i + 1].expand(-1, n, -1) for i, n in enumerate(counts)], dim=1)
            tproj = tproj.unflatten(2, (6, -1))  # [B, N, 6, D]
        else:
            temb, tproj, text, image = tr.condition_embedder(timestep, encoder_hidden_states, encoder_hidden_states_image)
            tproj = tproj.unflatten(1, (6, -1))  # [B, 6, D]
        if image is not None:  # Wan2.1-I2V: image tokens first (one image shared across a CFG batch)
            text = torch.cat([image.expand(text.shape[0], -1, -1), text], dim=1)

        n_ctx = n_tokens - n_gen
        if self._context_attention == "causal" and n_ctx:
            hidden = self._causal_blocks(hidden, text, tproj, per_token, positions, n_ctx, device, context,
                                         encoder_hidden_states, kv_cache)
        elif torch.is_grad_enabled() and tr.gradient_checkpointing:
            for blk in tr.blocks:
                hidden = tr._gradient_checkpointing_func(blk, hidden, text, tproj, rotary)
        else:
            h, t_local, rot = self._cp_split_inputs(hidden, tproj, rotary, per_token)
            for blk in tr.blocks:
                h = blk(h, text, t_local, rot)
            hidden = h if self._cp_group is None else self._cp_gather(h, n_tokens)

        # Output head on the generated tokens only.
        hidden = hidden[:, -n_gen:]  # (the causal path returns the generated tokens alone)
        if per_token:
            temb = temb[:, n_tokens - n_gen :]
            shift, scale = (tr.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)
            shift, scale = shift.squeeze(2), scale.squeeze(2)
        else:
            shift, scale = (tr.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
        hidden = (tr.norm_out(hidden.float()) * (1 + scale) + shift).type_as(hidden)
        hidden = tr.proj_out(hidden)
        hidden = hidden.reshape(b, f, hh // p_h, ww // p_w, p_t, p_h, p_w, -1)
        out = hidden.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)
        if return_layout:
            return out, TokenLayout(spans, n_gen)
        return out

    def _causal_blocks(self, hidden, text, tproj, per_token, positions, n_ctx, device, context, text_key, kv_cache):
        """The blocks with causal context: a context-only pass that records every layer's keys/values
        (or those of ``kv_cache``), then the generated tokens attending to ``[context | generated]``.
        Returns the generated tokens' hidden states ``[B, N_gen, D]``."""
        tr, state = self.transformer, self._kv_state
        if torch.is_grad_enabled() and tr.gradient_checkpointing:
            raise NotImplementedError("gradient checkpointing with context_attention='causal'")
        # the cache is valid only if nothing in the context pass changes between steps: context blocks
        # at their own fixed timesteps (a block at the generated frames' timestep changes every step)
        cacheable = kv_cache is not None and all(b.timestep is not None for b in context)
        kv = kv_cache.get(self, text_key) if cacheable else None
        procs = [blk.attn1.processor for blk in tr.blocks]
        try:
            if kv is None:
                state.mode = "record"
                h, t_ctx, rot = self._cp_split_inputs(hidden[:, :n_ctx], tproj[:, :n_ctx] if per_token else tproj,
                                                      self._rope(torch.cat(positions[:-1]), device), per_token)
                for blk in tr.blocks:
                    h = blk(h, text, t_ctx, rot)
                kv = [p.kv for p in procs]
                if cacheable:
                    kv_cache.put(self, text_key, kv)
            for p, layer_kv in zip(procs, kv, strict=True):
                p.kv = layer_kv
            state.mode = "use"
            n_gen = hidden.shape[1] - n_ctx
            h, t_gen, rot = self._cp_split_inputs(hidden[:, n_ctx:], tproj[:, n_ctx:] if per_token else tproj,
                                                  self._rope(positions[-1], device), per_token)
            for blk in tr.blocks:
                h = blk(h, text, t_gen, rot)
            if self._cp_group is not None:
                h = self._cp_gather(h, n_gen)
        finally:
            state.mode = None
            for p in procs:
                p.kv = None  # the cache (if any) keeps them; nothing else should
        return h

    def count_tokens(self, context: list[ContextFrames], latent_hw: tuple[int, int]) -> int:
        """Context tokens these blocks would add (for budgets and tests), without running the model."""
        _, p_h, p_w = self.config.patch_size
        h, w = latent_hw[0] // p_h, latent_hw[1] // p_w
        return sum((blk.num_frames // blk.compression) * math.ceil(h / (blk.compression * blk.spatial))
                   * math.ceil(w / (blk.compression * blk.spatial)) for blk in context)
