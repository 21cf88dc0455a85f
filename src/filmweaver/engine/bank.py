"""The keyframe bank of a project as each shot sees it: earlier shots' keyframes, with the story's
reference images first.

The bank is derived data. It is kept in memory between the shots of one operation and saved once
when the operation ends; a bank that is missing, damaged or out of step with the shots is rebuilt
exactly from the shots' state files and keyframe PNGs (a resumed story is the same film).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors import safe_open

from filmweaver.engine.records import KeyframeRecord, ShotRecord
from filmweaver.io import load_image
from filmweaver.memory.keyframes import Keyframe, KeyframeBank, bank_exists
from filmweaver.project import Project, ProjectError
from filmweaver.script import StoryScript

log = logging.getLogger("filmweaver")


class BankStore:
    """Reads the bank before a shot (kept, saved, rebuilt or read back) for one operation."""

    def __init__(self, project: Project, story: StoryScript, models, size: tuple[int, int], dedupe_threshold: float):
        self.project, self.story, self.models = project, story, models
        self.size = size  # (height, width) reference images are loaded at
        self.dedupe_threshold = dedupe_threshold
        self.after: KeyframeBank | None = None  # the bank after the last shot this operation made

    def reset(self) -> None:
        """A new operation reads the bank from disk again (another process may have written in between)."""
        self.after = None

    def save(self) -> None:
        if self.after is not None:
            self.after.save(self.project.bank_dir)

    def before(self, index: int) -> KeyframeBank:
        """The bank as it stood before shot ``index``, with the story's reference images first."""
        p = self.project
        bank = None
        if self.after is not None:  # the bank this operation just built: no reading it back
            bank = self.after.before_shot(index)
        elif bank_exists(p.bank_dir):
            try:
                bank = KeyframeBank.load(p.bank_dir).before_shot(index)
            except Exception as e:  # noqa: BLE001 - any damage to derived data: rebuild it from the shots
                log.warning("%s: the keyframe bank is damaged (%s: %s); rebuilding it from the shots", p.bank_dir,
                            type(e).__name__, str(e)[:120])
        if bank is None or not self._matches_shots(bank, index):
            bank = self._from_shots(index)
        bank.dedupe_threshold = self.dedupe_threshold
        if not any(e.kind == "reference" for e in bank) and self.story.references():
            bank.entries = self._references() + bank.entries
        return bank

    def _references(self) -> list[Keyframe]:
        return self.reference_entries([(name, path) for _, name, path in self.story.references()])

    def reference_entries(self, images: list[tuple[str, Path]], numbers: list[int] | None = None) -> list[Keyframe]:
        """Bank entries of reference images ``(label, path)``, numbered ``numbers`` (default 0, 1, ...;
        their names: ``ref_<label>_<n>``)."""
        if not images:
            return []
        pictures = torch.stack([load_image(path, self.size) for _, path in images])
        embs = self.models.embedder.embed_images(pictures)
        lats = self.models.codec.encode_images(pictures).cpu()
        numbers = list(range(len(images))) if numbers is None else numbers
        return [Keyframe(img, emb.float(), lat.float(), source_shot=-1, frame_index=n, kind="reference",
                         label=label, entities=(label,) if label else ())
                for n, (label, _), img, emb, lat in zip(numbers, images, pictures, embs, lats, strict=True)]

    def _keyframes(self, index: int) -> list[tuple[KeyframeRecord, int]]:
        """(keyframe record, shot index) of every keyframe the finished shots before ``index`` added."""
        return [(k, r.index) for r in map(ShotRecord.from_manifest, self.project.shots) if r.index < index and r.done
                for k in r.keyframes if k.added_to_bank]

    def _matches_shots(self, bank: KeyframeBank, index: int) -> bool:
        names = [e.name for e in bank if e.kind != "reference"]
        return names == [k.name for k, _ in self._keyframes(index)]

    def _from_shots(self, index: int) -> KeyframeBank:
        """The bank before shot ``index``, rebuilt from the shots' state files and keyframe PNGs (exactly
        what the bank held: its pictures are those PNGs, its tensors are kept in the states)."""
        p, entries = self.project, []
        for k, shot_index in self._keyframes(index):
            with safe_open(str(p.shot_state(shot_index)), "pt") as f:
                if f"bank.{k.frame_index}.embedding" not in f.keys():
                    raise ProjectError(f"{p.root}: the keyframe bank is damaged and shot {shot_index + 1} predates "
                                       "rebuildable banks: regenerate from that shot, or generate --force")
                emb, lat = f.get_tensor(f"bank.{k.frame_index}.embedding"), f.get_tensor(f"bank.{k.frame_index}.latent")
            entries.append(Keyframe(load_image(p.keyframe_png(k.name)), emb, lat, source_shot=shot_index,
                                    frame_index=k.frame_index, entities=tuple(k.entities),
                                    boxes={n: tuple(b) for n, b in k.boxes.items()}))
        return KeyframeBank(entries, self.dedupe_threshold)
