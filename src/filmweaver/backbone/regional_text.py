"""Regional prompts: each character's description is read only where that character is drawn.

A prompt that describes several characters ("Ada, a purple round creature with stripes, and Ivy, a
green round creature wearing a hat, walk...") gives every video token the same cross-attention over
all of its words, so nothing ties "purple" to the figure on the left and a model mixes the
descriptions up (the most common multi-character failure). Regional prompting (layout-guided
attention, as in Regional Prompter, MultiDiffusion's regions or DenseDiffusion) masks the
cross-attention instead: a generated token inside character ``j``'s region attends to character
``j``'s description and to every other word (the names, the place, the action, the camera), never to
another character's description.

* Where each character is: its box in the shot's layout, else its vertical strip of the frame by the
  order the shot names them (the convention :func:`~filmweaver.backbone.entity_tags.slot_regions` uses
  for memory frames): :func:`shot_regions`.
* Which words describe whom: :func:`filmweaver.text.entity_token_slots` with ``spans="attributes"``
  (the description set off after a name, without the name). The names stay readable everywhere:
  with each region reading one description and no other name, a model told of three characters drew
  two (the cast's size is in the names).
* Only the rows of a batch whose prompt is the shot's own are masked (not the negative prompt's), and
  only the generated tokens' queries: memory tokens read the prompt as the model was trained.

Training-free: a mask (or, with a finite ``strength``, a bias) on the stock cross-attention, no
weights. A shot of one character is unchanged (no mask is made for it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from filmweaver.backbone.causal_kv import KVState
from filmweaver.backbone.entity_tags import SLOTS, column_strips, slot_regions


@dataclass
class TextRegions:
    """One prompt's regions, or a batch's: ``token_slots [L]`` (or ``[B, L]``) long, the character each
    token describes (-1 for none), and ``regions [h, w, SLOTS]`` (or ``[B, h, w, SLOTS]``), where each of
    the shot's characters is over the latent pixels of a generated frame (the same in every frame)."""

    token_slots: torch.Tensor
    regions: torch.Tensor
    strength: float = float("inf")  # the bias against another character's words (inf: masked out)

    def mask(self, frames: int, patch: tuple[int, int]) -> torch.Tensor:
        """``[frames * h' * w', L]`` (or ``[B, ...]``) bool: which prompt tokens each generated token
        (``patch`` latent pixels) may attend to."""
        slots, regions = self.token_slots, self.regions
        single = slots.ndim == 1
        if single:
            slots, regions = slots[None], regions[None]
        r = regions.permute(0, 3, 1, 2).float()  # [B, SLOTS, h, w]
        inside = F.avg_pool2d(r, patch, ceil_mode=True).flatten(2).transpose(1, 2) >= 0.5  # [B, h' w', SLOTS]
        idx, described = slots.clamp(0, SLOTS - 1).to(inside.device), (slots >= 0).to(inside.device)
        own = torch.gather(inside, 2, idx[:, None, :].expand(-1, inside.shape[1], -1)) & described[:, None]
        # a character with no region anywhere (beyond the slots, or off the layout) is read everywhere
        placed = torch.gather(inside.any(1), 1, idx) & described  # [B, L]
        allowed = (own | ~placed[:, None]).repeat(1, frames, 1)
        return allowed[0] if single else allowed


def shot_regions(characters: list[str], hw: tuple[int, int], boxes: dict | None = None) -> torch.Tensor:
    """``[h, w, SLOTS]``: where each of the shot's ``characters`` is, by its box ``(x0, y0, x1, y1)``
    (fractions of the frame) in ``boxes``, else its vertical strip by the order the shot names them."""
    return slot_regions(characters, [(tuple(characters), boxes or {})], hw)[0]


