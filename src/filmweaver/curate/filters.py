"""Which detected shots become training data: pure decisions on a shot's sampled frames, each with the
reason a dropped shot was dropped (for the provenance and the report)."""

from __future__ import annotations

import torch

from filmweaver.curate.config import Filters


def too_short(frames: int, fps: float, cfg: Filters) -> str | None:
    seconds = frames / fps if fps else 0.0
    return f"shorter than {cfg.min_shot_seconds:g} s ({seconds:.2f} s)" if seconds < cfg.min_shot_seconds else None


def too_crowded(people_per_frame: list[int], cfg: Filters) -> str | None:
    """``people_per_frame``: the detector's count in each sampled frame; the most in any frame counts."""
    most = max(people_per_frame, default=0)
    return f"{most} people (more than {cfg.max_people})" if most > cfg.max_people else None


def static_change(samples: torch.Tensor) -> float:
    """Mean absolute change between consecutive sampled frames ``[N, 3, H, W]`` in [0, 1]."""
    if len(samples) < 2:
        return 0.0
    return float((samples[1:] - samples[:-1]).abs().mean())


def is_static(samples: torch.Tensor, cfg: Filters) -> str | None:
    if not cfg.drop_static:
        return None
    change = static_change(samples)
    return f"static (change {change:.4f} < {cfg.static_threshold:g})" if change < cfg.static_threshold else None


def duplicate_of(embedding: torch.Tensor, kept: list[tuple[int, torch.Tensor]], cfg: Filters) -> str | None:
    """``embedding [D]`` (unit) against the kept shots' ``(number, embedding)``."""
    if not cfg.drop_duplicates or not kept:
        return None
    sims = torch.stack([e for _, e in kept]) @ embedding
    best = int(sims.argmax())
    if float(sims[best]) >= cfg.duplicate_similarity:
        return f"near-duplicate of shot {kept[best][0]} (cosine {float(sims[best]):.3f})"
    return None
