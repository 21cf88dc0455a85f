"""LoRA files keyed by the original Wan module names (StoryMem's M2V LoRA) onto diffusers' Wan.

StoryMem releases ``backbone_high_noise.pth`` / ``backbone_low_noise.pth``: peft state dicts over the
original Wan repository's module names, e.g. ``blocks.0.self_attn.q.lora_A.weight`` (rank 128,
rsLoRA, targets self/cross-attention q, k, v, o and ffn.0 / ffn.2). diffusers'
``WanTransformer3DModel`` names the same layers ``blocks.0.attn1.to_q`` etc. This module renames the
keys explicitly (:data:`WAN_TO_DIFFUSERS`), refuses any key it cannot place, attaches a peft adapter
to exactly the targeted modules and checks that every tensor landed.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

# original Wan module suffix -> diffusers module suffix (inside blocks.N.)
WAN_TO_DIFFUSERS = {
    "self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k", "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "cross_attn.k_img": "attn2.add_k_proj", "cross_attn.v_img": "attn2.add_v_proj",  # Wan2.1-I2V
    "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2",
}
_PREFIXES = ("base_model.model.", "diffusion_model.", "model.", "transformer.")
_KEY = re.compile(r"^blocks\.(\d+)\.(.+)\.(lora_A|lora_B|lora_down|lora_up)(?:\.[^.]+)?\.weight$")
_ALPHA = re.compile(r"^blocks\.(\d+)\.(.+)\.alpha$")


class LoraConversionError(ValueError):
    pass


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A LoRA file as tensors (:func:`filmweaver.io.load_tensor_file`: safetensors or ``weights_only``)."""
    from filmweaver.io import load_tensor_file

    try:
        return load_tensor_file(path)
    except ValueError as e:
        raise LoraConversionError(f"{e} (a peft state dict)") from e


