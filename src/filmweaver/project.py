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

      references/            the story's reference images, copied in (the project stands on its own)
      manifest.backup.json   a second copy of the manifest, read when the first is damaged

Every file is written atomically; the manifest is written last, after a shot's files, so a run
killed at any point resumes from the last finished shot. Each shot record lists its files with their
size and SHA-256: a shot whose files were damaged or removed is not done, and is generated again.
One process writes a project at a time (:class:`ProjectLock`); readers need no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path

from filmweaver.io import atomic_path, file_digest, json_text, write_json, write_text
from filmweaver.script import StoryScript, parse_story

MANIFEST_FORMAT = "filmweaver.project/1"
LOCK_FILE = ".filmweaver.lock"


class ProjectError(RuntimeError):
    pass


class ProjectLocked(ProjectError):
    """Another process is writing the project."""


class ProjectLock:
    """One writer per project: an exclusive ``flock`` on ``DIR/.filmweaver.lock``, released when the
    process ends however it ends (the kernel drops it), so a killed run never leaves a stale lock.

    Re-entrant within a process (the CLI takes it before loading models, the engine's operations take
    it again). A second process is refused at once with a message naming the holder."""

    _held: dict[str, list] = {}  # real path -> [fd, depth]

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def acquire(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise ProjectError(f"{self.root} is a file, not a project directory: choose another output path")
        self.root.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.root)
        if key in self._held:
            self._held[key][1] += 1
            return
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ProjectLocked(f"{self.root} is being written by {holder}: wait for it to finish, or write to "
                                "another directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"filmweaver pid {os.getpid()} (since {time.strftime('%H:%M:%S')})".encode(), 0)
        self._held[key] = [fd, 1]

    def release(self) -> None:
        key = os.path.realpath(self.root)
        held = self._held.get(key)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del self._held[key]
            os.close(held[0])  # closing the descriptor drops the flock

    def __enter__(self) -> ProjectLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Project:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.manifest_path = self.root / "manifest.json"
        self.backup_path = self.root / "manifest.backup.json"
        self.manifest: dict = {}
        self.recovered: str | None = None  # what was wrong with the manifest, when a copy had to be used
        if self.root.exists() and not self.root.is_dir():
            raise ProjectError(f"{self.root} is a file, not a project directory")
        if self.manifest_path.is_file() or self.backup_path.is_file():
            self.manifest = self._read_manifest()

    def _read_manifest(self) -> dict:
        """The manifest, else its backup copy (saying so in :attr:`recovered`), else ``{}`` with the
        reason in :attr:`recovered`: a damaged project starts over rather than crash."""
        problems = []
        for path in (self.manifest_path, self.backup_path):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                problems.append(f"{path.name} is missing")
                continue
            except (OSError, ValueError) as e:
                problems.append(f"{path.name} is damaged ({type(e).__name__})")
                continue
            if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
                if path == self.manifest_path:  # someone else's JSON: not ours to overwrite
                    fmt = data.get("format") if isinstance(data, dict) else None
                    raise ProjectError(f"{self.manifest_path}: not a filmweaver project manifest (format "
                                       f"{fmt!r}, expected {MANIFEST_FORMAT!r})")
                problems.append(f"{path.name} is not a filmweaver manifest")
                continue
            if problems:
                self.recovered = "; ".join(problems) + f": using {path.name}"
            return data
        self.recovered = "; ".join(problems) + ": the project's shots will be generated again"
        return {}

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
        return self.keyframes_dir / f"{name}.png"

    @property
    def film_path(self) -> Path:
        return self.root / "film.mp4"

    @property
    def storyboard_path(self) -> Path:
        return self.root / "storyboard.png"

    @property
    def memory_sheet_path(self) -> Path:
        return self.root / "memory.png"

    @property
    def references_dir(self) -> Path:
        return self.root / "references"

    @property
    def keyframes_dir(self) -> Path:
        return self.root / "keyframes"

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    # -- the project's own copy of its story ---------------------------------------------------------
    def load_story(self) -> StoryScript:
        """The story the project holds (``story.json``; its reference images under ``references/``)."""
        if not self.story_path.is_file():
            raise ProjectError(f"{self.root} has no story.json: generate the project from a script first")
        try:
            data = json.loads(self.story_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ProjectError(f"{self.story_path} is damaged ({e}): generate the project again from its script") from None
        # projects from before the story was copied in recorded its folder instead
        base = self.manifest.get("story", {}).get("base_dir")
        if base in (None, "."):
            return parse_story(data, file=self.story_path, base_dir=self.root)
        return parse_story(data, file=self.story_path, base_dir=base, allow_external_references=True)

    def check_same_story(self, story: StoryScript) -> None:
        """Refuse to put a different story (another ``story_name``) into a project that has shots;
        an edited version of its own story is fine (the shots it changes are redone)."""
        had = self.manifest.get("story", {}).get("name")
        if self.shots and had is not None and had != story.story_name:
            raise ProjectError(f"{self.root} holds the story {had!r}, not {story.story_name!r}: use another output "
                               "directory, or --force to replace it")

    def import_story(self, story: StoryScript) -> StoryScript:
        """Copy ``story`` into the project: its reference images into ``references/`` (named by their
        content, so the project stands alone and an edited image is a new input), then ``story.json``.
        Returns the story as the project now holds it."""
        data = story.model_dump(mode="json", exclude_none=True)
        for key in ("characters", "locations"):
            for spec in data.get(key, []):
                copied = []
                for ref in spec.get("reference_images", []):
                    src = story.resolve(ref)
                    dst = self.references_dir / f"{file_digest(src)[:20]}{src.suffix.lower()}"
                    if not dst.is_file():
                        with atomic_path(dst) as tmp:
                            Path(tmp).write_bytes(src.read_bytes())
                    copied.append(self.rel(dst))
                spec["reference_images"] = copied
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            unchanged = json.loads(self.story_path.read_text(encoding="utf-8")) == data
        except (OSError, ValueError):  # none yet, or damaged: written anew
            unchanged = False
        if not unchanged:
            write_json(self.story_path, data)
        return parse_story(data, file=self.story_path, base_dir=self.root)

    # -- file integrity ----------------------------------------------------------------------------
    def file_entry(self, path: Path) -> dict:
        """``{"path", "size", "sha256"}`` of a file just written (for a shot record's ``files``)."""
        return {"path": self.rel(path), "size": path.stat().st_size, "sha256": file_digest(path)}

    def file_problem(self, entry: dict | str) -> str | None:
        """Why a recorded file can't be trusted (missing, other size, other content), or None."""
        if isinstance(entry, str):  # a record from before files were hashed: existence only
            return None if (self.root / entry).is_file() else f"{entry} is missing"
        path = self.root / entry["path"]
        try:
            intact = path.stat().st_size == entry.get("size") and file_digest(path) == entry.get("sha256")
        except OSError:
            return f"{entry['path']} is missing"
        return None if intact else f"{entry['path']} is damaged (size or content changed)"

    def shot_problem(self, index: int) -> str | None:
        """Why finished shot ``index``'s files can't be used, or None when they all check out."""
        rec = self.shot_record(index)
        if rec is None:
            return "not generated"
        files = rec.get("files", {})
        if not files:
            files = {"video": self.rel(self.shot_video(index)), "state": self.rel(self.shot_state(index))}
        for entry in files.values():
            for e in entry if isinstance(entry, list) else [entry]:
                problem = self.file_problem(e)
                if problem:
                    return problem
        return None

    def remove_partial_files(self) -> list[Path]:
        """Leftovers of writes a killed process never finished (``.*.part``); only under the lock."""
        removed = []
        for part in self.root.rglob(".*.part"):
            with contextlib.suppress(OSError):
                part.unlink()
                removed.append(part)
        return removed

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
        """Finished, made from these inputs (``fingerprint``), and every file intact."""
        rec = self.shot_record(index)
        if rec is None or rec.get("status") != "done":
            return False
        if fingerprint is not None and rec.get("fingerprint") != fingerprint:
            return False
        return self.shot_problem(index) is None

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
        text = json_text(self.manifest)
        write_text(self.manifest_path, text)
        write_text(self.backup_path, text)
