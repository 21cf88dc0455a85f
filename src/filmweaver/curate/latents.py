"""Optional precomputed inputs of a sample: each shot's VAE latents and each prompt's text embedding,
by the model that will train on them (``latents.model``), at its resolution."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save

from filmweaver.curate.config import Latents
from filmweaver.io import read_video


class LatentEncoder:
    def __init__(self, cfg: Latents, device: str = "cpu"):
        from filmweaver.models import WAN_PRESETS, load_models

        preset, model = (cfg.model, None) if cfg.model in ("synth", "tiny", *WAN_PRESETS) else (cfg.preset, cfg.model)
        self.models = load_models(preset=preset, model=model, device=device)
        d = self.models.defaults
        self.size = (cfg.height or d.get("height", 480), cfg.width or d.get("width", 832))
        self.text = cfg.text
        self.model_id = self.models.model_id

    @torch.no_grad()
    def encode_clip(self, clip: Path) -> torch.Tensor:
        """A clip's latents ``[C, T', h, w]`` (its frames resized to the model's resolution)."""
        frames, _ = read_video(clip)
        frames = F.interpolate(frames, size=self.size, mode="bilinear", antialias=True, align_corners=False)
        return self.models.codec.encode(frames.permute(1, 0, 2, 3)[None])[0].cpu()

    def files(self, clips: list[Path], prompts: list[str]) -> list[tuple[str, bytes]]:
        """The sample's ``latents.safetensors`` (``shot_001``...) and ``text.safetensors`` (``shot_001``...
        ``[L, D]`` each, with ``mask`` rows where the prompt encoder pads) as WebDataset members."""
        latents = {f"shot_{i + 1:03d}": self.encode_clip(c).contiguous() for i, c in enumerate(clips)}
        meta = {"model": self.model_id, "height": str(self.size[0]), "width": str(self.size[1])}
        out = [("latents.safetensors", save(latents, metadata=meta))]
        if self.text and any(prompts):
            emb = self.models.prompt_encoder.encode(prompts).float().cpu()
            out.append(("text.safetensors", save({f"shot_{i + 1:03d}": e.contiguous() for i, e in enumerate(emb)},
                                                 metadata=meta)))
        return out
