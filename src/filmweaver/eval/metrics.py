"""The metric formulas, on embeddings and frames (no models here; see :mod:`filmweaver.eval.judges`).

Conventions: embeddings are ``[N, D]`` and unit-norm (every judge returns them so); similarities are
cosines in [-1, 1]; "CLIPScore" is ``100 * cos`` as FilmWeaver reports it.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F


def mean_pairwise_similarity(embeddings: torch.Tensor) -> float | None:
    """Mean cosine over all unordered pairs ``i < j`` of ``embeddings [N, D]`` (None if N < 2)."""
    n = embeddings.shape[0]
    if n < 2:
        return None
    e = F.normalize(embeddings.float(), dim=-1)
    sim = e @ e.T
    iu = torch.triu_indices(n, n, offset=1)
    return float(sim[iu[0], iu[1]].mean())


def pair_similarities(embeddings: torch.Tensor) -> dict[tuple[int, int], float]:
    """Cosine of every unordered pair ``(i, j), i < j``."""
    e = F.normalize(embeddings.float(), dim=-1)
    sim = e @ e.T
    return {(i, j): float(sim[i, j]) for i, j in itertools.combinations(range(e.shape[0]), 2)}


def top_related_pairs(text_embeddings: torch.Tensor, k: int = 10) -> list[tuple[int, int]]:
    """The ``k`` shot pairs whose prompts are most alike (StoryMem's "top-10" consistency), most
    related first; ties broken by pair order."""
    sims = pair_similarities(text_embeddings)
    return [p for p, _ in sorted(sims.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def mean_over_pairs(embeddings: torch.Tensor, pairs: list[tuple[int, int]]) -> float | None:
    if not pairs:
        return None
    sims = pair_similarities(embeddings)
    return float(sum(sims[p] for p in pairs) / len(pairs))


def clip_score(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
    """Row-wise ``100 * cos(image_i, text_i)``: ``[N, D], [N, D] -> [N]``."""
    return 100.0 * (F.normalize(image_embeddings.float(), dim=-1) * F.normalize(text_embeddings.float(), dim=-1)).sum(-1)


def video_embedding(frame_embeddings: torch.Tensor) -> torch.Tensor:
    """Frame-average video embedding (the CLIP stand-in for ViCLIP): ``[T, D] -> [D]`` unit norm."""
    return F.normalize(F.normalize(frame_embeddings.float(), dim=-1).mean(0), dim=-1)


def inception_score_from_probs(probs: torch.Tensor, splits: int = 1) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) over ``probs [N, K]``, mean and std over ``splits``
    (the formula torchmetrics' InceptionScore computes from the classifier's logits)."""
    out = []
    for p in probs.float().chunk(splits):
        py = p.mean(0, keepdim=True)
        kl = (p * (torch.log(p.clamp_min(1e-12)) - torch.log(py.clamp_min(1e-12)))).sum(1).mean()
        out.append(torch.exp(kl))
    s = torch.stack(out)
    return float(s.mean()), float(s.std()) if len(out) > 1 else 0.0


def frame_changes(frames: torch.Tensor) -> torch.Tensor:
    """Mean absolute change between consecutive frames: ``[T, 3, H, W] in [0, 1] -> [T - 1]``."""
    return (frames[1:].float() - frames[:-1].float()).abs().mean(dim=(1, 2, 3))


def smoothness(frames: torch.Tensor) -> float | None:
    """Within-shot smoothness: ``1 - mean frame-to-frame change`` (1 = still, lower = jumpier)."""
    if frames.shape[0] < 2:
        return None
    return float(1.0 - frame_changes(frames).mean())


def seam_ratio_at(frames: torch.Tensor, chunk_starts: list[int]) -> float | None:
    """``frames [T, 3, H, W]``: mean change across chunk boundaries / median change inside chunks
    (1.0 = seamless). ``chunk_starts``: frame indices where a new chunk begins; the boundary is the
    step from the frame before each into it."""
    d = frame_changes(frames)  # d[t]: frame t -> t + 1
    boundary = [t - 1 for t in chunk_starts if 0 < t < len(frames)]
    inside = [t for t in range(len(d)) if t not in boundary]
    if not boundary or not inside:
        return None
    return float(d[boundary].mean() / d[inside].median().clamp_min(1e-4))


def seam_ratio(frames: torch.Tensor, chunk_pixel_frames: int) -> float | None:
    """:func:`seam_ratio_at` for chunks of ``chunk_pixel_frames`` frames each."""
    return seam_ratio_at(frames, list(range(chunk_pixel_frames, frames.shape[0], chunk_pixel_frames)))


# recurrence-gap buckets (shots since the entity was last seen), as EntityBench plots decay with distance
GAP_BUCKETS = ((1, 1), (2, 3), (4, 7), (8, 15), (16, 31), (32, 10_000))


def recurrence_points(appearances: list[tuple[int, torch.Tensor]]) -> list[tuple[int, int, float]]:
    """EntityBench's cross-shot consistency for one entity: its appearances ``[(shot index, crop
    embeddings [N, D])]`` -> for every appearance after the first, ``(shot, recurrence gap, mean cosine
    to the first appearance's crops)``; the gap counts shots since the entity was last seen."""
    ordered = sorted((s, e) for s, e in appearances if e.shape[0])
    if len(ordered) < 2:
        return []
    first = ordered[0][1]
    points, last = [], ordered[0][0]
    for shot, emb in ordered[1:]:
        if shot == last:
            continue
        points.append((shot, shot - last, float((emb @ first.T).mean())))
        last = shot
    return points


def gap_curve(points: list[tuple[int, int, float]], buckets=GAP_BUCKETS) -> list[dict]:
    """Mean similarity per recurrence-gap bucket: ``[{"gap": "4-7", "mean": .., "n": ..}]`` (empty buckets
    left out)."""
    out = []
    for lo, hi in buckets:
        sims = [s for _, g, s in points if lo <= g <= hi]
        if sims:
            out.append({"gap": gap_label(lo, hi), "mean": sum(sims) / len(sims), "n": len(sims)})
    return out


def gap_label(lo: int, hi: int) -> str:
    return f"{lo}" if lo == hi else (f"{lo}+" if hi >= 10_000 else f"{lo}-{hi}")


def boundary_f1(predicted: list[float], true: list[float], tolerance: float) -> dict:
    """Precision, recall and F1 of detected shot boundaries (frame positions) against the true ones: a
    prediction within ``tolerance`` frames of a true boundary matches it, each at most once (matched in
    order of distance, so one close prediction is not spent on a farther boundary)."""
    pairs = sorted((abs(p - t), i, j) for i, p in enumerate(predicted) for j, t in enumerate(true)
                   if abs(p - t) <= tolerance)
    used_p, used_t = set(), set()
    for _, i, j in pairs:
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
    hits = len(used_p)
    precision = hits / len(predicted) if predicted else float(not true)
    recall = hits / len(true) if true else float(not predicted)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "matched": hits, "predicted": len(predicted),
            "true": len(true), "tolerance_frames": tolerance}


def adjusted_rand_index(labels_a: list, labels_b: list) -> float:
    """Hubert & Arabie's adjusted Rand index of two labellings of the same items: 1 for the same
    partition, about 0 for chance agreement (1.0 when both put every item alone or all together)."""
    from collections import Counter
    from math import comb

    if len(labels_a) != len(labels_b):
        raise ValueError(f"two labellings of different lengths ({len(labels_a)} vs {len(labels_b)})")
    n = len(labels_a)
    pairs = sum(comb(c, 2) for c in Counter(zip(labels_a, labels_b, strict=True)).values())
    a = sum(comb(c, 2) for c in Counter(labels_a).values())
    b = sum(comb(c, 2) for c in Counter(labels_b).values())
    total = comb(n, 2)
    expected = a * b / total if total else 0.0
    top = (a + b) / 2
    return 1.0 if top == expected else (pairs - expected) / (top - expected)
