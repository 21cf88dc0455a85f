"""Progress of an engine operation, for callers that show it (the studio, a notebook): the engine calls
``on_progress(event)`` as a shot starts, after every denoising step, and as a shot is written. A callback
that raises stops the operation; what was finished stays (the manifest is written per shot)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    stage: str  # "shot" (starting) | "step" (one denoising step done) | "shot_done" (written)
    shot: int  # the shot's number (1-based)
    num_shots: int
    chunk: int | str | None = None  # the chunk's index in the shot (0-based), or "anchor"
    num_chunks: int | None = None
    step: int | None = None  # denoising steps done in this chunk (1-based)
    num_steps: int | None = None

    @property
    def fraction(self) -> float:
        """How far the shot is, 0..1 (a step's share of its chunk's share of the shot)."""
        if self.stage == "shot_done":
            return 1.0
        if self.step is None or not self.num_chunks:
            return 0.0
        chunk = self.chunk if isinstance(self.chunk, int) else 0
        return min(1.0, (chunk + self.step / max(1, self.num_steps or 1)) / self.num_chunks)

    def __str__(self) -> str:
        text = f"shot {self.shot}/{self.num_shots}"
        if self.stage == "shot_done":
            return text + " done"
        if self.step is not None:
            chunk = "anchor" if self.chunk == "anchor" else f"chunk {int(self.chunk) + 1}/{self.num_chunks}"
            text += f" · {chunk} · step {self.step}/{self.num_steps}"
        return text


ProgressCallback = Callable[[Progress], None]
