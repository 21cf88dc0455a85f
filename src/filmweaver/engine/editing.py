"""A project's story edited after shots were made (insert, delete, move, change a shot, or a whole new
version of the script): what of the project still holds.

A shot is kept done only while it and every shot before it are what they were (same place, same
inputs): memory is built from the shots before a shot, so the first changed shot and every later one
are marked stale and made again by the next generate. Shots past the new end are dropped with their
files. Per-shot overrides (regenerate's prompt and seed, extend's chunks) and memory edits follow their
shot to its new place; a pin or ban of a keyframe whose shot moved is dropped (its name says its shot).
"""

from __future__ import annotations

import contextlib
import logging
import re

from filmweaver.engine.plan import ShotPlan
from filmweaver.project import Project

log = logging.getLogger("filmweaver")
_KEYFRAME_SHOT = re.compile(r"^shot(\d+)_f\d+$")


def remap_shot_indices(project: Project, index_map: dict[int, int | None]) -> None:
    """Move the manifest's per-shot overrides and memory edits to their shots' new indices."""
    m = project.manifest
    overrides = {}
    for key, value in m.get("overrides", {}).items():
        new = index_map.get(int(key), int(key))
        if new is not None:
            overrides[str(new)] = value
    m["overrides"] = overrides
    edits = []
    for e in m.get("memory_edits", []):
        new = index_map.get(e["shot"], e["shot"])
        if new is None:
            continue
        shot_of = _KEYFRAME_SHOT.match(e.get("keyframe", ""))
        if shot_of and index_map.get(int(shot_of[1]) - 1, int(shot_of[1]) - 1) != int(shot_of[1]) - 1:
            log.warning("dropped the %s of %s: its shot moved", e["action"], e["keyframe"])
            continue
        edits.append({**e, "shot": new})
    m["memory_edits"] = edits


def first_changed(old: list[ShotPlan], new: list[ShotPlan]) -> int | None:
    """The first index whose shot is not what it was (another fingerprint, or beyond either end)."""
    for i in range(max(len(old), len(new))):
        if i >= len(old) or i >= len(new) or old[i].fingerprint != new[i].fingerprint:
            return i
    return None


def reconcile_shots(project: Project, old: list[ShotPlan], new: list[ShotPlan]) -> tuple[list[int], list[int]]:
    """After a story edit: shots from the first changed one on are stale, records past the new end are
    removed with their files. Returns ``(stale indices, removed indices)``."""
    first = first_changed(old, new)
    if first is None:
        return [], []
    removed = [r["index"] for r in project.shots if r["index"] >= len(new)]
    for index in removed:
        _remove_shot_files(project, project.shot_record(index))
    project.manifest["shots"] = [r for r in project.shots if r["index"] < len(new)]
    stale = project.mark_stale_after(first - 1, f"the story changed at shot {first + 1}")
    return stale, removed


def _remove_shot_files(project: Project, record: dict) -> None:
    for entry in record.get("files", {}).values():
        for e in entry if isinstance(entry, list) else [entry]:
            with contextlib.suppress(OSError):
                (project.root / (e if isinstance(e, str) else e["path"])).unlink()
