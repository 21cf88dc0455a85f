"""The project directory: everything a generated film consists of, and the manifest that indexes it.

    DIR/
      manifest.json          shots, seeds, settings, model ids, timings, memory per shot
      story.json             the script the project was made from (regenerate/extend read it)
      film.mp4               all shots in order
      storyboard.png         contact sheet: first / middle / last frame of every shot
      memory.png             what the shot cache held for every shot, with similarities
      shots/shot_001.mp4     one H.264 mp4 per shot
      shots/shot_001.safetensors   the shot's latents and last frames (extend and continue from them)
      keyframes/shot001_f0000.png  the keyframes selected from every shot
      memory/bank.json, bank.safetensors, *.png   the keyframe bank after the last finished shot

Every file is written atomically; the manifest is written last, after a shot's files, so a run
killed at any point resumes from the last finished shot.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from filmweaver.io import write_json

MANIFEST_FORMAT = "filmweaver.project/1"


class ProjectError(RuntimeError):
    pass


class Project:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.manifest_path = self.root / "manifest.json"
        self.manifest: dict = {}
        if self.manifest_path.is_file():
            self.manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            if self.manifest.get("format") != MANIFEST_FORMAT:
                raise ProjectError(f"{self.manifest_path}: not a filmweaver project manifest (format "
                                   f"{self.manifest.get('format')!r}, expected {MANIFEST_FORMAT!r})")

    # -- paths ---------------------------------------------------------------------------------------
    @property
    def story_path(self) -> Path:
        return self.root / "story.json"

    @property
    def bank_dir(self) -> Path:
        return self.root / "memory"

    def shot_video(self, index: int) -> Path:
        return self.root / "shots" / f"shot_{index + 1:03d}.mp4"

    def shot_state(self, index: int) -> Path:
        return self.root / "shots" / f"shot_{index + 1:03d}.safetensors"

    def keyframe_png(self, name: str) -> Path:
        return self.root / "keyframes" / f"{name}.png"

    @property
    def film_path(self) -> Path:
        return self.root / "film.mp4"

    @property
    def storyboard_path(self) -> Path:
        return self.root / "storyboard.png"

    @property
    def memory_sheet_path(self) -> Path:
        return self.root / "memory.png"

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    # -- manifest ------------------------------------------------------------------------------------
    @property
    def exists(self) -> bool:
        """True once the project has been started (its manifest saved at least once)."""
        return "format" in self.manifest

    @property
    def shots(self) -> list[dict]:
        return self.manifest.get("shots", [])

    def shot_record(self, index: int) -> dict | None:
        for rec in self.shots:
            if rec["index"] == index:
                return rec
        return None

    def set_shot_record(self, record: dict) -> None:
        shots = [r for r in self.shots if r["index"] != record["index"]] + [record]
        self.manifest["shots"] = sorted(shots, key=lambda r: r["index"])

    def is_done(self, index: int, fingerprint: str | None = None) -> bool:
        rec = self.shot_record(index)
        if rec is None or rec.get("status") != "done":
            return False
        if fingerprint is not None and rec.get("fingerprint") != fingerprint:
            return False
        return self.shot_video(index).is_file() and self.shot_state(index).is_file()

    def mark_stale_after(self, index: int, reason: str) -> list[int]:
        """Shots after ``index`` were conditioned on the old version of it: mark them stale."""
        marked = []
        for rec in self.shots:
            if rec["index"] > index and rec.get("status") == "done":
                rec["status"] = "stale"
                rec["stale_reason"] = reason
                marked.append(rec["index"])
        return marked

    def save(self) -> None:
        self.manifest["format"] = MANIFEST_FORMAT
        self.manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_json(self.manifest_path, self.manifest)
