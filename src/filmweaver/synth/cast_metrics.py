"""Who is who: per-character metrics of a generated multi-character synthetic story.

The :class:`~filmweaver.synth.probe.CastProbe` reads every frame: how many characters, and each one's
attributes left to right. The world's convention is that a shot's characters stand left to right in
the order its prompt names them, so slot ``j`` of a frame should show the ``j``-th character of the
shot's cast. Per (shot, character) the reading is the majority over the shot's frames that show it:

* **identity**: the character's attributes as read against its true ones, on its *later unrestated
  appearances* (after its first, with a prompt that does not describe it: only memory knows it),
  each attribute and all four together;
* **swap**: one of its attributes read as another cast member's value of that attribute (and not its
  own): a look given to the wrong name (shots of two or more characters). A wrong reading hits another
  member's value by chance too (with 3-6 values an attribute and similar pairs, often), so the rate
  comes with its **chance level**: what it would be if every wrong reading were a random other value
  (:func:`swap_chance`); only the **excess** over it is a look given to the wrong name;
* **presence**: the shot shows as many characters as it should (none missing, none extra);
* **identity by recurrence gap**: identity against the number of shots since the character was last
  seen (EntityBench's buckets).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from filmweaver.eval.metrics import GAP_BUCKETS, gap_label
from filmweaver.synth.stories import story_from_script
from filmweaver.synth.world import CHARACTER_ATTRIBUTES, MAX_CAST, character_boxes

ATTRS = list(CHARACTER_ATTRIBUTES)
# reads frames [T, 3, H, W] in [0, 1] -> {"count": [T], "slot{j}.{attribute}": [T]} class indices
Reader = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def _majority(values: torch.Tensor) -> int | None:
    return int(torch.bincount(values).argmax()) if len(values) else None


def cast_records(frames_of_shot: Callable[[int], torch.Tensor], script: dict, read: Reader) -> list[dict]:
    """One record per (shot, character) of a cast story (``frames_of_shot(i) -> [T, 3, H, W]``)."""
    gt, specs = story_from_script(script)
    last_seen: dict[str, int] = {}
    records = []
    for i, (spec, g) in enumerate(zip(specs, gt["shots"], strict=True)):
        frames = frames_of_shot(i)
        pred = read(frames)
        h, w = frames.shape[2:]
        n_true = len(spec.cast)
        visible = np.array([[b is not None for b in character_boxes(spec, t, h, w)] for t in range(len(frames))])
        count_true = _majority(torch.from_numpy(visible.sum(1)))
        count_read = _majority(pred["count"])
        for j, (name, member) in enumerate(zip(g["cast"], spec.cast, strict=True)):
            seen = torch.from_numpy(visible[:, j])
            read_j = {k: _majority(pred[f"slot{j}.{k}"][seen]) if seen.any() else None for k in ATTRS}
            truth = member.labels()
            others = [m.labels() for m in spec.cast if m != member]
            records.append({
                "shot": i, "name": name, "slot": j, "cast_size": n_true,
                "first": name not in last_seen, "gap": i - last_seen[name] if name in last_seen else None,
                "restated": g["restates_cast"][j],
                "match": {k: read_j[k] == truth[k] for k in ATTRS},
                "swap": {k: read_j[k] is not None and read_j[k] != truth[k] and any(read_j[k] == o[k] for o in others)
                         for k in ATTRS},
                "truth": {k: CHARACTER_ATTRIBUTES[k][truth[k]] for k in ATTRS},
                "read": {k: None if read_j[k] is None else CHARACTER_ATTRIBUTES[k][read_j[k]] for k in ATTRS},
                "present": count_read == count_true,
            })
            last_seen[name] = i
    return records


def project_cast_records(project_dir: str | Path, script: dict, read: Reader) -> list[dict]:
    """:func:`cast_records` of a generated project's shot videos."""
    from filmweaver.io import read_video
    from filmweaver.project import Project

    p = Project(project_dir)
    return cast_records(lambda i: read_video(p.shot_video(i))[0], script, read)


