"""The models that score a film: loaders, each with its id and protocol, and the plug-in points.

Every judge loads from a hub id or a local path the user gives; nothing is downloaded unasked. A
metric whose weights are not configured is skipped (and listed as such) unless it was asked for by
name, in which case :class:`EvalSetupError` names the metric and the option to set.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn as nn

from filmweaver.io import load_tensor_file
from filmweaver.memory.embedder import CLIPEmbedder, ImageTextEmbedder


class EvalSetupError(ValueError):
    """A metric cannot run as configured (missing weights, package or plug-in)."""


def load_clip_judge(spec: str, device: str = "cpu") -> CLIPEmbedder:
    """``"builtin"``: the built-in synth-small model's CLIP (fits its 64x64 world only); otherwise a
    CLIP hub id or local directory (e.g. ``openai/clip-vit-large-patch14``)."""
    if spec == "builtin":
        from filmweaver.models import BUILTIN_MODEL_DIR

        emb = CLIPEmbedder.from_pretrained(str(BUILTIN_MODEL_DIR / "embedder"), device=device)
        emb.model_id = "filmweaver-synth-small/embedder"
        return emb
    try:
        return CLIPEmbedder.from_pretrained(spec, device=device)
    except OSError as e:
        raise EvalSetupError(f"CLIP judge {spec!r} could not be loaded (set --clip to a local CLIP directory "
                             f"or a hub id you have cached): {e}") from e


class GroundTruthJudge(Protocol):
    """A judge that also knows the truth of some stories (the synthetic world's probe: a script with a
    ``ground_truth`` section). ``ground_truth`` returns ``({name: (value, count, protocol)}, records)``:
    the metrics and the per-shot rows they were computed from (kept in metrics.json, so a client can
    pool or pair shots across stories without judging them again)."""

    model_id: str

    def ground_truth(self, run_dir, script: dict, chunk_frames: int) -> tuple[dict[str, tuple], list[dict]]: ...


# The synthetic world's attribute probe is a plug-in like any user's: the library names its factory,
# it never imports the synthetic world (which is the lab's, built on the library).
BUILTIN_PROBE_JUDGE = "filmweaver.synth.judge:load_probe_judge"


def load_probe_judge(spec: str, device: str = "cpu"):
    """``--probe``: ``"builtin"`` (the shipped model's probe), a probe directory, or a plug-in
    ``package.module:factory`` taking ``device``."""
    if ":" in spec and not Path(spec).exists():
        return load_plugin(spec, "probe judge", "--probe", device)
    return import_factory(BUILTIN_PROBE_JUDGE, "probe judge", "--probe")(spec, device=device)


class VideoTextEmbedder(Protocol):
    """A video-level judge such as ViCLIP: ``embed_videos`` takes ``[T, 3, H, W]`` clips in [0, 1]."""

    model_id: str

    def embed_videos(self, videos: list[torch.Tensor]) -> torch.Tensor: ...

    def embed_texts(self, texts: list[str]) -> torch.Tensor: ...


def import_factory(spec: str, what: str, option: str):
    """``"package.module:factory"`` -> the factory, or a one-line :class:`EvalSetupError`."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise EvalSetupError(f"{what}: {option} must look like 'package.module:factory', got {spec!r}")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise EvalSetupError(f"{what}: cannot import {spec!r} given by {option}: {e}") from e


def load_plugin(spec: str, what: str, option: str, device: str = "cpu"):
    """``"package.module:factory"`` -> ``factory(device=device)`` (a user's own ViCLIP or detector)."""
    return import_factory(spec, what, option)(device=device)


class AestheticScorer:
    """LAION aesthetic predictor, VBench protocol: CLIP ViT-L/14 image embedding (unit norm) ->
    linear head (``sa_0_4_vit_l_14_linear.pth``: weight ``[1, 768]``, bias ``[1]``) -> score / 10.
    VBench averages over a video's frames, then over videos."""

    protocol = "LAION aesthetic linear head on CLIP ViT-L/14 image embeddings, score/10, mean over frames then videos (VBench)"

    def __init__(self, clip: CLIPEmbedder, head: nn.Linear, head_id: str):
        self.clip, self.head, self.model_id = clip, head.eval(), f"{clip.model_id} + {head_id}"

    @classmethod
    def load(cls, clip_spec: str, head_path: str, device: str = "cpu") -> AestheticScorer:
        path = Path(head_path)
        if not path.is_file():
            raise EvalSetupError(f"aesthetic: head weights {path} not found (set --aesthetic-head to the LAION "
                                 "linear head file, e.g. sa_0_4_vit_l_14_linear.pth or .safetensors)")
        state = {k.removeprefix("linear.").removeprefix("layers.0."): v for k, v in load_tensor_file(path).items()}
        if set(state) != {"weight", "bias"} or state["weight"].ndim != 2 or state["weight"].shape[0] != 1:
            raise EvalSetupError(f"aesthetic: {path} is not a linear head (expected 'weight' [1, D] and 'bias' [1], "
                                 f"got {sorted(state)})")
        clip = load_clip_judge(clip_spec, device)
        dim = clip.model.config.projection_dim
        if state["weight"].shape[1] != dim:
            raise EvalSetupError(f"aesthetic: head {path} takes {state['weight'].shape[1]}-d embeddings but "
                                 f"{clip_spec} gives {dim}-d (the LAION head needs CLIP ViT-L/14: set --aesthetic-clip)")
        head = nn.Linear(dim, 1)
        head.load_state_dict(state)
        return cls(clip, head, path.name)

    @torch.no_grad()
    def score(self, frames: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` -> ``[N]`` aesthetic score / 10."""
        emb = self.clip.embed_images(frames)
        return self.head(emb).squeeze(-1) / 10.0


@dataclass
class InceptionJudge:
    """Inception Score through torchmetrics; ``classifier`` maps uint8 ``[N, 3, H, W]`` to class logits."""

    classifier: nn.Module
    model_id: str
    protocol: str = "torchmetrics InceptionScore on uint8 frames, logits of the given classifier"

    @classmethod
    def load(cls, weights: str, device: str = "cpu") -> InceptionJudge:
        path = Path(weights)
        if not path.is_file():
            raise EvalSetupError(f"inception_score: weights {path} not found (set --inception to the local "
                                 "weights-inception-2015-12-05-6726825d.pth file of torch-fidelity)")
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as e:
            raise EvalSetupError("inception_score needs torch-fidelity (pip install 'filmweaver[eval]'; it brings "
                                 "torchvision) to build the FID Inception v3 around --inception") from e

        class _Logits(nn.Module):
            def __init__(self):
                super().__init__()
                self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["logits_unbiased"],
                                                       feature_extractor_weights_path=str(path))

            def forward(self, x):
                return self.net(x)[0]

        return cls(_Logits().eval().to(device), f"inception-v3-compat ({path.name})",
                   "torchmetrics InceptionScore (splits=1) with torch-fidelity's FID Inception v3, logits_unbiased")

    @torch.no_grad()
    def score(self, frames: torch.Tensor) -> tuple[float, float]:
        import warnings

        from torchmetrics.image.inception import InceptionScore

        with warnings.catch_warnings():  # "features kept in a buffer": we score a few frames per shot
            warnings.simplefilter("ignore", UserWarning)
            metric = InceptionScore(feature=self.classifier, splits=1, normalize=True)
        dev = next(self.classifier.parameters(), torch.zeros(0)).device
        for chunk in frames.split(64):
            metric.update(chunk.float().clamp(0, 1).to(dev))
        with warnings.catch_warnings():  # std over a single split is undefined (nan); we report 0
            warnings.simplefilter("ignore", UserWarning)
            mean, std = metric.compute()
        std = torch.nan_to_num(std)
        return float(mean), float(std)


__all__ = ["AestheticScorer", "EvalSetupError", "ImageTextEmbedder", "InceptionJudge",
           "GroundTruthJudge", "VideoTextEmbedder", "load_clip_judge", "load_plugin", "load_probe_judge"]
