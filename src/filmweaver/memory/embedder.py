"""Joint image/text embeddings for keyframe selection and shot-cache retrieval.

Images everywhere in filmweaver's memory code are float tensors ``[N, 3, H, W]`` in ``[0, 1]``.
Embeddings are L2-normalised ``[N, D]`` float32, so a dot product is a cosine similarity.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@runtime_checkable
class ImageTextEmbedder(Protocol):
    """What memory needs from a vision-language model: both modalities in one normalised space."""

    model_id: str

    def embed_images(self, images: torch.Tensor, resize: str = "crop") -> torch.Tensor:
        """``[N, 3, H, W]`` in ``[0, 1]`` -> ``[N, D]``, unit norm. ``resize``: ``crop`` (shortest side,
        centre crop) or ``squash`` (the whole frame to the square input, as StoryMem does)."""
        ...

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """``N`` strings -> ``[N, D]``, unit norm."""
        ...


class CLIPEmbedder:
    """:class:`ImageTextEmbedder` over a transformers ``CLIPModel``.

    Preprocessing is done in torch (resize shortest side, centre crop, normalise) so that no
    torchvision is needed; mean/std/size come from the checkpoint's ``preprocessor_config.json`` when
    present, else the OpenAI CLIP constants.
    """

    def __init__(self, model, tokenizer, image_size: int | None = None, mean=OPENAI_CLIP_MEAN,
                 std=OPENAI_CLIP_STD, model_id: str = "clip", batch_size: int = 32):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_size = image_size or model.config.vision_config.image_size
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.model_id = model_id
        self.batch_size = batch_size
        self.max_text_length = min(
            getattr(tokenizer, "model_max_length", 77) or 77, model.config.text_config.max_position_embeddings
        )

    @classmethod
    def from_pretrained(cls, id_or_path: str, device: str | torch.device = "cpu", dtype=torch.float32) -> CLIPEmbedder:
        """Load from a hub id or a local directory (``config.json``, weights, tokenizer files)."""
        from transformers import AutoTokenizer, CLIPModel

        model = CLIPModel.from_pretrained(id_or_path, torch_dtype=dtype).to(device)
        tokenizer = AutoTokenizer.from_pretrained(id_or_path)
        mean, std, size = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, None
        pp = Path(id_or_path) / "preprocessor_config.json"
        if not pp.is_file():
            try:
                from huggingface_hub import hf_hub_download

                pp = Path(hf_hub_download(id_or_path, "preprocessor_config.json"))
            except Exception:  # no preprocessor config: the OpenAI constants are CLIP's own
                pp = None
        if pp is not None and pp.is_file():
            cfg = json.loads(pp.read_text())
            mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
            crop = cfg.get("crop_size")
            size = crop.get("height") if isinstance(crop, dict) else crop
        return cls(model, tokenizer, image_size=size, mean=mean, std=std, model_id=str(id_or_path))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def coverage(self, texts: list[str]):
        """:class:`~filmweaver.text.PromptCoverage` of ``texts`` under this CLIP's tokenizer."""
        from filmweaver.text import prompt_coverage

        return prompt_coverage(self.tokenizer, texts, self.max_text_length, clean=False)

    def preprocess(self, images: torch.Tensor, resize: str = "crop") -> torch.Tensor:
        s = self.image_size
        if resize == "squash":  # StoryMem: the whole frame, bilinear, to s x s
            x = F.interpolate(images.float(), size=(s, s), mode="bilinear", align_corners=False).clamp(0, 1)
            return (x - self.mean.to(x)) / self.std.to(x)
        if resize != "crop":
            raise ValueError(f"resize must be crop or squash, got {resize!r}")
        _, _, h, w = images.shape
        scale = s / min(h, w)
        nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
        x = F.interpolate(images.float(), size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
        top, left = (nh - s) // 2, (nw - s) // 2
        x = x[:, :, top : top + s, left : left + s].clamp(0, 1)
        return (x - self.mean.to(x)) / self.std.to(x)

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor, resize: str = "crop") -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        outs = []
        for chunk in images.split(self.batch_size):
            pix = self.preprocess(chunk.cpu(), resize).to(self.device, dtype)
            feats = self.model.get_image_features(pixel_values=pix)
            feats = getattr(feats, "pooler_output", feats)  # transformers 5 returns an output object
            outs.append(F.normalize(feats.float(), dim=-1).cpu())
        return torch.cat(outs) if outs else torch.zeros(0, self.model.config.projection_dim)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        inputs = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_text_length,
                                return_tensors="pt")
        feats = self.model.get_text_features(
            input_ids=inputs.input_ids.to(self.device), attention_mask=inputs.attention_mask.to(self.device)
        )
        feats = getattr(feats, "pooler_output", feats)
        return F.normalize(feats.float(), dim=-1).cpu()
