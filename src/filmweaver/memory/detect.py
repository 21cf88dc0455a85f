"""Where the entities of a frame are: detectors, and naming what they find.

A detector finds boxes of a kind of thing (people, faces); :func:`assign_boxes` names them with the
shot's scheduled entities by comparing each box's crop with each entity's description (CLIP image
against text, one box per entity at most, the best overall assignment). The bank keeps the named
boxes of every keyframe: the ``entity`` policy prefers an entity's largest, least crowded
appearance, and the evaluation compares an entity's crops across shots.

Built in, running offline from the weights OpenCV's wheel ships: ``opencv-hog`` (people, HOG + linear
SVM) and ``opencv-face`` (frontal faces, Haar cascade). Any other detector (OWL-ViT, GroundingDINO,
...) plugs in as ``package.module:factory`` returning an :class:`EntityDetector`, loading its weights
from a hub id or a path the user gives.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch


@dataclass(frozen=True)
class Box:
    """``(x0, y0, x1, y1)`` as fractions of the frame's width and height; ``score`` the detector's."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 1.0

    @property
    def area(self) -> float:
        return max(0.0, self.x1 - self.x0) * max(0.0, self.y1 - self.y0)

    def as_list(self) -> list[float]:
        return [round(v, 4) for v in (self.x0, self.y0, self.x1, self.y1)]

    def crop(self, image: torch.Tensor) -> torch.Tensor:
        """The box of ``image [3, H, W]`` (at least one pixel)."""
        h, w = image.shape[1:]
        x0, x1 = int(self.x0 * w), max(int(self.x0 * w) + 1, int(round(self.x1 * w)))
        y0, y1 = int(self.y0 * h), max(int(self.y0 * h) + 1, int(round(self.y1 * h)))
        return image[:, y0:y1, x0:x1]


class EntityDetector(Protocol):
    """``detect(images [N, 3, H, W] in [0, 1]) -> boxes per image``."""

    name: str

    def detect(self, images: torch.Tensor) -> list[list[Box]]: ...


def _cv2():
    """OpenCV, imported where a detector is used (the engine and the trainer run without it)."""
    import cv2

    return cv2


def _gray_8bit(image: torch.Tensor) -> np.ndarray:
    cv2 = _cv2()
    rgb = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


class OpenCVPeopleDetector:
    """People: OpenCV's HOG descriptor with its bundled linear SVM (Dalal-Triggs), small frames upscaled
    to the 64x128 window it needs, overlapping boxes merged (non-maximum suppression)."""

    name = "opencv-hog"

    def __init__(self, min_score: float = 0.3):
        cv2 = _cv2()
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self.min_score = min_score

    def detect(self, images: torch.Tensor) -> list[list[Box]]:
        cv2 = _cv2()
        out = []
        for image in images:
            gray = _gray_8bit(image)
            h, w = gray.shape
            scale = max(1.0, 160 / min(h, w))
            if scale > 1:
                gray = cv2.resize(gray, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_LINEAR)
            rects, weights = self.hog.detectMultiScale(gray, winStride=(8, 8), padding=(8, 8), scale=1.05)
            boxes = [(x, y, x + bw, y + bh, float(s)) for (x, y, bw, bh), s in zip(rects, np.ravel(weights), strict=True)
                     if s >= self.min_score]
            keep = cv2.dnn.NMSBoxes([b[:2] + (b[2] - b[0], b[3] - b[1]) for b in boxes], [b[4] for b in boxes],
                                    self.min_score, 0.4) if boxes else []
            H, W = gray.shape
            out.append([Box(boxes[i][0] / W, boxes[i][1] / H, boxes[i][2] / W, boxes[i][3] / H, boxes[i][4])
                        for i in np.ravel(keep)])
        return out


