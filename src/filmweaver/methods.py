"""Named methods: the engine settings that make each way of generating a multi-shot film.

A method is a partial :class:`~filmweaver.engine.EngineConfig` (nested dict); ``filmweaver generate
--method NAME`` and ``filmweaver benchmark --methods ...`` apply it under any explicit settings.

* ``default``: nothing of its own: the model's recommended settings (its ``filmweaver.json`` defaults,
  e.g. the built-in model's ``entity`` memory and regional prompts), as ``filmweaver generate`` without
  ``--method``; an ablation arm is this plus what the arm changes.
* ``independent``: every shot on its own (no shot cache, no carry-over between shots); chunks inside a
  shot still share the temporal cache.
* ``storymem``: StoryMem's released pipeline (``EngineConfig.storymem``): ``sink_window`` memory (the
  first 3 keyframes kept, the most recent fill up to 10), its keyframe selection and dedupe (0.9), its
  seeds and negative prompt, MI2V for ``cut: false`` (``--continuation mm2v`` for its MM2V); on an M2V
  backbone also its input layout and sampling (``--preset wan2.2-i2v-a14b --lora ... --first-shot-model
  Wan-AI/Wan2.2-T2V-A14B-Diffusers``).
* ``storymem_corrected``: the same, with the released MI2V's overwritten last-frame condition kept.
* ``filmweaver``: FilmWeaver: ``topk`` prompt-keyframe retrieval + the temporal cache (the default).
* ``keyframe_first``: each shot's first frame is generated (text + shot cache), then animated from it.
* ``entity``: filmweaver with entity-aware memory: every entity a shot shows (the script's entity
  schedule, or the sheet characters it names) is represented in its shot cache; ``topk`` fills the rest.
"""

from __future__ import annotations

from filmweaver.settings import merge_settings

# StoryMem's released values (pipeline.py, extract_keyframes.py): written out, not taken from our
# defaults, so that --method storymem stays StoryMem's if filmweaver's own defaults change
STORYMEM = {"shot_cache": {"policy": "sink_window", "sink": 3, "max_size": 10}, "continuation": "mi2v",
            "keyframes": {"max_per_shot": 3, "start_threshold": 0.9, "threshold_step": 0.01, "dedupe_threshold": 0.9},
            "storymem": {"enabled": True}}

METHODS: dict[str, dict] = {
    "default": {},
    "independent": {"shot_cache": {"policy": "none"}, "continuation": "none"},
    "storymem": STORYMEM,
    "storymem_corrected": merge_settings(STORYMEM, {"storymem": {"corrected_mi2v": True}}),
    "filmweaver": {"shot_cache": {"policy": "topk"}, "continuation": "mi2v"},
    "keyframe_first": {"shot_cache": {"policy": "topk"}, "keyframe_first": True},
    "entity": {"shot_cache": {"policy": "entity"}, "continuation": "mi2v"},
}


def method_config(name: str, explicit: dict | None = None):
    """``EngineConfig`` for method ``name``; ``explicit`` (nested dict: what the user set) wins over
    the method's settings (``--method storymem --continuation mm2v`` is StoryMem's MM2V)."""
    from filmweaver.engine import EngineConfig

    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: choose from {', '.join(METHODS)}")
    return EngineConfig.model_validate(merge_settings(METHODS[name], explicit or {}))
