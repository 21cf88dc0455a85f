"""Optional precomputed inputs of a sample: each shot's VAE latents and each prompt's text embedding,
by the model that will train on them (``latents.model``), at its resolution."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save

from filmweaver.curate.config import Latents
from filmweaver.io import read_video

FIT = "cover-crop"  # how clips meet a training resolution (recorded with precomputed latents)


def fit_frames(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``frames [T, 3, H, W]`` scaled (aspect kept) to cover ``size`` = (h, w), then centre-cropped to
    it: nothing is stretched (a 9:16 clip at a 16:9 resolution loses its top and bottom instead)."""
    (h, w), (fh, fw) = size, frames.shape[-2:]
    scale = max(h / fh, w / fw)
    sh, sw = max(h, round(fh * scale)), max(w, round(fw * scale))
    frames = F.interpolate(frames.float(), size=(sh, sw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (sh - h) // 2, (sw - w) // 2
    return frames[..., top : top + h, left : left + w]


@torch.no_grad()
def clip_latents(codec, frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``frames [T, 3, H, W]`` in [0, 1] fitted to ``size`` (:func:`fit_frames`) and encoded:
    ``[C, T', h, w]`` on the CPU. The one way curation's precomputed latents and the trainer's own
    encoding are made."""
    frames = fit_frames(frames, size)
    return codec.encode(frames.permute(1, 0, 2, 3)[None].to(codec.device))[0].cpu()


class LatentEncoder:
    def __init__(self, cfg: Latents, device: str = "cpu"):
        from filmweaver.models import WAN_PRESETS, load_models

        preset, model = (cfg.model, None) if cfg.model in ("synth", "tiny", *WAN_PRESETS) else (cfg.preset, cfg.model)
        self.models = load_models(preset=preset, model=model, device=device)
        d = self.models.defaults
        self.size = (cfg.height or d.get("height", 480), cfg.width or d.get("width", 832))
        self.text = cfg.text
        self.model_id = self.models.model_id
        self.vae_fingerprint = self.models.codec.fingerprint()  # the trainer checks its own VAE against it

    def encode_clip(self, clip: Path) -> torch.Tensor:
        """A clip's latents ``[C, T', h, w]`` (its frames resized to the model's resolution)."""
        return clip_latents(self.models.codec, read_video(clip)[0], self.size)

    def files(self, clips: list[Path], prompts: list[str]) -> list[tuple[str, bytes]]:
        """The sample's ``latents.safetensors`` (``shot_001``...) and ``text.safetensors`` (``shot_001``...
        ``[L, D]`` each, with ``mask`` rows where the prompt encoder pads) as WebDataset members."""
        latents = {f"shot_{i + 1:03d}": self.encode_clip(c).contiguous() for i, c in enumerate(clips)}
        meta = {"model": self.model_id, "height": str(self.size[0]), "width": str(self.size[1]),
                "vae": self.vae_fingerprint, "fit": FIT}
        out = [("latents.safetensors", save(latents, metadata=meta))]
        if self.text and any(prompts):
            emb = self.models.prompt_encoder.encode(prompts).float().cpu()
            out.append(("text.safetensors", save({f"shot_{i + 1:03d}": e.contiguous() for i, e in enumerate(emb)},
                                                 metadata=meta)))
        return out
