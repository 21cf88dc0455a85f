"""Reading source videos with PyAV: probing, and streaming their frames (bounded memory at any length).

Every problem with a file becomes a :class:`VideoError` of one line naming the file: missing, empty,
not a video, unreadable, or cut short (a truncated file decodes up to where it breaks; the frames
before are kept and the report says where it stopped).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from filmweaver.progress import progress_bar

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts")


class VideoError(ValueError):
    """A source video that cannot be used (or not all of it), in one line naming the file."""


@dataclass(frozen=True)
class VideoInfo:
    path: str
    fps: float
    width: int
    height: int
    frames: int | None  # as the container states it (None: unknown until decoded)
    duration_s: float | None

    def to_dict(self) -> dict:
        return {"path": self.path, "fps": self.fps, "width": self.width, "height": self.height,
                "frames": self.frames, "duration_s": self.duration_s}


def probe_video(path: str | Path) -> VideoInfo:
    """The video's stream facts, without decoding it; a :class:`VideoError` for a file that is not one."""
    import av

    p = Path(path)
    if not p.is_file():
        raise VideoError(f"{p}: no such file")
    if p.stat().st_size == 0:
        raise VideoError(f"{p}: empty file (0 bytes)")
    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise VideoError(f"{p}: no video stream (not a video)")
            s = container.streams.video[0]
            fps = float(s.average_rate or s.guessed_rate or 0)
            duration = float(s.duration * s.time_base) if s.duration else (
                container.duration / 1_000_000 if container.duration else None)
            frames = int(s.frames) if s.frames else (round(duration * fps) if duration and fps else None)
            if not fps or not s.codec_context.width:
                raise VideoError(f"{p}: the video stream has no frame rate or size (damaged header)")
            return VideoInfo(str(p), fps, s.codec_context.width, s.codec_context.height, frames, duration)
    except av.error.FFmpegError as e:
        raise VideoError(f"{p}: not a readable video ({type(e).__name__}: {e.strerror or e})") from None


class FrameStream:
    """The frames of one video, decoded once, as ``[H, W, 3]`` uint8 arrays, optionally resized to
    ``size = (width, height)`` by FFmpeg's scaler. After iterating, ``decoded`` counts the frames and
    ``error`` says why decoding stopped early (``None``: the whole file decoded)."""

    def __init__(self, path: str | Path, size: tuple[int, int] | None = None, progress: str | None = None,
                 total: int | None = None):
        self.path, self.size = str(path), size
        self.progress, self.total = progress, total  # a progress bar's label (None: none), frames expected
        self.decoded = 0
        self.error: str | None = None

    def __iter__(self) -> Iterator[np.ndarray]:
        import av

        self.decoded, self.error = 0, None
        bar = progress_bar(total=self.total, desc=self.progress, unit="frame", leave=False, enabled=bool(self.progress))
        try:
            with av.open(self.path) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    if self.size is not None:
                        frame = frame.reformat(width=self.size[0], height=self.size[1], format="rgb24")
                        arr = frame.to_ndarray()
                    else:
                        arr = frame.to_ndarray(format="rgb24")
                    self.decoded += 1
                    bar.update(1)
                    yield arr
        except av.error.FFmpegError as e:
            self.error = f"decoding stopped after frame {self.decoded} ({type(e).__name__}: {e.strerror or e})"
        finally:
            bar.close()


def find_videos(inputs: list[str | Path]) -> list[Path]:
    """The video files named, and those directly inside the directories named (sorted; by suffix)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES)
        else:
            out.append(p)  # a named file is tried whatever its suffix; probe_video says what is wrong
    return out
