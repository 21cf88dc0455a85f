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
from filmweaver.synth.world import ALL_ATTRIBUTES, CHARACTER_ATTRIBUTES, LOCATION_ATTRIBUTES, MAX_CAST

PROBE_DIR = "probe"


@torch.no_grad()
def _predict(probe: nn.Module, images: torch.Tensor, heads: list[str], batch_size: int) -> dict[str, torch.Tensor]:
    dev = next(probe.parameters()).device
    outs = {k: [] for k in heads}
    for chunk in images.split(batch_size):
        for k, v in probe(chunk.to(dev).float()).items():
            outs[k].append(v.argmax(-1).cpu())
    return {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.long) for k, v in outs.items()}


def _save(probe: nn.Module, directory: str | Path, meta: dict, dtype: torch.dtype = torch.float32) -> None:
    """``probe.safetensors`` (``dtype``; loaded back into float32) and ``probe.json`` (``meta``) in ``directory``."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to(dtype).cpu().contiguous() for k, v in probe.state_dict().items()}, str(d / "probe.safetensors"))
    (d / "probe.json").write_text(json.dumps(meta, indent=2))


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

    def predict(self, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """Class index per attribute, ``{name: [N]}``."""
        return _predict(self, images, list(ALL_ATTRIBUTES), batch_size)

    def save(self, directory: str | Path, metrics: dict | None = None, dtype: torch.dtype = torch.float32) -> None:
        _save(self, directory, {"width": self.width, "attributes": ALL_ATTRIBUTES, "held_out_accuracy": metrics or {}},
              dtype)

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


X_BINS = 8  # a cast probe reads each character's horizontal position in eighths of the frame


def _feature_stack(width: int) -> tuple[nn.Sequential, int]:
    chans = [3, width, 2 * width, 4 * width, 4 * width]
    layers = []
    for a, b in zip(chans[:-1], chans[1:], strict=True):
        layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.GroupNorm(8, b), nn.SiLU(),
                   nn.Conv2d(b, b, 3, padding=1), nn.GroupNorm(8, b), nn.SiLU()]
    return nn.Sequential(*layers), chans[-1]


class CastProbe(nn.Module):
    """Reads a frame of the multi-character world: how many characters it shows, each one's attributes
    and horizontal position, left to right (slot ``j`` = the ``j``-th from the left), and the location.

    ``[N, 3, 64, 64]`` in [0, 1] -> ``{"count": [N, MAX_CAST + 1], "slot{j}.{attribute}": ..., "slot{j}.x":
    [N, X_BINS], location attributes: ...}`` logits. The feature map is kept spatial (4 x 4 cells) so
    the heads can tell left from right."""

    def __init__(self, width: int = 48, hidden: int = 384):
        super().__init__()
        self.features, c = _feature_stack(width)
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(c * 16, hidden), nn.SiLU())
        heads = {"count": MAX_CAST + 1, **{k: len(v) for k, v in LOCATION_ATTRIBUTES.items()}}
        for j in range(MAX_CAST):
            heads.update({f"slot{j}.{k}": len(v) for k, v in CHARACTER_ATTRIBUTES.items()})
            heads[f"slot{j}.x"] = X_BINS
        self.heads = nn.ModuleDict({k.replace(".", "_"): nn.Linear(hidden, n) for k, n in heads.items()})
        self.head_names = list(heads)
        self.width, self.hidden = width, hidden

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(F.interpolate(images * 2 - 1, size=(64, 64), mode="bilinear", align_corners=False)
                          if images.shape[-1] != 64 else images * 2 - 1)
        h = self.trunk(f)
        return {k: self.heads[k.replace(".", "_")](h) for k in self.head_names}

    def predict(self, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """Class index per head ``{name: [N]}``."""
        return _predict(self, images, self.head_names, batch_size)

    def save(self, directory: str | Path, metrics: dict | None = None) -> None:
        _save(self, directory, {"kind": "cast", "width": self.width, "hidden": self.hidden, "max_cast": MAX_CAST,
                                "x_bins": X_BINS, "heads": self.head_names, "held_out_accuracy": metrics or {}})

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> CastProbe:
        from safetensors.torch import load_file

        d = Path(directory)
        meta = json.loads((d / "probe.json").read_text())
        probe = cls(meta["width"], meta["hidden"])
        if meta.get("kind") != "cast" or meta["heads"] != probe.head_names:
            raise ValueError(f"{d}: not a cast probe of this world ({meta.get('kind', 'attribute')} probe)")
        probe.load_state_dict(load_file(str(d / "probe.safetensors")))
        probe.held_out_accuracy = meta.get("held_out_accuracy", {})
        return probe.eval().to(device)


def cast_targets(cast_labels: np.ndarray, boxes: np.ndarray, location_labels: np.ndarray) -> dict[str, np.ndarray]:
    """Targets of :class:`CastProbe` for frames: ``cast_labels [N, MAX_CAST, 4]`` (-1: empty slot),
    ``boxes [N, MAX_CAST, 4]`` (NaN: out of view), ``location_labels [N, 3]`` -> ``{head: [N]}`` (-1:
    nothing to read). A character out of view leaves its slot; those in view are re-slotted left to right."""
    n = len(cast_labels)
    visible = (cast_labels[:, :, 0] >= 0) & ~np.isnan(boxes[:, :, 0])
    out = {"count": visible.sum(1)}
    for j, k in enumerate(LOCATION_ATTRIBUTES):
        out[k] = location_labels[:, j]
    for j in range(MAX_CAST):
        for k in [*CHARACTER_ATTRIBUTES, "x"]:
            out[f"slot{j}.{k}"] = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        members = [m for m in range(MAX_CAST) if visible[i, m]]
        members.sort(key=lambda m: boxes[i, m, 0] + boxes[i, m, 2])
        for j, m in enumerate(members):
            for a, k in enumerate(CHARACTER_ATTRIBUTES):
                out[f"slot{j}.{k}"][i] = cast_labels[i, m, a]
            centre = (boxes[i, m, 0] + boxes[i, m, 2]) / 2
            out[f"slot{j}.x"][i] = min(X_BINS - 1, int(centre * X_BINS))
    return out


def train_cast_probe(frames: np.ndarray, targets: dict[str, np.ndarray], held_frames: np.ndarray,
                     held_targets: dict[str, np.ndarray], codec, steps: int = 3000, batch_size: int = 256,
                     lr: float = 2e-3, device="cpu", seed: int = 0, progress: bool = True) -> tuple[CastProbe, dict]:
    """Train on ``frames [N, H, W, 3]`` uint8 with :func:`cast_targets`; half the batches through the
    VAE, light photometric jitter; held-out accuracy per head (where there is something to read)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    probe = CastProbe().to(device)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    table = {k: torch.from_numpy(np.asarray(v)).to(device) for k, v in targets.items()}
    probe.train()
    for step in progress_bar(range(steps), desc="cast probe", enabled=progress):
        idx = rng.integers(len(frames), size=batch_size)
        x = _training_view(torch.from_numpy(frames[idx]).to(device).permute(0, 3, 1, 2).float() / 255.0, step, codec)
        out = probe(x)
        ii = torch.from_numpy(idx).to(device)
        loss = sum(F.cross_entropy(out[k], table[k][ii], ignore_index=-1) for k in probe.head_names
                   if (table[k][ii] >= 0).any())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    probe.eval()
    return probe, cast_probe_accuracy(probe, held_frames, held_targets, codec, device)


