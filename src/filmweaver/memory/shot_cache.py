"""Shot cache: which bank keyframes condition the next shot.

Three policies behind one interface:

* ``topk`` (FilmWeaver): ``C_shot = argtopk_{kf in bank} cos(phi_T(prompt), phi_I(kf))``; optionally
  at most ``per_shot`` keyframes from any one earlier shot (the near-duplicate frames of one shot can
  otherwise take every slot, crowding out the shot that introduced a character).
* ``sink_window`` (StoryMem): the first ``sink`` keyframes are kept forever, the most recent fill the
  rest up to ``max_size``; the oldest sliding ones drop first.
* ``entity``: every entity the shot shows is represented: its reference image, else its best earlier
  appearance (least crowded: fewest other entities in the frame; then largest: its box, or its share
  of the frame; then first), one keyframe each (a keyframe may stand for several only when it is
  each one's best); the remaining slots up to ``k`` go by prompt similarity, as ``topk``.

``topk`` and ``sink_window`` return the chosen entries in bank (story) order, so that their temporal
positions follow the story; ``entity`` returns the similarity fill in bank order, then one keyframe
per entity in the order the shot names them (nearest the generated frames: the trainer places them
the same way), each with its prompt similarity for the manifest and the memory sheets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from filmweaver.memory.keyframes import KeyframeBank


@dataclass
class RetrievedKeyframe:
    bank_index: int
    similarity: float | None  # cosine(prompt text, keyframe image); None without a prompt embedding
    role: str  # "retrieved" | "required" | "sink" | "window"


def memory_positions(n: int, temporal_capacity: int, gap: float = 0.0) -> torch.Tensor:
    """Temporal RoPE positions ``[n]`` of ``n`` shot-cache keyframes: oldest first, ending just before
    the temporal window (``-1 .. -temporal_capacity``) and the optional gap (StoryMem's S). The
    engine and the trainer both place memory with this function."""
    return torch.arange(n, dtype=torch.float64) - (temporal_capacity + gap + n)


class ShotCachePolicy(Protocol):
    name: str

    def select(self, bank: KeyframeBank, prompt_embedding: torch.Tensor | None = None,
               required: list[int] | None = None, entities: list[str] | None = None) -> list[RetrievedKeyframe]:
        """``prompt_embedding [D]`` unit norm; ``required``: bank indices that must be included
        (e.g. reference images of the characters the shot names); ``entities``: the names of what the
        shot shows (the ``entity`` policy represents each; the others ignore them)."""
        ...


def _similarities(bank: KeyframeBank, prompt_embedding: torch.Tensor | None) -> list[float | None]:
    if prompt_embedding is None or len(bank) == 0:
        return [None] * len(bank)
    return (bank.embeddings @ prompt_embedding.float()).tolist()


# The one home of the shot cache's defaults (EngineConfig.shot_cache and the CLI read them from here)
DEFAULT_K = 3  # topk: keyframes retrieved per shot
DEFAULT_SINK = 3  # sink_window: the first keyframes, kept forever
DEFAULT_MAX_SIZE = 10  # sink_window: the whole memory


@dataclass
class TopKRetrieval:
    k: int = DEFAULT_K
    per_shot: int | None = None  # at most this many keyframes of one source shot while others are left
    name: str = "topk"

    def select(self, bank, prompt_embedding=None, required=None, entities=None):
        if prompt_embedding is None:
            raise ValueError("topk retrieval needs the prompt's text embedding")
        sims = _similarities(bank, prompt_embedding)
        required = list(dict.fromkeys(required or []))[: self.k]
        rest = sorted((i for i in range(len(bank)) if i not in required), key=lambda i: -sims[i])
        chosen = {i: "required" for i in required}
        if self.per_shot is not None:
            # the most similar keyframes under the cap first; slots still free (fewer shots than
            # k / per_shot) go to the best of the rest, so a small bank still fills k
            taken: dict[int, int] = {}
            capped = []
            for i in rest:
                shot = bank.entries[i].source_shot
                if shot < 0 or taken.get(shot, 0) < self.per_shot:  # user references are not capped
                    capped.append(i)
                    taken[shot] = taken.get(shot, 0) + 1
            first = set(capped)
            rest = capped + [i for i in rest if i not in first]
        for i in rest[: max(0, self.k - len(required))]:
            chosen[i] = "retrieved"
        return [RetrievedKeyframe(i, sims[i], chosen[i]) for i in sorted(chosen)]


@dataclass
class SinkWindowMemory:
    sink: int = DEFAULT_SINK
    max_size: int = DEFAULT_MAX_SIZE
    name: str = "sink_window"

    def __post_init__(self):
        if not 0 <= self.sink <= self.max_size:
            raise ValueError(f"sink_window: need 0 <= sink ({self.sink}) <= max_size ({self.max_size})")

    def select(self, bank, prompt_embedding=None, required=None, entities=None):
        sims = _similarities(bank, prompt_embedding)
        n = len(bank)
        sink = list(range(min(self.sink, n)))
        window = list(range(max(len(sink), n - (self.max_size - len(sink))), n))
        roles = {i: "sink" for i in sink} | {i: "window" for i in window}
        for i in required or []:  # required entries displace the oldest of the window
            if i not in roles:
                oldest_window = [j for j in sorted(roles) if roles[j] == "window"]
                if len(roles) >= self.max_size and oldest_window:
                    del roles[oldest_window[0]]
                roles[i] = "required"
        return [RetrievedKeyframe(i, sims[i], roles[i]) for i in sorted(roles)]


def best_appearance(bank: KeyframeBank, entity: str) -> int | None:
    """The bank index that shows ``entity`` best: a reference image of it, else the least crowded,
    then largest, then first of its appearances (None if the bank never saw it)."""
    refs = [i for i, e in enumerate(bank) if e.kind == "reference" and e.label == entity]
    if refs:
        return refs[0]
    seen = [i for i, e in enumerate(bank) if e.shows(entity)]
    if not seen:
        return None
    return min(seen, key=lambda i: (len(bank.entries[i].entities), -bank.entries[i].share(entity), i))


@dataclass
class EntityMemory:
    k: int = DEFAULT_K
    per_shot: int | None = None  # the prompt-similarity fill: as topk's
    name: str = "entity"

    def select(self, bank, prompt_embedding=None, required=None, entities=None):
        required = list(dict.fromkeys(required or []))
        referenced = {bank.entries[i].label for i in required if bank.entries[i].kind == "reference"}
        # each entity its own best appearance (a crowded frame does not stand for an entity that was
        # seen alone: one look per name is what lets the model tell the characters apart)
        named = []
        for entity in entities or []:
            i = None if entity in referenced else best_appearance(bank, entity)
            if i is not None and i not in named and i not in required:
                named.append(i)
        guaranteed = required + named
        # every entity is kept even past k; the rest of k goes by prompt similarity
        fill = TopKRetrieval(k=max(self.k, len(guaranteed)), per_shot=self.per_shot)
        chosen = fill.select(bank, prompt_embedding, guaranteed) if prompt_embedding is not None else [
            RetrievedKeyframe(i, None, "required") for i in sorted(guaranteed)]
        by_index = {r.bank_index: r for r in chosen}
        rest = [r for r in chosen if r.bank_index not in named]
        return rest + [RetrievedKeyframe(i, by_index[i].similarity, "entity") for i in named]


def make_shot_cache_policy(name: str, k: int = DEFAULT_K, sink: int = DEFAULT_SINK, max_size: int = DEFAULT_MAX_SIZE,
                           per_shot: int | None = None) -> ShotCachePolicy:
    if name == "topk":
        return TopKRetrieval(k=k, per_shot=per_shot)
    if name == "entity":
        return EntityMemory(k=k, per_shot=per_shot)
    if name == "sink_window":
        return SinkWindowMemory(sink=sink, max_size=max_size)
    if name == "none":
        return NoShotCache()
    raise ValueError(f"unknown shot-cache policy {name!r}: expected 'topk', 'entity', 'sink_window' or 'none'")


@dataclass
class NoShotCache:
    """Independent shots: the ablation / baseline with no long-term memory."""

    name: str = "none"

    def select(self, bank, prompt_embedding=None, required=None, entities=None):
        return []
