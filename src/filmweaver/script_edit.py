"""Edits of a story script's shot list: insert, delete, move, change one shot; on the script's JSON
document, so a script keeps its own keys and format (ST-Bench's parallel lists per scene, EntityBench's
``entity_schedule`` keyed ``"scene:shot"``, which follows each shot to its new key).

Each function returns ``(new document, index map)``: for every old shot index its new one, or ``None``
for a deleted shot (the engine moves per-shot overrides and memory edits with it)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

_OWN = ("video_prompts", "cut", "shots")  # the per-shot lists a row holds as fields of its own


@dataclass
class _Row:
    scene: int  # index of its scene in the document
    prompt: str
    cut: bool
    options: dict = field(default_factory=dict)
    schedule: dict | None = None  # its entity_schedule entry
    # its values of the scene's other per-shot lists (first_frame_prompt, EntityBench's
    # action_descriptions, ...): any list as long as the scene's video_prompts
    extra: dict = field(default_factory=dict)


def _per_shot_keys(scene: dict) -> list[str]:
    n = len(scene["video_prompts"])
    return [k for k, v in scene.items() if k not in _OWN and isinstance(v, list) and len(v) == n]


def _rows(doc: dict) -> list[_Row]:
    rows = []
    schedule = doc.get("entity_schedule") or {}
    for si, scene in enumerate(doc["scenes"]):
        cuts, opts, keys = scene.get("cut"), scene.get("shots"), _per_shot_keys(scene)
        for k, prompt in enumerate(scene["video_prompts"]):
            rows.append(_Row(si, prompt, cuts[k] if cuts else k == 0, dict(opts[k]) if opts else {},
                             schedule.get(f"{scene['scene_num']}:{k + 1}"), {key: scene[key][k] for key in keys}))
    return rows


def _document(doc: dict, rows: list[_Row]) -> dict:
    """``doc`` with its shots replaced by ``rows`` (scenes left without shots are dropped)."""
    out = copy.deepcopy(doc)
    if rows:
        rows[0].cut = True  # nothing comes before the story's first shot: it is a cut whatever it was
    scenes, schedule = [], {}
    for si, scene in enumerate(doc["scenes"]):
        mine = [r for r in rows if r.scene == si]
        if not mine:
            continue
        keys = _per_shot_keys(scene)
        new = {k: copy.deepcopy(v) for k, v in scene.items() if k not in _OWN and k not in keys}
        new["video_prompts"] = [r.prompt for r in mine]
        for key in keys:  # a shot that came from elsewhere without the list's value: its prompt (texts)
            texts = all(isinstance(v, str) for v in scene[key])
            new[key] = [r.extra.get(key, r.prompt if texts else None) for r in mine]
        new["cut"] = [r.cut for r in mine]
        if scene.get("shots") is not None or any(r.options for r in mine):
            new["shots"] = [r.options for r in mine]
        scenes.append(new)
        for k, r in enumerate(mine):
            if r.schedule is not None:
                schedule[f"{scene['scene_num']}:{k + 1}"] = r.schedule
    out["scenes"] = scenes
    if doc.get("entity_schedule") is not None or schedule:
        out["entity_schedule"] = schedule
    return out


def _check(rows: list, index: int, name: str, allow_end: bool = False) -> None:
    n = len(rows)
    top = n + 1 if allow_end else n
    if not 0 <= index < top:
        raise IndexError(f"{name}: shot {index + 1} does not exist (the story has {n} shots: 1..{n})")


def insert_shot(doc: dict, at: int, prompt: str, cut: bool = True, options: dict | None = None,
                entities: dict | None = None) -> tuple[dict, dict[int, int | None]]:
    """A new shot at index ``at`` (0-based; ``at`` = the number of shots appends), in the scene of the
    shot it goes before (the last scene when appended). ``entities``: its schedule entry
    (``{"characters": [...], "places": [...], "objects": [...]}``), for a scheduled script."""
    rows = _rows(doc)
    _check(rows, at, "insert", allow_end=True)
    if not prompt.strip():
        raise ValueError("insert: the new shot needs a prompt")
    scene = rows[at].scene if at < len(rows) else (rows[-1].scene if rows else 0)
    rows.insert(at, _Row(scene, prompt, cut, dict(options or {}), entities))
    return _document(doc, rows), {i: (i if i < at else i + 1) for i in range(len(rows) - 1)}


def delete_shot(doc: dict, index: int) -> tuple[dict, dict[int, int | None]]:
    rows = _rows(doc)
    _check(rows, index, "delete")
    if len(rows) == 1:
        raise ValueError("delete: a story keeps at least one shot")
    del rows[index]
    return _document(doc, rows), {i: (None if i == index else i if i < index else i - 1) for i in range(len(rows) + 1)}


def move_shot(doc: dict, index: int, to: int) -> tuple[dict, dict[int, int | None]]:
    """Move shot ``index`` to position ``to`` (0-based, among the shots as they will be): it joins the
    scene of the shot it lands before (the last scene at the end), with its prompt, options and schedule."""
    rows = _rows(doc)
    _check(rows, index, "move")
    _check(rows, to, "move to")
    order = list(range(len(rows)))
    order.insert(to, order.pop(index))
    row = rows[index]
    moved = [rows[i] for i in order]
    after = [r for r in moved if r is not row]
    row.scene = after[to].scene if to < len(after) else after[-1].scene if after else row.scene
    return _document(doc, moved), {old: new for new, old in enumerate(order)}


def set_shot(doc: dict, index: int, prompt: str | None = None, cut: bool | None = None,
             options: dict | None = None) -> tuple[dict, dict[int, int | None]]:
    """Change one shot's prompt, cut or options (merged into its own)."""
    rows = _rows(doc)
    _check(rows, index, "edit")
    r = rows[index]
    if prompt is not None:
        if not prompt.strip():
            raise ValueError(f"edit: shot {index + 1} needs a prompt")
        # the scene's other texts of this shot that were its prompt follow it (ST-Bench's first_frame_prompt)
        r.extra = {k: (prompt if v == r.prompt else v) for k, v in r.extra.items()}
        r.prompt = prompt
    if cut is not None:
        r.cut = cut
    if options:
        r.options = {**r.options, **options}
    return _document(doc, rows), {i: i for i in range(len(rows))}
