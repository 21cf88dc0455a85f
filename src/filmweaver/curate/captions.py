"""Captioning a scene: the protocol the pipeline calls, and how a captioner is named.

A captioner sees a scene's shots (a few frames each) and returns :class:`SceneCaptions`: one prompt per
shot and, when it names characters, their sheet (name, description) and who each shot shows. Captioned
as a group, a character keeps one description across the scene's shots; per shot, each caption stands
alone. ``validate`` checks one shot's caption against its frames again: kept, refined, or rejected
with its reason (then the sample is dropped and the report says why).

``captions.captioner``: ``none``; a transformers vision-language model, by hub id or local directory
(:class:`VLMCaptioner`: Qwen2.5-VL / Qwen3-VL, SmolVLM, LLaVA... anything ``AutoModelForImageTextToText``
loads with a chat template); or ``package.module:factory`` (called with ``device``), such as
``filmweaver.synth.captioner:probe_captioner`` (the synthetic world's attribute probe: not a
vision-language model, named as such, which makes the whole pipeline checkable against ground truth).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from filmweaver.curate.config import Captions
from filmweaver.eval.judges import load_plugin
from filmweaver.script import names_in


class CaptionError(ValueError):
    """A captioner answer the pipeline cannot use: the scene is dropped with this reason."""


@dataclass
class SceneCaptions:
    shots: list[str]  # one prompt per shot, in order
    characters: list[dict] = field(default_factory=list)  # [{"name", "description"}]
    shot_characters: list[list[str]] = field(default_factory=list)  # per shot, the names it shows

    def entity_schedule(self) -> dict[str, dict]:
        """EntityBench's per-shot schedule (``"1:K"``: scene 1, shot K) from the names per shot."""
        return {f"1:{k + 1}": {"characters": names} for k, names in enumerate(self.shot_characters) if names}


@dataclass
class Verdict:
    caption: str | None  # the caption to keep (refined, or as it was); None: the shot is rejected
    note: str  # "ok", "refined: ...", or why it was rejected


class Captioner(Protocol):
    name: str

    def caption_scene(self, shots: list[torch.Tensor], cfg: Captions) -> SceneCaptions:
        """``shots``: per shot ``[F, 3, H, W]`` frames in [0, 1]."""
        ...

    def validate(self, frames: torch.Tensor, caption: str, cfg: Captions) -> Verdict: ...


def parse_group_answer(answer: str, shots: int) -> SceneCaptions:
    """The group prompt's JSON answer (``{"characters": [{"name", "description"}], "shots": [...]}``,
    possibly inside other text) as :class:`SceneCaptions`; a :class:`CaptionError` saying what is wrong."""
    start, end = answer.find("{"), answer.rfind("}")
    try:
        data = json.loads(answer[start:end + 1]) if start >= 0 < end else None
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise CaptionError(f"the captioner's answer is not the JSON asked for: {answer[:80]!r}")
    captions = data.get("shots")
    if not (isinstance(captions, list) and len(captions) == shots and all(isinstance(c, str) and c.strip()
                                                                          for c in captions)):
        raise CaptionError(f"the captioner described {len(captions) if isinstance(captions, list) else 'no'} "
                           f"shots, not {shots}")
    characters = [{"name": str(c["name"]).strip(), "description": str(c.get("description", "")).strip()}
                  for c in data.get("characters") or [] if isinstance(c, dict) and str(c.get("name", "")).strip()]
    names = [c["name"] for c in characters]
    return SceneCaptions([c.strip() for c in captions], characters, [names_in(c, names) for c in captions])


def _pil(frame: torch.Tensor) -> Image.Image:
    return Image.fromarray((frame.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy().astype(np.uint8))


class VLMCaptioner:
    """A transformers vision-language model (``AutoModelForImageTextToText`` + its processor's chat
    template), greedy decoding. A scene's frames go in one message, shot after shot."""

    def __init__(self, model_id: str, device: str = "cpu", dtype: torch.dtype | None = None):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        try:
            self.processor = AutoProcessor.from_pretrained(model_id)
            self.model = AutoModelForImageTextToText.from_pretrained(
                model_id, dtype=dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)).to(device).eval()
        except (OSError, ValueError) as e:
            raise ValueError(f"captioner {model_id!r}: could not load a vision-language model from it ({e})") from None
        self.name = f"vlm:{Path(model_id).name if Path(model_id).exists() else model_id}"

    @torch.no_grad()
    def ask(self, frames: list[torch.Tensor], prompt: str, max_new_tokens: int) -> str:
        content = [{"type": "image"} for _ in frames] + [{"type": "text", "text": prompt}]
        text = self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        inputs = self.processor(text=[text], images=[_pil(f) for f in frames], return_tensors="pt").to(self.model.device)
        out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return self.processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0].strip()

    def caption_scene(self, shots: list[torch.Tensor], cfg: Captions) -> SceneCaptions:
        if cfg.group:
            frames = [f for shot in shots for f in shot]
            return parse_group_answer(self.ask(frames, cfg.group_prompt.format(n=len(shots)), cfg.max_new_tokens),
                                      len(shots))
        captions = [self.ask(list(shot), cfg.shot_prompt, cfg.max_new_tokens) for shot in shots]
        if not all(captions):
            raise CaptionError("the captioner gave an empty caption")
        return SceneCaptions(captions)

    def validate(self, frames: torch.Tensor, caption: str, cfg: Captions) -> Verdict:
        answer = self.ask(list(frames), cfg.validate_prompt.format(caption=caption), cfg.max_new_tokens)
        head = answer.lower().lstrip(" '\"")
        if head.startswith("yes"):
            return Verdict(caption, "ok")
        if head.startswith("no"):
            refined = answer.split(":", 1)[1].strip().strip("'\"") if ":" in answer else ""
            return Verdict(refined, f"refined: {refined[:80]}") if refined else Verdict(
                None, "the model says the caption is wrong and gives no other")
        return Verdict(None, f"unreadable validation answer: {answer[:60]!r}")


def make_captioner(spec: str, device: str = "cpu") -> Captioner | None:
    """``none``, ``package.module:factory`` (called with ``device``), or a VLM's hub id / directory."""
    if spec == "none":
        return None
    if ":" in spec and not Path(spec).exists():
        return load_plugin(spec, "captioner", "captions.captioner", device)
    return VLMCaptioner(spec, device)
