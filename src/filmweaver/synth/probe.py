"""The attribute probe: a small CNN that reads the character's and the location's attributes from a frame.

It is trained on rendered frames, half of them passed through the VAE (so it reads generated frames,
which are VAE decodes, as well as clean ones), and its accuracy on frames of held-out stories is
reported per attribute. The synthetic-world metrics (:mod:`filmweaver.synth.evaluate`) are built on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from filmweaver.progress import progress_bar
from filmweaver.synth.world import ALL_ATTRIBUTES

PROBE_DIR = "probe"


class AttributeProbe(nn.Module):
    """``[N, 3, H, W]`` in [0, 1] -> one logit vector per attribute (:data:`ALL_ATTRIBUTES` order)."""

    def __init__(self, width: int = 48):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        layers = []
        for a, b in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.GroupNorm(8, b), nn.SiLU(),
                       nn.Conv2d(b, b, 3, padding=1), nn.GroupNorm(8, b), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({k: nn.Linear(chans[-1], len(v)) for k, v in ALL_ATTRIBUTES.items()})
        self.width = width

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(images * 2 - 1).mean(dim=(2, 3))
        return {k: head(f) for k, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """Class index per attribute, ``{name: [N]}``."""
        dev = next(self.parameters()).device
        outs = {k: [] for k in ALL_ATTRIBUTES}
        for chunk in images.split(batch_size):
            for k, v in self(chunk.to(dev).float()).items():
                outs[k].append(v.argmax(-1).cpu())
        return {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.long) for k, v in outs.items()}

    def save(self, directory: str | Path, metrics: dict | None = None) -> None:
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()},
                  str(d / "probe.safetensors"))
        (d / "probe.json").write_text(json.dumps({"width": self.width, "attributes": ALL_ATTRIBUTES,
                                                  "held_out_accuracy": metrics or {}}, indent=2))

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> AttributeProbe:
        from safetensors.torch import load_file

        d = Path(directory)
        meta = json.loads((d / "probe.json").read_text())
        if meta["attributes"] != ALL_ATTRIBUTES:
            raise ValueError(f"{d}: the probe was trained for other attributes than this world's")
        probe = cls(meta["width"])
        probe.load_state_dict(load_file(str(d / "probe.safetensors")))
        probe.held_out_accuracy = meta.get("held_out_accuracy", {})
        return probe.eval().to(device)


def _vae_roundtrip(codec, images: torch.Tensor) -> torch.Tensor:
    """Frames as the generator would show them: encoded and decoded by the model's VAE."""
    return codec.decode(codec.encode_images(images)).squeeze(2) if images.ndim == 4 else images


def _batch(frames: np.ndarray, labels: np.ndarray, idx: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(frames[idx]).to(device).permute(0, 3, 1, 2).float() / 255.0
    return x, torch.from_numpy(labels[idx]).to(device)


def train_probe(frames: np.ndarray, labels: np.ndarray, held_frames: np.ndarray, held_labels: np.ndarray, codec,
                steps: int = 3000, batch_size: int = 256, lr: float = 2e-3, device="cpu", seed: int = 0,
                progress: bool = True) -> tuple[AttributeProbe, dict]:
    """Train on ``frames [N, H, W, 3]`` uint8 with ``labels [N, A]``; report accuracy per attribute on
    the held-out frames, clean and after a VAE round trip."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    probe = AttributeProbe().to(device)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    keys = list(ALL_ATTRIBUTES)
    probe.train()
    for step in progress_bar(range(steps), desc="probe", enabled=progress):
        x, y = _batch(frames, labels, rng.integers(len(frames), size=batch_size), device)
        if step % 2:
            x = _vae_roundtrip(codec, x)
        # light photometric jitter so the probe reads attributes, not exact pixel values
        x = (x * (1 + 0.1 * (torch.rand(len(x), 1, 1, 1, device=device) - 0.5))).clamp(0, 1)
        out = probe(x)
        loss = sum(F.cross_entropy(out[k], y[:, j]) for j, k in enumerate(keys))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    probe.eval()
    return probe, probe_accuracy(probe, held_frames, held_labels, codec, device)


@torch.no_grad()
def probe_accuracy(probe: AttributeProbe, frames: np.ndarray, labels: np.ndarray, codec, device="cpu",
                   max_frames: int = 4096) -> dict:
    idx = np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).astype(int)
    x, y = _batch(frames, labels, idx, device)
    result = {}
    for name, images in (("clean", x), ("vae", torch.cat([_vae_roundtrip(codec, c) for c in x.split(256)]))):
        pred = probe.predict(images)
        result[name] = {k: round(float((pred[k].to(y.device) == y[:, j]).float().mean()), 4)
                        for j, k in enumerate(ALL_ATTRIBUTES)}
    result["frames"] = len(idx)
    return result