def swap_chance(r: dict, others: list[dict]) -> float:
    """The probability that record ``r`` counts as a swap if each of its wrong readings were a random
    other value of its attribute: ``1 - prod(1 - p_k)`` over its wrong attributes, ``p_k`` = the other
    cast members' (``others``: their records in the same shot) distinct values of ``k`` unlike its own,
    over the attribute's values - 1."""
    miss = 1.0
    for k in ATTRS:
        if r["read"][k] is None or r["match"][k]:
            continue
        hits = len({o["truth"][k] for o in others} - {r["truth"][k]})
        miss *= 1.0 - hits / (len(CHARACTER_ATTRIBUTES[k]) - 1)
    return 1.0 - miss


def later_unrestated(r: dict) -> bool:
    """A character's appearance after its first whose prompt does not describe it: only memory knows it."""
    return not r["first"] and not r["restated"]


def summarize_cast(records: list[dict]) -> dict:
    """Per-character identity (each attribute, all four), swap rate, presence and identity by gap."""
    ident = [r for r in records if later_unrestated(r)]
    multi = [r for r in ident if r["cast_size"] > 1]
    shots = {(r.get("story"), r["shot"]): r["present"] for r in records}

    def mean(vals):
        return float(np.mean(vals)) if len(vals) else None

    in_shot: dict[tuple, list[dict]] = {}
    for r in records:
        in_shot.setdefault((r.get("story"), r["shot"]), []).append(r)
    chance = mean([swap_chance(r, [o for o in in_shot[(r.get("story"), r["shot"])] if o["name"] != r["name"]])
                   for r in multi])

    by_gap = []
    for lo, hi in GAP_BUCKETS:
        rows = [r for r in ident if r["gap"] is not None and lo <= r["gap"] <= hi]
        if rows:
            by_gap.append({"gap": gap_label(lo, hi), "identity": mean([r["match"][k] for r in rows for k in ATTRS]),
                           "n": len(rows)})
    return {
        "character_identity": mean([r["match"][k] for r in ident for k in ATTRS]),
        # the other half of the story: are characters drawn as described where the prompt describes
        # them, and do later appearances keep the look they were first drawn with (memory's copying)
        "character_adherence": mean([r["match"][k] for r in records if r["restated"] for k in ATTRS]),
        "character_identity_as_drawn": _as_first_drawn(records),
        "character_identity_by_attribute": {k: mean([r["match"][k] for r in ident]) for k in ATTRS},
        "character_identity_all_attributes": mean([all(r["match"][k] for k in ATTRS) for r in ident]),
        "swap_rate": mean([any(r["swap"].values()) for r in multi]),
        # the swap rate random wrong readings would give on the same appearances, and the excess over it
        "swap_rate_by_chance": chance,
        "swap_excess": None if chance is None else mean([any(r["swap"].values()) for r in multi]) - chance,
        "presence": mean(list(shots.values())),
        "identity_by_gap": by_gap,
        "appearances": len(ident),
        "multi_character_appearances": len(multi),
        "shots": len(shots),
    }


def _as_first_drawn(records: list[dict]) -> float | None:
    """Share of attributes on later unrestated appearances read as the character's first appearance
    was read (None where either is unread): identity against the drawn look, not the scripted one."""
    first: dict[tuple, dict] = {}
    vals = []
    for r in sorted(records, key=lambda r: (str(r.get("story")), r["shot"])):
        key = (r.get("story"), r["name"])
        if r["first"]:
            first[key] = r["read"]
        elif not r["restated"] and key in first:
            vals += [r["read"][k] == first[key][k] for k in ATTRS if r["read"][k] is not None and first[key][k] is not None]
    return float(np.mean(vals)) if vals else None


def probe_reader(probe) -> Reader:
    """A :class:`~filmweaver.synth.probe.CastProbe` as a :data:`Reader`."""
    def read(frames: torch.Tensor) -> dict[str, torch.Tensor]:
        return probe.predict(frames)

    return read


__all__ = ["MAX_CAST", "cast_records", "later_unrestated", "project_cast_records", "probe_reader", "summarize_cast"]