def strip_regions(counts: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``[B, h, w, SLOTS]``: for shots of ``counts [B]`` characters, the i-th one's vertical strip
    (what :func:`shot_regions` gives without boxes, for a batch at once: training)."""
    h, w = hw
    strip = column_strips(counts, w)  # [B, w]
    one = F.one_hot(strip.clamp(max=SLOTS - 1), SLOTS) * (strip < SLOTS)[..., None]
    return one[:, None].expand(-1, h, -1, -1).float()


class RegionalTextState:
    """The cross-attention mask of the current forward, shared by every block's processor."""

    def __init__(self, kv_state: KVState):
        self.kv_state = kv_state  # which pass a causal-context forward is on
        self.generated: torch.Tensor | None = None  # [B, N_gen, L] bool (or an additive bias), None: no mask

    def mask_for(self, num_queries: int) -> torch.Tensor | None:
        """``[B, 1, num_queries, L]`` for the queries of this pass (context tokens unmasked)."""
        gen = self.generated
        if gen is None or self.kv_state.mode == "record":  # the causal context pass: context only
            return None
        n_ctx = num_queries - gen.shape[1]
        if n_ctx < 0:
            raise ValueError(f"regional prompts: {num_queries} queries for {gen.shape[1]} generated tokens")
        if n_ctx:
            gen = torch.cat([torch.ones_like(gen[:, :1]).expand(-1, n_ctx, -1) if gen.dtype == torch.bool
                             else torch.zeros_like(gen[:, :1]).expand(-1, n_ctx, -1), gen], dim=1)
        return gen[:, None]


class RegionalTextAttnProcessor:
    """Cross-attention (``attn2``): unmasked through the processor it replaces (its attention backend),
    masked through diffusers' stock processor on PyTorch's own attention, which takes masks (the
    FlashAttention and Sage kernels do not; cross-attention to a prompt is a small share of a step)."""

    def __init__(self, inner, state: RegionalTextState):
        self.inner = inner
        self.masked = WanAttnProcessor()  # the native backend
        self.state = state

    @property
    def _attention_backend(self):
        return getattr(self.inner, "_attention_backend", None)

    @_attention_backend.setter
    def _attention_backend(self, value):
        self.inner._attention_backend = value

    @property
    def _parallel_config(self):
        return getattr(self.inner, "_parallel_config", None)

    @_parallel_config.setter
    def _parallel_config(self, value):
        self.inner._parallel_config = value

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        mask = self.state.mask_for(hidden_states.shape[1])
        if mask is not None and encoder_hidden_states is not None and encoder_hidden_states.shape[1] != mask.shape[-1]:
            # Wan2.1-I2V: image tokens before the text, read everywhere
            extra = encoder_hidden_states.shape[1] - mask.shape[-1]
            pad = torch.ones_like(mask[..., :1]) if mask.dtype == torch.bool else torch.zeros_like(mask[..., :1])
            mask = torch.cat([pad.expand(*mask.shape[:-1], extra), mask], dim=-1)
        if mask is None:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        if mask.dtype != torch.bool:
            mask = mask.to(hidden_states.dtype)
        return self.masked(attn, hidden_states, encoder_hidden_states, mask, rotary_emb)


def enable_regional_text(transformer, kv_state: KVState) -> RegionalTextState:
    """Wrap every block's cross-attention processor; returns the state that carries their mask."""
    state = RegionalTextState(kv_state)
    for blk in transformer.blocks:
        blk.attn2.set_processor(RegionalTextAttnProcessor(blk.attn2.processor, state))
    return state


def region_masks(regions, batch: int, frames: int, patch: tuple[int, int], tokens_per_frame: int, length: int,
                 device) -> torch.Tensor | None:
    """The ``[B, N_gen, L]`` mask (bool, or an additive bias for a finite strength) of ``regions``: one
    batched :class:`TextRegions`, or one entry per batch row (None: that row unmasked; a single entry:
    every row); None when nothing is masked."""
    if isinstance(regions, TextRegions):
        mask, strength = regions.mask(frames, patch).to(device), regions.strength
        if mask.ndim == 2:
            mask = mask[None].expand(batch, -1, -1)
    else:
        regions = list(regions) * batch if len(regions) == 1 else list(regions)
        if len(regions) != batch:
            raise ValueError(f"text_regions: {len(regions)} entries for a batch of {batch}")
        if all(r is None for r in regions):
            return None
        n = frames * tokens_per_frame
        mask = torch.stack([torch.ones(n, length, dtype=torch.bool) if r is None else r.mask(frames, patch).cpu()
                            for r in regions]).to(device)
        strength = max(r.strength for r in regions if r is not None)
    if mask.shape[0] != batch:
        raise ValueError(f"text_regions: a mask for {mask.shape[0]} rows, a batch of {batch}")
    if strength == float("inf"):
        return mask
    return torch.where(mask, 0.0, -strength)  # an additive bias: other characters' words discouraged