def convert_wan_lora(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Rename original-Wan LoRA keys to diffusers' (``blocks.N.attn1.to_q.lora_A.weight``).

    Returns ``(tensors, alphas)``; ``alphas`` maps diffusers module names to a stored ``alpha`` if the
    file has one. Raises :class:`LoraConversionError` listing every key that has no place (nothing is
    silently dropped). Keys already in diffusers form pass through unchanged.
    """
    out: dict[str, torch.Tensor] = {}
    alphas: dict[str, float] = {}
    unknown: list[str] = []
    for raw, tensor in state_dict.items():
        key = raw
        for p in _PREFIXES:
            key = key.removeprefix(p)
        if m := _ALPHA.match(key):
            block, module = m.groups()
            target = WAN_TO_DIFFUSERS.get(module, module if module in WAN_TO_DIFFUSERS.values() else None)
            if target is None:
                unknown.append(raw)
            else:
                alphas[f"blocks.{block}.{target}"] = float(tensor)
            continue
        m = _KEY.match(key)
        if m is None:
            unknown.append(raw)
            continue
        block, module, kind = m.groups()
        target = WAN_TO_DIFFUSERS.get(module, module if module in WAN_TO_DIFFUSERS.values() else None)
        if target is None:
            unknown.append(raw)
            continue
        ab = {"lora_down": "lora_A", "lora_up": "lora_B"}.get(kind, kind)
        new = f"blocks.{block}.{target}.{ab}.weight"
        if new in out:
            raise LoraConversionError(f"two LoRA tensors map to {new} (one is {raw})")
        out[new] = tensor
    if unknown:
        raise LoraConversionError(f"{len(unknown)} LoRA key(s) have no module in diffusers' Wan transformer: "
                                  + ", ".join(unknown[:8]) + (" ..." if len(unknown) > 8 else ""))
    modules = {k.rsplit(".", 2)[0] for k in out}
    for mod in sorted(modules):
        if f"{mod}.lora_A.weight" not in out or f"{mod}.lora_B.weight" not in out:
            raise LoraConversionError(f"{mod}: LoRA needs both lora_A and lora_B")
    return out, alphas


def lora_scale(rank: int, alpha: float, use_rslora: bool) -> float:
    """The factor an adapter's update is applied with: ``alpha / sqrt(rank)`` with rsLoRA, else ``alpha / rank``."""
    return alpha / rank**0.5 if use_rslora else alpha / rank


def single_rank(tensors: dict[str, torch.Tensor], where: str = "") -> int:
    """The one rank of a converted LoRA's tensors (every ``lora_A``'s rows); mixed ranks are refused."""
    ranks = {t.shape[0] for k, t in tensors.items() if k.endswith("lora_A.weight")}
    if len(ranks) != 1:
        raise LoraConversionError(f"{where}mixed LoRA ranks {sorted(ranks)} (one adapter needs one rank)")
    return ranks.pop()


def attach_wan_lora(transformer, state_dict: dict[str, torch.Tensor], adapter_name: str = "memory",
                    alpha: float | None = None, use_rslora: bool = True) -> dict:
    """Convert ``state_dict`` and load it as a peft adapter on a diffusers ``WanTransformer3DModel``.

    Rank comes from the tensors; ``alpha`` defaults to a stored per-module alpha, else the rank
    (with rsLoRA the scale is ``alpha / sqrt(rank)``). Returns a summary (modules, rank, alpha).
    Raises :class:`LoraConversionError` if a tensor has no module or a shape does not match.
    """
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict

    tensors, alphas = convert_wan_lora(state_dict)
    modules = sorted({k.rsplit(".", 2)[0] for k in tensors})
    named = dict(transformer.named_modules())
    missing = [m for m in modules if m not in named]
    if missing:
        raise LoraConversionError(f"{len(missing)} LoRA target(s) are not modules of this transformer: "
                                  + ", ".join(missing[:8]))
    rank = single_rank(tensors)
    for m in modules:
        layer = named[m]
        a, b = tensors[f"{m}.lora_A.weight"], tensors[f"{m}.lora_B.weight"]
        if a.shape != (rank, layer.in_features) or b.shape != (layer.out_features, rank):
            raise LoraConversionError(f"{m}: LoRA shapes A {tuple(a.shape)} / B {tuple(b.shape)} do not fit the layer "
                                      f"({layer.in_features} -> {layer.out_features}) at rank {rank}")
    stored = set(alphas.values())
    if alpha is None:
        alpha = stored.pop() if len(stored) == 1 else float(rank)
    config = LoraConfig(r=rank, lora_alpha=alpha, use_rslora=use_rslora, target_modules=modules,
                        init_lora_weights=False)
    transformer.add_adapter(config, adapter_name=adapter_name)
    result = set_peft_model_state_dict(transformer, tensors, adapter_name=adapter_name)
    if getattr(result, "unexpected_keys", None):
        raise LoraConversionError(f"peft did not place: {result.unexpected_keys[:8]}")
    # every tensor must now be the adapter's weight (peft replaced the layers: look them up again)
    named = dict(transformer.named_modules())
    for m in modules:
        for ab in ("lora_A", "lora_B"):
            w = getattr(named[m], ab)[adapter_name].weight
            if not torch.equal(w.detach().cpu().to(tensors[f"{m}.{ab}.weight"].dtype), tensors[f"{m}.{ab}.weight"]):
                raise LoraConversionError(f"{m}.{ab} did not load")
    return {"adapter": adapter_name, "modules": len(modules), "rank": rank, "alpha": alpha, "use_rslora": use_rslora,
            "scale": lora_scale(rank, alpha, use_rslora)}


# -- training and the files it writes ---------------------------------------------------------------------
# diffusers' save_lora_adapter records peft's config of the adapter (rank, alpha, rsLoRA) as JSON in the
# safetensors metadata under this key; a file without it (StoryMem's) follows StoryMem's convention
ADAPTER_METADATA_KEY = "lora_adapter_metadata"
# StoryMem's adapter targets (original Wan names): its loader builds exactly these, at r = alpha = --lora_rank
STORYMEM_TARGETS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                    "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")


