"""Entity tags: memory tokens carry whom they show.

Each context frame's ``entity_embeddings`` (the pooled text embedding of the names it shows,
:attr:`filmweaver.context.ContextFrames.entity_embeddings`) goes through one linear map to the model
width and is added to that frame's tokens, so attention can bind a look to a name. The map starts at
zero: a backbone with tags enabled computes what it did until the map is trained (``dit.entity_tags``).

Entity slots say the same by position instead of by name: each memory frame's ``entity_slots``
(:attr:`filmweaver.context.ContextFrames.entity_slots`: which of the generated shot's characters it
shows, by their order in the shot) go through a second zero-initialised map (``dit.entity_slots``), so
"the look in this frame is the shot's second character" needs no name matching.

With slot regions (``dit.region_slots``) a memory frame that shows several characters marks each one's
slot only where it is: its box where a detector found one, else its share of the frame by the order
its shot names them, left to right (:func:`slot_regions`), so a crowded keyframe tells which figure is
whom.

Text slots put the same positions on the prompt: each prompt token that speaks of the shot's j-th
character (:func:`filmweaver.text.entity_token_slots`: from its name to the next name or the sentence's
end) gets a third zero-initialised map's vector for slot j added to its embedding (``dit.text_slots``),
so the description "a purple round creature" is marked as the first character's, the one drawn
leftmost, and a model need not work out from word order which description goes where.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

ENTITY_PROJ_FILE = "entity_projection.safetensors"
ENTITY_SLOTS_FILE = "entity_slots.safetensors"
TEXT_SLOTS_FILE = "text_slots.safetensors"
SLOTS = 8  # characters of one shot that slots tell apart (later ones share no slot)


def entity_projection(transformer) -> nn.Linear:
    """A zero-initialised ``text_dim -> inner_dim`` map on the transformer's device and dtype."""
    cfg, ref = transformer.config, transformer.patch_embedding.weight
    proj = nn.Linear(cfg.text_dim, cfg.num_attention_heads * cfg.attention_head_dim, device=ref.device, dtype=ref.dtype)
    nn.init.zeros_(proj.weight)
    nn.init.zeros_(proj.bias)
    return proj


def slot_projection(transformer) -> nn.Linear:
    """A zero-initialised ``SLOTS -> inner_dim`` map (no bias: a frame that shows nobody gets nothing)."""
    cfg, ref = transformer.config, transformer.patch_embedding.weight
    proj = nn.Linear(SLOTS, cfg.num_attention_heads * cfg.attention_head_dim, bias=False, device=ref.device,
                     dtype=ref.dtype)
    nn.init.zeros_(proj.weight)
    return proj


def text_slot_projection(transformer) -> nn.Linear:
    """A zero-initialised ``SLOTS -> text_dim`` map (no bias), added to prompt embeddings before the
    transformer's own text projection."""
    cfg, ref = transformer.config, transformer.patch_embedding.weight
    proj = nn.Linear(SLOTS, cfg.text_dim, bias=False, device=ref.device, dtype=ref.dtype)
    nn.init.zeros_(proj.weight)
    return proj


