"""Wan2.1-I2V's image conditioning: a CLIP vision tower whose penultimate hidden states join the text in
every block's cross-attention (the transformer's ``image_dim`` / ``added_kv_proj_dim``).

In a diffusers layout it is ``image_encoder/`` (a ``CLIPVisionModel``: ViT-H/14, 257 tokens of 1280 for
the released 480P/720P models) and ``image_processor/`` (a ``CLIPImageProcessor``), the pair
``WanImageToVideoPipeline.encode_image`` uses: ``image_encoder(**processor(image)).hidden_states[-2]``.
"""

from __future__ import annotations

from pathlib import Path

import torch


class WanImageEncoder:
    """``encode(images [N, 3, H, W] in [0, 1]) -> [N, L_img, image_dim]`` (the vision tower's
    penultimate hidden states, as Wan2.1-I2V was trained with)."""

    def __init__(self, model, processor, model_id: str = ""):
        self.model = model.eval()
        self.processor = processor
        self.model_id = model_id

    @classmethod
    def from_pretrained(cls, id_or_path: str, dtype: torch.dtype = torch.float32, device: str = "cpu") -> WanImageEncoder:
        from transformers import CLIPVisionModel

        try:  # the PIL processor: the same numbers with or without torchvision (which the fast one needs)
            from transformers import CLIPImageProcessorPil as Processor
        except ImportError:
            from transformers import CLIPImageProcessor as Processor
        root = Path(id_or_path)
        model = CLIPVisionModel.from_pretrained(id_or_path, subfolder="image_encoder", torch_dtype=dtype)
        processor = Processor.from_pretrained(id_or_path, subfolder="image_processor")
        return cls(model.to(device), processor, model_id=str(root / "image_encoder"))

    @property
    def device(self) -> torch.device:
        from filmweaver.offload import execution_device

        return execution_device(self.model) or next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        # the processor resizes, crops and normalises like the release pipeline (images already in [0, 1])
        pixels = self.processor(images=[im.permute(1, 2, 0).float().cpu().numpy() for im in images],
                                do_rescale=False, return_tensors="pt")["pixel_values"]
        out = self.model(pixel_values=pixels.to(self.device, self.model.dtype), output_hidden_states=True)
        return out.hidden_states[-2]

    def save_pretrained(self, root: str | Path) -> None:
        self.model.save_pretrained(Path(root) / "image_encoder")
        self.processor.save_pretrained(Path(root) / "image_processor")
