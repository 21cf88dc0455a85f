"""The synthetic world's judge: its attribute probe as an image-text embedder, and the ground-truth
metrics of synthetic stories. A plug-in of ``filmweaver.eval`` (``--probe``), which never imports it."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from filmweaver.eval.judges import EvalSetupError
from filmweaver.models import BUILTIN_MODEL_DIR
from filmweaver.synth.cast_metrics import probe_reader, project_cast_records, summarize_cast
from filmweaver.synth.evaluate import evaluate_project, summarize
from filmweaver.synth.probe import AttributeProbe, CastProbe
from filmweaver.synth.world import ALL_ATTRIBUTES


class ProbeJudge:
    """The synthetic world's attribute probe as an image-text embedder: an image maps to its predicted
    attribute distributions, a text to the attribute words it names (one-hot), both concatenated over
    the attributes and unit-normalised, so cosines measure attribute agreement."""

    model_id = "filmweaver-synth-probe"

    def __init__(self, probe, cast_probe=None):
        self.probe = probe
        self.cast_probe = cast_probe  # reads who is where in cast stories (probe/cast beside the probe)
        self.attributes = ALL_ATTRIBUTES

    @classmethod
    def load(cls, spec: str, device: str = "cpu") -> ProbeJudge:
        path = BUILTIN_MODEL_DIR / "probe" if spec == "builtin" else Path(spec)
        if not (path / "probe.json").is_file():
            raise EvalSetupError(f"probe judge: {path} has no probe.json (set --probe to a trained probe directory)")
        cast = CastProbe.load(path / "cast", device=device) if (path / "cast" / "probe.json").is_file() else None
        return cls(AttributeProbe.load(path, device=device), cast)

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        dev = next(self.probe.parameters()).device
        x = F.interpolate(images.float(), size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
        outs = []
        for chunk in x.split(256):
            logits = self.probe(chunk.to(dev))
            outs.append(torch.cat([logits[k].softmax(-1) for k in self.attributes], dim=-1).cpu())
        return F.normalize(torch.cat(outs), dim=-1)

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        rows = []
        for text in texts:
            words = set(text.lower().replace(",", " ").replace(".", " ").split())
            row = [float(v in words) for values in self.attributes.values() for v in values]
            rows.append(row)
        return F.normalize(torch.tensor(rows), dim=-1)


    def ground_truth(self, run_dir, script: dict, chunk_frames: int) -> tuple[dict[str, tuple], list[dict]]:
        """Identity, location and prompt adherence against a synthetic story's ground truth (and, for a
        cast story with a cast probe, per-character identity, swaps and presence); with the per-shot
        records of :func:`~filmweaver.synth.evaluate.evaluate_project` (in a cast story each with its
        characters' records of :func:`~filmweaver.synth.cast_metrics.cast_records` as ``cast``)."""
        records = evaluate_project(run_dir, script, self.probe, chunk_frames)
        summary = summarize(records)
        out = {f"gt_{key}": (summary[key], summary.get(f"{key.split('_')[0]}_shots"),
                             f"synthetic ground truth: {key} (filmweaver.synth.evaluate)")
               for key in ("identity", "identity_all_attributes", "location", "adherence")}
        if self.cast_probe is not None and script.get("ground_truth", {}).get("cast"):
            cast_rows = project_cast_records(run_dir, script, probe_reader(self.cast_probe))
            for r in records:  # each shot record carries its characters' records (the ablation pools them)
                r["cast"] = [c for c in cast_rows if c["shot"] == r["shot"]]
            cast = summarize_cast(cast_rows)
            for key, n in (("character_identity", "appearances"), ("character_identity_all_attributes", "appearances"),
                           ("swap_rate", "multi_character_appearances"), ("presence", "shots")):
                out[f"gt_{key}"] = (cast[key], cast[n], f"synthetic ground truth, cast probe: {key} "
                                    "(filmweaver.synth.cast_metrics)")
        return out, records


def load_probe_judge(spec: str = "builtin", device: str = "cpu") -> ProbeJudge:
    """The ``--probe`` plug-in: ``"builtin"`` or a trained probe directory."""
    return ProbeJudge.load(spec, device)
