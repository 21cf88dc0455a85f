"""The autoregressive story engine: script -> shots -> chunks, guided by the shot and temporal caches.

Each shot goes through four stages, one module each (as diffusers' modular Wan pipeline has one per
stage), and every operation ends with the summaries:

1. :mod:`~filmweaver.engine.plan`: the shot's prompt, seed and chunks, and a fingerprint of its inputs;
2. :mod:`~filmweaver.engine.memory`: the **shot cache** (keyframes chosen from the bank,
   :mod:`~filmweaver.engine.bank`, by the policy, one latent frame each at negative temporal positions),
   the **temporal cache** (the latest latent frames of the shot, differentially compressed, seeded
   for a ``cut: false`` shot with the previous shot's last frame (MI2V) or frames (MM2V));
3. :mod:`~filmweaver.engine.denoise`: the chunk loop (a keyframe-first anchor is a one-frame chunk),
   the context reaching the backbone through :mod:`~filmweaver.engine.velocity`; StoryMem's one-clip
   layout in :mod:`~filmweaver.engine.storymem`;
4. :mod:`~filmweaver.engine.finish`: decode, keyframes into the bank, the shot's files; then its
   :class:`~filmweaver.engine.records.ShotRecord` in the manifest, last.

The inference mode follows from what the caches hold (no cache / temporal only / shot only / both)
and is recorded per chunk. :class:`StoryEngine` holds the public operations and the project's
lifecycle; :class:`EngineConfig` every setting that changes the film.
"""

from filmweaver.engine.config import (
    WAN_NEGATIVE_PROMPT,
    EngineConfig,
    KeyframeConfig,
    ShotCacheConfig,
    StoryMemConfig,
    TemporalCacheConfig,
)
from filmweaver.engine.plan import ShotPlan
from filmweaver.engine.records import MODES, ChunkRecord, ShotRecord
from filmweaver.engine.story_engine import UNTRAINED_BANNER, StoryEngine

__all__ = ["MODES", "UNTRAINED_BANNER", "WAN_NEGATIVE_PROMPT", "ChunkRecord", "EngineConfig", "KeyframeConfig",
           "ShotCacheConfig", "ShotPlan", "ShotRecord", "StoryEngine", "StoryMemConfig", "TemporalCacheConfig"]
