"""Named methods: the engine settings that make each way of generating a multi-shot film.

A method is a partial :class:`~filmweaver.engine.EngineConfig` (nested dict); ``filmweaver generate
--method NAME`` and ``filmweaver benchmark --methods ...`` apply it under any explicit settings.

* ``independent``: every shot on its own (no shot cache, no carry-over between shots); chunks inside a
  shot still share the temporal cache.
* ``storymem``: StoryMem-style memory: ``sink_window`` (first 3 keyframes kept, the most recent fill
  up to 10), MI2V for ``cut: false``.
* ``filmweaver``: FilmWeaver: ``topk`` prompt-keyframe retrieval + the temporal cache (the default).
* ``keyframe_first``: each shot's first frame is generated (text + shot cache), then animated from it.
"""

from __future__ import annotations

METHODS: dict[str, dict] = {
    "independent": {"shot_cache": {"policy": "none"}, "continuation": "none"},
    "storymem": {"shot_cache": {"policy": "sink_window", "sink": 3, "max_size": 10}, "continuation": "mi2v"},
    "filmweaver": {"shot_cache": {"policy": "topk", "k": 3}, "continuation": "mi2v"},
    "keyframe_first": {"shot_cache": {"policy": "topk", "k": 3}, "keyframe_first": True},
}


def method_config(name: str, base: dict | None = None):
    """``EngineConfig`` for method ``name``; ``base`` (nested dict) holds settings it leaves alone."""
    from filmweaver.engine import EngineConfig

    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: choose from {', '.join(METHODS)}")
    merged = _merge(base or {}, METHODS[name])
    return EngineConfig.model_validate(merged)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
