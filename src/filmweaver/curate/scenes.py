"""Scene clustering: consecutive shots grouped by the similarity of their pictures.

Walking the shots in order, a shot joins the current scene when its embedding's cosine to one of the
scene's last ``window`` shots reaches ``similarity`` and the scene has fewer than ``max_shots``;
otherwise it opens a new scene. A scene of fewer than ``min_shots`` is not a multi-shot sample: it is
returned with the others and marked by the caller.
"""

from __future__ import annotations

import torch

from filmweaver.curate.config import Scenes


def group_scenes(embeddings: torch.Tensor, cfg: Scenes) -> list[list[int]]:
    """``embeddings [N, D]`` (unit rows, in shot order) -> scenes as lists of shot positions."""
    scenes: list[list[int]] = []
    for i in range(len(embeddings)):
        if scenes and len(scenes[-1]) < cfg.max_shots:
            recent = embeddings[scenes[-1][-cfg.window:]]
            if float((recent @ embeddings[i]).max()) >= cfg.similarity:
                scenes[-1].append(i)
                continue
        scenes.append([i])
    return scenes


def scene_labels(scenes: list[list[int]], count: int) -> list[int]:
    """Each shot's scene number (for comparing a grouping with the truth)."""
    labels = [-1] * count
    for k, members in enumerate(scenes):
        for i in members:
            labels[i] = k
    return labels
