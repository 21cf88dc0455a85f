"""Stage 2, assemble memory: what one shot is generated with besides its prompt.

* the **shot cache**: keyframes chosen from the bank by the policy (``topk`` by prompt, StoryMem's
  ``sink_window``), with the reference images and character anchors the shot requires, as one
  context block at negative temporal positions;
* the **temporal cache**: for an extension, the shot's own latents; for a ``cut: false`` shot, the
  previous shot's last frame (MI2V) or last few frames (MM2V);
* for an image-conditioned backbone (Wan2.1-I2V), the shot's conditioning image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from safetensors import safe_open

from filmweaver.backbone.entity_tags import entity_slots, slot_regions
from filmweaver.context import ContextFrames
from filmweaver.engine.bank import BankStore
from filmweaver.engine.config import EngineConfig
from filmweaver.engine.plan import ShotPlan
from filmweaver.engine.records import MemoryRecord
from filmweaver.engine.steering import edits_for, memory_edits, resolve_edits
from filmweaver.memory.keyframes import KeyframeBank
from filmweaver.memory.shot_cache import RetrievedKeyframe, memory_positions
from filmweaver.memory.temporal_cache import TemporalCache
from filmweaver.project import Project
from filmweaver.script import StoryScript, names_in
from filmweaver.text import pooled_embeddings

ADDED_REFERENCE_BASE = 1000  # a reference added to one shot's memory: ref_<label>_1000 on (story's: from 0)


def tail_frames(project: Project, index: int) -> torch.Tensor:
    """The last decoded frames ``[k, 3, H, W]`` of shot ``index`` (from its state file, without
    reading its latents)."""
    with safe_open(str(project.shot_state(index)), "pt") as f:
        return f.get_tensor("tail_frames")


@dataclass
class ShotMemory:
    """Everything a shot is generated with from memory."""

    bank: KeyframeBank  # before this shot, with the references added for this shot alone
    retrieved: list[RetrievedKeyframe]  # the shot cache, in bank order of the policy's choice
    temporal: TemporalCache
    shot_context: list[ContextFrames]  # the shot cache as one block (empty without keyframes)
    continuation: str | None  # "mi2v" | "mm2v" | "keyframe_first" | None
    image_source: str | None = None  # Wan2.1-I2V: what the conditioning image is
    image: torch.Tensor | None = None  # Wan2.1-I2V: its CLIP tokens [1, L_img, image_dim]

    def describe(self, gap: float) -> list[MemoryRecord]:
        """The shot cache as the manifest records it: each keyframe, why it is there, where it sits."""
        positions = memory_positions(len(self.retrieved), self.temporal.capacity, gap).tolist()
        out = []
        for r, position in zip(self.retrieved, positions, strict=True):
            e = self.bank.entries[r.bank_index]
            out.append(MemoryRecord(e.name, e.kind, e.label, e.source_shot + 1 if e.source_shot >= 0 else None,
                                    e.frame_index, None if r.similarity is None else round(r.similarity, 4), r.role,
                                    position, list(e.entities)))
        return out


class MemoryAssembler:
    """Builds each shot's :class:`ShotMemory` from the bank, the project's earlier shots and the config."""

    def __init__(self, models, cfg: EngineConfig, project: Project, story: StoryScript, policy,
                 plans: Callable[[], list[ShotPlan]], storymem_layout: bool, image_conditioned: bool,
                 bank_store: BankStore):
        self.models, self.cfg, self.project, self.story, self.policy = models, cfg, project, story, policy
        self.bank_store = bank_store  # makes the bank entries of the references a person added
        self.plans = plans  # every shot's plan (character anchors look at earlier shots' prompts)
        self.storymem_layout = storymem_layout
        self.image_conditioned = image_conditioned

    def assemble(self, plan: ShotPlan, bank: KeyframeBank, prior_latents: torch.Tensor | None) -> ShotMemory:
        """``bank``: the bank before the shot (not changed: the shot's own references go into a copy)."""
        cfg, i, device = self.cfg, plan.shot.index, self.models.backbone.device
        pins, bans, added = resolve_edits(edits_for(self.project.manifest, i))
        if added:
            # numbered by their place among all added references: one name per image across the shots
            every = [e for e in memory_edits(self.project.manifest) if e.action == "reference"]
            extra = self.bank_store.reference_entries([(e.label, self.project.root / e.image) for e in added],
                                                      [ADDED_REFERENCE_BASE + every.index(e) for e in added])
            bank = KeyframeBank(bank.entries + extra, bank.dedupe_threshold)
            pins = pins + [e.name for e in extra]
        retrieved = self.retrieve(plan, bank, pins, bans)
        # StoryMem's layout has no temporal cache: a continuation goes into the video's condition
        use_temporal = cfg.temporal_cache.enabled and not self.storymem_layout
        temporal = TemporalCache(cfg.temporal_cache.schedule if use_temporal else [])
        continuation = None
        if prior_latents is not None:
            temporal.push(prior_latents.to(device))
        elif not plan.shot.cut and use_temporal:
            carried = self.continuation_frames(i)
            if carried is not None:
                temporal.push(carried.to(device))
                continuation = cfg.continuation
        memory = ShotMemory(bank, retrieved, temporal,
                            self.shot_context(bank, retrieved, temporal.capacity, list(plan.shot.entities.characters)),
                            continuation)
        if self.image_conditioned:
            memory.image_source, memory.image = self.image_condition(i, bank, retrieved, continuation, prior_latents)
        return memory

    # -- the shot cache --------------------------------------------------------------------------------
    def retrieve(self, plan: ShotPlan, bank: KeyframeBank, pins: list[str] = (),
                 bans: set[str] = frozenset()) -> list[RetrievedKeyframe]:
        """The shot cache: the policy's choice from the bank without the ``bans``, with every pinned
        entry (by name) in it whatever the policy's size."""
        visible = [j for j, e in enumerate(bank) if e.name not in bans]
        view = bank if len(visible) == len(bank) else KeyframeBank([bank.entries[j] for j in visible],
                                                                   bank.dedupe_threshold)
        pinned = [v for v, e in enumerate(view) if e.name in pins]
        if len(view) == 0 or self.cfg.shot_cache.policy == "none":
            chosen = []
        else:
            text_emb = self.models.embedder.embed_texts([plan.prompt])[0]
            wanted = set(plan.shot.entities.names()) | set(plan.shot.options.characters) | ({plan.shot.options.location} - {None})
            required = pinned + [v for v, e in enumerate(view) if e.kind == "reference" and e.label in wanted
                                 and v not in pinned]
            if self.cfg.shot_cache.anchor_characters:
                required += [v for v in self.character_anchors(plan, view) if v not in required]
            chosen = self.policy.select(view, text_emb, required, entities=self.entities_to_show(plan))
        have = {r.bank_index for r in chosen}
        chosen += [RetrievedKeyframe(v, None, "pinned") for v in pinned if v not in have]  # past the policy's size
        return [RetrievedKeyframe(visible[r.bank_index], r.similarity, "pinned" if r.bank_index in pinned else r.role)
                for r in chosen]

    def entities_to_show(self, plan: ShotPlan) -> list[str]:
        """The shot's entities of the kinds memory must represent (``shot_cache.entity_kinds``)."""
        e, kinds = plan.shot.entities, self.cfg.shot_cache.entity_kinds
        return [*(e.characters if "character" in kinds else []), *(e.locations if "location" in kinds else []),
                *(e.objects if "object" in kinds else [])]

    def named_characters(self, plan: ShotPlan) -> set[str]:
        """Sheet characters a shot names: its ``characters`` option, or the name as a word of its prompt."""
        return set(plan.shot.options.characters) | set(names_in(plan.prompt, [c.name for c in self.story.characters]))

    def character_anchors(self, plan: ShotPlan, bank: KeyframeBank) -> list[int]:
        """Bank indices of each named character's anchor: the first keyframe of the earliest earlier
        shot that names it (characters with a reference image in the bank have that instead)."""
        with_reference = {e.label for e in bank if e.kind == "reference"}
        todo = self.named_characters(plan) - with_reference
        if not todo:
            return []
        plans = {p.shot.index: p for p in self.plans()}
        anchors, seen = [], set()
        for i, e in enumerate(bank):  # bank order is story order: a shot's first keyframe comes first
            if not todo:
                break
            if e.kind == "reference" or e.source_shot in seen or e.source_shot not in plans:
                continue
            seen.add(e.source_shot)  # its other keyframes name the same characters: one look per shot
            found = todo & self.named_characters(plans[e.source_shot])
            if found:
                anchors.append(i)
                todo -= found
        return anchors

    def shot_context(self, bank: KeyframeBank, retrieved: list[RetrievedKeyframe], capacity: int,
                     characters: list[str] = ()) -> list[ContextFrames]:
        """The shot-cache block; ``characters``: the shot's, in its order (for a backbone with entity slots)."""
        if not retrieved:
            return []
        sc = self.cfg.shot_cache
        entries = [bank.entries[r.bank_index] for r in retrieved]
        lat = torch.cat([e.latent for e in entries], dim=1)[None]  # [1, C, K, h, w]
        tags = slots = None
        if getattr(self.models.backbone, "entity_proj", None) is not None:
            tags = self.entity_tags([e.entities for e in entries])
        if getattr(self.models.backbone, "slot_proj", None) is not None:
            if getattr(self.models.backbone, "slot_regions", False):  # where in each frame each character is
                sheet = {e.name for e in self.story.entities() if e.kind == "character"}
                slots = slot_regions(list(characters), [_frame_characters(e, sheet) for e in entries], tuple(lat.shape[3:]))
            else:
                slots = entity_slots(list(characters), [tuple(c for c in characters if e.shows(c)) for e in entries])
        return [ContextFrames(lat, memory_positions(len(retrieved), capacity, sc.gap), sc.timestep, 1, kind="shot",
                              spatial=sc.compression, entity_embeddings=tags, entity_slots=slots)]

    def entity_tags(self, shown: list[tuple[str, ...]]) -> torch.Tensor:
        """``[K, D_text]``: per keyframe, the pooled embedding of the names it shows, joined by spaces (as
        the trainer makes them; zeros: nobody)."""
        texts = [" ".join(entities) for entities in shown]
        named = [t for t in texts if t]
        pooled = pooled_embeddings(self.models.prompt_encoder, named).cpu() if named else None
        out = torch.zeros(len(texts), self.models.backbone.config.text_dim)
        rows = [i for i, t in enumerate(texts) if t]
        if rows:
            out[rows] = pooled.float()
        return out

    # -- continuation and conditioning image -------------------------------------------------------------
    def continuation_frames(self, index: int) -> torch.Tensor | None:
        """Latents carried over from the previous shot for a ``cut: false`` shot (MI2V / MM2V)."""
        mode = self.cfg.continuation
        if mode == "none" or index == 0:
            return None
        tail = tail_frames(self.project, index - 1)
        codec = self.models.codec
        if mode == "mi2v":
            return codec.encode_images(tail[-1:]).cpu()  # [1, C, 1, h, w]
        k = min(self.cfg.mm2v_frames, tail.shape[0])
        k = 1 + codec.temporal_factor * ((k - 1) // codec.temporal_factor)
        return codec.encode(tail[-k:].permute(1, 0, 2, 3)[None]).cpu()  # [1, C, 1 + (k-1)/4, h, w]

    def image_condition(self, index: int, bank: KeyframeBank, retrieved: list[RetrievedKeyframe],
                        continuation: str | None, prior_latents: torch.Tensor | None) -> tuple[str, torch.Tensor]:
        """For an image-conditioned backbone (Wan2.1-I2V): the shot's conditioning image and its CLIP
        image tokens ``[1, L_img, image_dim]``.

        The image is what the shot should look like it continues from: the last frame already made
        (an extension's, or the previous shot's for a ``cut: false`` continuation), else the retrieved
        keyframe most similar to the prompt (who and where), else a black frame (the first shot: the
        release model always sees an image; pass ``--first-shot-model`` with a text-to-video release to
        generate it without one)."""
        if prior_latents is not None:  # extending this shot: its own last frame so far
            image, source = tail_frames(self.project, index)[-1], "its own last frame"
        elif continuation is not None:
            image, source = tail_frames(self.project, index - 1)[-1], f"shot {index}'s last frame"
        elif retrieved:
            best = max(retrieved, key=lambda r: -math.inf if r.similarity is None else r.similarity)
            entry = bank.entries[best.bank_index]
            image, source = entry.image, f"keyframe {entry.name}"
        else:
            image, source = torch.zeros(3, self.cfg.height, self.cfg.width), "none (black frame)"
        backbone = self.models.backbone
        embeds = self.models.image_encoder.encode(image[None].float()).to(backbone.device, backbone.dtype)
        return source, embeds


def _frame_characters(entry, characters: set[str]) -> tuple[tuple[str, ...], dict]:
    """A bank entry's characters (of the sheet's ``characters``) in its own shot's order (a reference: its
    label) and their boxes."""
    if entry.kind == "reference":
        return ((entry.label,) if entry.label else ()), {}
    return tuple(n for n in entry.entities if n in characters), dict(entry.boxes)