@torch.no_grad()
def cast_probe_accuracy(probe: CastProbe, frames: np.ndarray, targets: dict[str, np.ndarray], codec, device="cpu",
                        max_frames: int = 4096) -> dict:
    idx = np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).astype(int)
    x = torch.from_numpy(frames[idx]).to(device).permute(0, 3, 1, 2).float() / 255.0
    result = {}
    for name, images in (("clean", x), ("vae", torch.cat([_vae_roundtrip(codec, c) for c in x.split(256)]))):
        pred = probe.predict(images)
        result[name] = {}
        for k in probe.head_names:
            y = torch.from_numpy(np.asarray(targets[k])[idx])
            keep = y >= 0
            if keep.any():
                result[name][k] = round(float((pred[k][keep] == y[keep]).float().mean()), 4)
    result["frames"] = len(idx)
    return result


def _vae_roundtrip(codec, images: torch.Tensor) -> torch.Tensor:
    """Frames as the generator would show them: encoded and decoded by the model's VAE."""
    return codec.decode(codec.encode_images(images)).squeeze(2) if images.ndim == 4 else images


def _training_view(x: torch.Tensor, step: int, codec) -> torch.Tensor:
    """A probe's training frames ``[B, 3, H, W]``: every other batch through the VAE (generated frames are
    VAE decodes; ``codec`` None: frames that never pass a VAE), and a light photometric jitter so it reads
    attributes, not exact pixel values."""
    if step % 2 and codec is not None:
        x = _vae_roundtrip(codec, x)
    return (x * (1 + 0.1 * (torch.rand(len(x), 1, 1, 1, device=x.device) - 0.5))).clamp(0, 1)


def _batch(frames: np.ndarray, labels: np.ndarray, idx: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(frames[idx]).to(device).permute(0, 3, 1, 2).float() / 255.0
    return x, torch.from_numpy(labels[idx]).to(device)


def train_probe(frames: np.ndarray, labels: np.ndarray, held_frames: np.ndarray, held_labels: np.ndarray, codec,
                steps: int = 3000, batch_size: int = 256, lr: float = 2e-3, device="cpu", seed: int = 0,
                progress: bool = True, init: AttributeProbe | None = None) -> tuple[AttributeProbe, dict]:
    """Train on ``frames [N, H, W, 3]`` uint8 with ``labels [N, A]`` (from ``init``'s weights, if given);
    report accuracy per attribute on the held-out frames, clean and after a VAE round trip (``codec``
    None: clean only)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    probe = AttributeProbe(init.width if init is not None else 48).to(device)
    if init is not None:
        probe.load_state_dict(init.state_dict())
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    keys = list(ALL_ATTRIBUTES)
    probe.train()
    for step in progress_bar(range(steps), desc="probe", enabled=progress):
        x, y = _batch(frames, labels, rng.integers(len(frames), size=batch_size), device)
        out = probe(_training_view(x, step, codec))
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
    views = [("clean", x)] + ([("vae", torch.cat([_vae_roundtrip(codec, c) for c in x.split(256)]))] if codec is not None else [])
    for name, images in views:
        pred = probe.predict(images)
        result[name] = {k: round(float((pred[k].to(y.device) == y[:, j]).float().mean()), 4)
                        for j, k in enumerate(ALL_ATTRIBUTES)}
    result["frames"] = len(idx)
    return result