def add_memory_lora(transformer, rank: int, alpha: float | None = None, target_modules=None,
                    use_rslora: bool = True, adapter_name: str = "default") -> int:
    """A trainable peft adapter on a diffusers ``WanTransformer3DModel`` (its base weights frozen). The
    adapter's scale is ``alpha / sqrt(rank)`` with rsLoRA (StoryMem's), else ``alpha / rank``; ``alpha``
    defaults to the rank. Adapter weights are float32 whatever the base's dtype (a bfloat16 base is
    trained through autocast). Returns the number of trainable adapter parameters."""
    from peft import LoraConfig

    targets = list(target_modules or [WAN_TO_DIFFUSERS[t] for t in STORYMEM_TARGETS])
    transformer.requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, use_rslora=use_rslora,
                                       target_modules=targets, init_lora_weights=True), adapter_name=adapter_name)
    n = 0
    for name, p in transformer.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()
            p.requires_grad_(True)
            n += p.numel()
    return n


def lora_file_settings(path: str | Path) -> dict:
    """What a LoRA file says about its own scale: ``{"alpha": ..., "use_rslora": ...}`` from the adapter
    config diffusers' ``save_lora_adapter`` stores in a safetensors file's metadata; ``{}`` when the file
    records none (then StoryMem's convention applies: rsLoRA, alpha = a stored alpha or the rank)."""
    import json

    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get(ADAPTER_METADATA_KEY)
    if not raw:
        return {}
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise LoraConversionError(f"{path}: unreadable {ADAPTER_METADATA_KEY} metadata ({e})") from e
    out = {}
    if meta.get("lora_alpha") is not None:
        out["alpha"] = float(meta["lora_alpha"])
    if meta.get("use_rslora") is not None:
        out["use_rslora"] = bool(meta["use_rslora"])
    return out


def export_storymem_lora(lora_file: str | Path, out_file: str | Path) -> dict:
    """A diffusers-layout LoRA file (``filmweaver train``'s ``model/lora``) in StoryMem's layout: peft
    keys over the original Wan module names (``base_model.model.blocks.0.self_attn.q.lora_A.weight``),
    a ``torch.save`` of tensors (StoryMem's loader reads ``.pth``; ``weights_only`` loads it too).
    StoryMem's loader sets ``lora_alpha = r = --lora_rank`` with rsLoRA, a scale of ``sqrt(r)``: each
    ``lora_B`` is rescaled so that it applies this file's own update. Only StoryMem's ten targets exist
    there: a file with other adapted modules is refused. Returns a summary (rank, modules, scale)."""
    from filmweaver.io import atomic_path

    state = load_state_dict(lora_file)
    tensors, alphas = convert_wan_lora(state)
    settings = lora_file_settings(lora_file)
    rank = single_rank(tensors, f"{lora_file}: ")
    alpha = settings.get("alpha", next(iter(set(alphas.values())), float(rank)))
    scale = lora_scale(rank, alpha, settings.get("use_rslora", True))
    theirs = lora_scale(rank, float(rank), True)
    back = {v: k for k, v in WAN_TO_DIFFUSERS.items()}
    out, outside = {}, []
    for key, t in tensors.items():
        block, rest = key.removeprefix("blocks.").split(".", 1)
        module, ab, _ = rest.rsplit(".", 2)  # ATTN.MODULE, lora_A | lora_B, weight
        name = back.get(module)
        if name not in STORYMEM_TARGETS:
            outside.append(module)
            continue
        t = t.detach().float()
        if ab == "lora_B":
            t = t * (scale / theirs)
        out[f"base_model.model.blocks.{block}.{name}.{ab}.weight"] = t.contiguous()
    if outside:
        raise LoraConversionError(f"{lora_file}: StoryMem's loader has no adapter on {sorted(set(outside))[:4]} "
                                  "(train with its targets: dit.lora.target_modules unset)")
    with atomic_path(out_file) as tmp:
        torch.save(out, tmp)
    return {"file": str(out_file), "rank": rank, "modules": len(out) // 2, "scale": scale,
            "storymem_scale": theirs, "lora_rank_option": rank}
