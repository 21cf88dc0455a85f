"""Memory steering: a person's say over what a shot's shot cache holds.

Three edits, each recorded in the manifest (``memory_edits``) and in the fingerprint of every shot
it applies to, so an edited shot is no longer done and the next generate (or regenerate) remakes it:

* **pin** a bank keyframe: it is in the shot's memory whatever the policy would choose;
* **ban** a bank keyframe: the policy never sees it;
* **reference**: an image of the user's (copied into ``references/``) joins the shot's memory as a
  reference, labelled with whom it shows.

An edit applies to one shot, or (``onward``) to that shot and every later one. Nothing here loads a
model: the CLI's ``pin`` / ``ban`` / ``reference`` and the studio call it under the project's lock.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from filmweaver.io import atomic_path, file_digest
from filmweaver.project import Project, ProjectError, ProjectLock

ACTIONS = ("pin", "ban", "reference")
# what an uploaded reference image may be: the formats PIL reads safely, and at most this size
IMAGE_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class MemoryEdit:
    action: str  # "pin" | "ban" | "reference"
    shot: int  # 0-based index of the (first) shot it applies to
    onward: bool = False  # also every later shot
    keyframe: str = ""  # pin / ban: a bank entry's name (shot003_f0012, ref_Ada_0)
    image: str = ""  # reference: the image inside the project (references/<digest>.png)
    label: str = ""  # reference: whom or what it shows (an entity name), or ""

    def applies_to(self, index: int) -> bool:
        return index == self.shot or (self.onward and index > self.shot)

    @property
    def target(self) -> str:
        return self.keyframe or self.image

    def describe(self) -> str:
        scope = f"shot {self.shot + 1}" + (" onward" if self.onward else "")
        what = f"{self.image} ({self.label})" if self.action == "reference" and self.label else self.target
        return f"{self.action} {what} for {scope}"

    def to_manifest(self) -> dict:
        # unset text and a False switch are left out; shot 0 is kept (0 == False in a `not in` test)
        return {k: v for k, v in dataclasses.asdict(self).items() if v != "" and v is not False}

    @classmethod
    def from_manifest(cls, d: dict) -> MemoryEdit:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def memory_edits(manifest: dict) -> list[MemoryEdit]:
    return [MemoryEdit.from_manifest(d) for d in manifest.get("memory_edits", [])]


def edits_for(manifest: dict, index: int) -> list[MemoryEdit]:
    """The edits that apply to shot ``index``, in the order they were made."""
    return [e for e in memory_edits(manifest) if e.applies_to(index)]


def resolve_edits(edits: list[MemoryEdit]) -> tuple[list[str], set[str], list[MemoryEdit]]:
    """``(pinned keyframe names, banned names, reference edits)`` for one shot: a later edit of the same
    keyframe wins (pin after ban: pinned)."""
    state: dict[str, str] = {}
    for e in edits:
        if e.action in ("pin", "ban"):
            state[e.keyframe] = e.action
    pins = [k for k, a in state.items() if a == "pin"]
    return pins, {k for k, a in state.items() if a == "ban"}, [e for e in edits if e.action == "reference"]


def bank_names(project: Project, before: int) -> dict[str, int]:
    """Every bank entry a shot at index ``before`` could hold, by name: the story's reference images
    (source ``-1``) and the keyframes finished earlier shots added (their shot's index)."""
    names = {}
    try:
        refs = project.load_story().references()
    except ProjectError:
        refs = []
    for j, (_, label, _) in enumerate(refs):
        names[f"ref_{label or 'image'}_{j}"] = -1
    for rec in project.shots:
        if rec["index"] < before and rec.get("status") in ("done", "stale"):
            for k in rec.get("keyframes", []):
                if k.get("added_to_bank"):
                    names[k["name"]] = rec["index"]
    return names


def check_edit(project: Project, edit: MemoryEdit, num_shots: int) -> None:
    """A ``ValueError`` naming what is wrong with ``edit`` for this project."""
    if edit.action not in ACTIONS:
        raise ValueError(f"memory edit: unknown action {edit.action!r} (expected {', '.join(ACTIONS)})")
    if not 0 <= edit.shot < num_shots:
        raise ValueError(f"shot {edit.shot + 1} does not exist: the story has {num_shots} shots (1..{num_shots})")
    if edit.action == "reference":
        if not (project.root / edit.image).is_file():
            raise ValueError(f"reference image {edit.image!r} is not in the project (add it with add_reference_image)")
        return
    known = bank_names(project, edit.shot)
    if edit.keyframe not in known:
        earlier = ", ".join(sorted(known)[:8]) + (" ..." if len(known) > 8 else "") or "none yet"
        raise ValueError(f"keyframe {edit.keyframe!r} is not in shot {edit.shot + 1}'s bank (keyframes of earlier "
                         f"finished shots and the story's references: {earlier})")


def apply_edit(project: Project, edit: MemoryEdit, num_shots: int, remove: bool = False) -> list[int]:
    """Record ``edit`` (or, with ``remove``, drop the edits of that action, target and shot) in the
    manifest; the shots it touches and every later one are marked stale. Returns the stale indices."""
    with ProjectLock(project.root):
        if not remove:
            check_edit(project, edit, num_shots)
        kept = [e for e in memory_edits(project.manifest)
                if not (e.shot == edit.shot and e.target == edit.target and e.action == edit.action)]
        if remove and len(kept) == len(memory_edits(project.manifest)):
            raise ValueError(f"no {edit.action} of {edit.target!r} for shot {edit.shot + 1} to remove")
        if not remove:
            # a pin and a ban of one keyframe for one shot: the newer one stands
            opposite = {"pin": "ban", "ban": "pin"}.get(edit.action)
            kept = [e for e in kept if not (e.shot == edit.shot and e.keyframe == edit.keyframe
                                            and e.action == opposite)] + [edit]
        project.manifest["memory_edits"] = [e.to_manifest() for e in kept]
        reason = f"memory of shot {edit.shot + 1} edited ({edit.describe()})"
        stale = project.mark_stale_after(edit.shot - 1, reason)
        project.save()
        return stale


def add_reference_image(project: Project, source: str | Path) -> str:
    """Copy an image into the project's ``references/`` (named by its content) after checking it is a
    PNG, JPEG or WebP picture of sane size; returns its path relative to the project. Anything else
    is a ``ValueError`` naming the file (uploads never land outside the project)."""
    source = Path(source)
    try:
        size = source.stat().st_size
    except OSError as e:
        raise ValueError(f"{source.name}: cannot read the image ({e.strerror or e})") from None
    if size > MAX_IMAGE_BYTES:
        raise ValueError(f"{source.name}: {size / 2**20:.1f} MB is over the {MAX_IMAGE_BYTES // 2**20} MB limit for "
                         "a reference image")
    try:
        with Image.open(source) as im:
            fmt, (w, h) = im.format, im.size
            if fmt not in IMAGE_FORMATS:
                raise ValueError(f"{source.name}: a {fmt} image; reference images are PNG, JPEG or WebP")
            if w * h > MAX_IMAGE_PIXELS:
                raise ValueError(f"{source.name}: {w}x{h} is over the {MAX_IMAGE_PIXELS} pixel limit")
            im.verify()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"{source.name}: not a readable PNG, JPEG or WebP image ({type(e).__name__})") from None
    dst = project.references_dir / f"{file_digest(source)[:20]}{IMAGE_FORMATS[fmt]}"
    if not dst.is_file():
        with atomic_path(dst) as tmp:
            Path(tmp).write_bytes(source.read_bytes())
    return project.rel(dst)