class OpenCVFaceDetector:
    """Frontal faces: OpenCV's bundled Haar cascade (Viola-Jones)."""

    name = "opencv-face"

    def __init__(self, min_neighbors: int = 4):
        cv2 = _cv2()
        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        if self.cascade.empty():
            raise RuntimeError("OpenCV's frontal-face cascade did not load (opencv-python-headless < 5 ships it)")
        self.min_neighbors = min_neighbors

    def detect(self, images: torch.Tensor) -> list[list[Box]]:
        out = []
        for image in images:
            gray = _gray_8bit(image)
            h, w = gray.shape
            found = self.cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=self.min_neighbors,
                                                  minSize=(max(8, w // 40), max(8, h // 40)))
            out.append([Box(x / w, y / h, (x + bw) / w, (y + bh) / h) for x, y, bw, bh in found])
        return out


def make_detector(name: str, model: str | None = None, device: str = "cpu") -> EntityDetector | None:
    """``none``, ``opencv-hog``, ``opencv-face``, or a plug-in ``package.module:factory`` called as
    ``factory(model=..., device=...)`` (``model``: a hub id or a local directory)."""
    if name == "none":
        return None
    if name == "opencv-hog":
        return OpenCVPeopleDetector()
    if name == "opencv-face":
        return OpenCVFaceDetector()
    if ":" in name:
        module, factory = name.split(":", 1)
        return getattr(importlib.import_module(module), factory)(model=model, device=device)
    raise ValueError(f"entity detector {name!r}: expected none, opencv-hog, opencv-face or package.module:factory")


def assign_boxes(similarity: torch.Tensor, min_similarity: float = -1.0) -> dict[int, int]:
    """The best one-to-one naming of boxes: ``similarity [boxes, entities]`` -> ``{entity: box}``,
    maximising the summed similarity (exhaustive for the few boxes and entities of a shot, greedy
    beyond 8 of either); pairs under ``min_similarity`` stay unnamed."""
    n_box, n_ent = similarity.shape
    if n_box == 0 or n_ent == 0:
        return {}
    sim = similarity.tolist()
    if max(n_box, n_ent) <= 8:
        from itertools import permutations

        best, best_score = {}, -float("inf")
        if n_box >= n_ent:
            for boxes in permutations(range(n_box), n_ent):
                score = sum(sim[b][e] for e, b in enumerate(boxes))
                if score > best_score:
                    best, best_score = dict(enumerate(boxes)), score
        else:
            for ents in permutations(range(n_ent), n_box):
                score = sum(sim[b][e] for b, e in enumerate(ents))
                if score > best_score:
                    best, best_score = {e: b for b, e in enumerate(ents)}, score
    else:
        best, used = {}, set()
        for b, e in sorted(((b, e) for b in range(n_box) for e in range(n_ent)), key=lambda p: -sim[p[0]][p[1]]):
            if e not in best and b not in used:
                best[e] = b
                used.add(b)
    return {e: b for e, b in best.items() if sim[b][e] >= min_similarity}


def locate_entities(detector: EntityDetector, embedder, images: torch.Tensor, entities: list[str],
                    descriptions: dict[str, str]) -> list[dict[str, Box]]:
    """Per image ``[N, 3, H, W]``, each of ``entities`` its box (:func:`name_boxes` on the detector's)."""
    return [name_boxes(embedder, img, boxes, entities, descriptions)
            for img, boxes in zip(images, detector.detect(images), strict=True)]


def name_boxes(embedder, image: torch.Tensor, boxes: list[Box], entities: list[str],
               descriptions: dict[str, str]) -> dict[str, Box]:
    """Each of ``entities`` its box in ``image [3, H, W]``: a lone entity with a lone box takes it;
    otherwise crops and descriptions (``"name: description"``) are compared with the embedder."""
    if not boxes or not entities:
        return {}
    if len(boxes) == 1 and len(entities) == 1:
        return {entities[0]: boxes[0]}
    size = image.shape[1:]
    crops = torch.stack([torch.nn.functional.interpolate(b.crop(image)[None], size=size, mode="bilinear",
                                                         align_corners=False)[0] for b in boxes])
    texts = [f"{e}: {descriptions[e]}" if descriptions.get(e) else e for e in entities]
    sim = embedder.embed_images(crops) @ embedder.embed_texts(texts).T  # [boxes, entities]
    return {entities[e]: boxes[b] for e, b in assign_boxes(sim).items()}