def add_text_slots(proj: nn.Linear, text: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """``text [B, L, D_text]`` plus each token's slot vector; ``slots [B', L]`` long (-1: none; repeated
    when the batch was, as for classifier-free guidance)."""
    slots = _batch_of(slots.to(text.device), text.shape[0])
    one_hot = torch.nn.functional.one_hot(slots.clamp(0, SLOTS - 1), SLOTS) * (slots >= 0)[..., None]
    return text + proj(one_hot.to(dtype=proj.weight.dtype)).to(text.dtype)


def entity_slots(shot_characters: list[str], shown: list[tuple[str, ...]]) -> torch.Tensor:
    """``[K, SLOTS]``: per memory frame (the entities each shows), 1 at slot j where it shows the
    generated shot's j-th character."""
    out = torch.zeros(len(shown), SLOTS)
    for k, names in enumerate(shown):
        for j, c in enumerate(shot_characters[:SLOTS]):
            if c in names:
                out[k, j] = 1.0
    return out


def column_strips(counts: torch.Tensor, width: int) -> torch.Tensor:
    """``[..., width]`` long: the strip each column of a frame lies in when ``counts [...]`` characters
    stand side by side, each in its share of the frame (the i-th of n: columns i/n to (i+1)/n). The one
    layout the engine (:func:`slot_regions`), the trainer's memory and regional prompts assume where no
    box says otherwise."""
    centres = (torch.arange(width, dtype=torch.float64, device=counts.device) + 0.5) / width
    return (centres * counts.clamp(min=1)[..., None].double()).floor().long()


def slot_regions(shot_characters: list[str], frames: list[tuple[tuple[str, ...], dict]], hw: tuple[int, int]
                 ) -> torch.Tensor:
    """``[K, h, w, SLOTS]``: per memory frame, given as ``(its characters in its own shot's order, their
    boxes)``, slot j set where the generated shot's j-th character is: inside its box ``(x0, y0, x1,
    y1)`` (fractions of the frame) where there is one, else in its vertical strip (the i-th of n
    characters: columns i/n to (i+1)/n), the whole frame for a frame of one character."""
    h, w = hw
    out = torch.zeros(len(frames), h, w, SLOTS)
    cols, rows = (torch.arange(w) + 0.5) / w, (torch.arange(h) + 0.5) / h
    for k, (shown, boxes) in enumerate(frames):
        for i, name in enumerate(shown):
            if name not in shot_characters[:SLOTS]:
                continue
            j = shot_characters.index(name)
            if name in boxes:
                x0, y0, x1, y1 = boxes[name]
                mask = ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]
            else:
                mask = (column_strips(torch.tensor(len(shown)), w) == i)[None, :].expand(h, w)
            out[k, :, :, j] = torch.maximum(out[k, :, :, j], mask.float())
    return out


def add_slot_regions(proj: nn.Linear, tokens: torch.Tensor, regions: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """``tokens [B, F * n, D]`` of a block plus each token's slot vector: ``regions [F, h, w, SLOTS]``
    (or ``[B', F, h, w, SLOTS]``) over the latent pixels, averaged over each token's ``patch`` of them."""
    if regions.ndim == 4:
        regions = regions[None]
    b, f, h, w, s = regions.shape
    x = regions.to(device=tokens.device, dtype=torch.float32).permute(0, 1, 4, 2, 3).reshape(b * f, s, h, w)
    x = torch.nn.functional.avg_pool2d(x, patch, ceil_mode=True)  # [B' F, SLOTS, h', w']
    x = x.reshape(b, f, s, -1).permute(0, 1, 3, 2).reshape(b, -1, s)  # [B', F n, SLOTS]
    return tokens + _batch_of(proj(x.to(tokens.dtype)), tokens.shape[0])


def add_entity_tags(proj: nn.Linear, tokens: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """``tokens [B, F * n, D]`` of a block of ``F`` frames plus each frame's tag, ``embeddings [F, D_text]``
    (shared across the batch) or ``[B', F, D_text]`` (per sample; repeated when the batch was, as for
    classifier-free guidance)."""
    tags = proj(embeddings.to(device=tokens.device, dtype=tokens.dtype))
    if tags.ndim == 3:
        tags = _batch_of(tags, tokens.shape[0])
    return tokens + tags.repeat_interleave(tokens.shape[1] // tags.shape[-2], dim=-2)


def _batch_of(x: torch.Tensor, batch: int) -> torch.Tensor:
    """``x [B', ...]`` repeated to ``batch`` rows where the batch was (as for classifier-free guidance)."""
    return x if x.shape[0] == batch else x.repeat(batch // x.shape[0], *([1] * (x.ndim - 1)))


def save_entity_projection(proj: nn.Linear, directory: str | Path, dtype: torch.dtype,
                           name: str = ENTITY_PROJ_FILE) -> None:
    state = {k: v.detach().to(dtype).cpu().contiguous() for k, v in proj.state_dict().items()}
    save_file(state, str(Path(directory) / name))


def saved_entity_projection(directory: str | Path, name: str = ENTITY_PROJ_FILE) -> dict | None:
    """The weights saved in ``directory`` (``name``: the tags' or the slots' file), or None (a model without)."""
    path = Path(directory) / name
    return load_file(str(path)) if path.is_file() else None
