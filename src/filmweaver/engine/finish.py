"""Stage 4, finish: decode a shot, choose its keyframes and add the new ones to the bank, write its
files (video, state, keyframe PNGs). The manifest is written after these, by the engine."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from safetensors.torch import save_file

from filmweaver.engine.records import KeyframeRecord
from filmweaver.io import as_8bit, atomic_path, save_png, storyboard_thumbnails, to_pil, write_video
from filmweaver.memory.detect import EntityDetector, locate_entities
from filmweaver.memory.keyframes import Keyframe, KeyframeBank, StoryMemKeyframeSelector
from filmweaver.project import Project


@dataclass
class FinishedShot:
    frames: torch.Tensor  # [T, 3, H, W] in [0, 1]
    keyframes: list[KeyframeRecord]
    keyframe_threshold: float
    decode_s: float
    keyframes_s: float
    write_s: float


def select_keyframes(embedder, selector, frames: torch.Tensor, bank: KeyframeBank, index: int):
    """``(selection, embeddings [T, D], what new keyframes are deduplicated against, the frames
    keyframes are taken from)``.

    filmweaver: every frame embedded (centre crop), deduplicated against the whole bank, this shot's
    new keyframes included. StoryMem: the frames as read back from the 8-bit video, resized and
    embedded whole for selection; the bank keeps each keyframe's full-frame embedding, and new
    keyframes are compared only with earlier shots' (at 0.9)."""
    if not isinstance(selector, StoryMemKeyframeSelector):
        embs = embedder.embed_images(frames)
        return selector.select(embs, frames), embs, bank, frames
    frames8 = as_8bit(frames)
    prepared = selector.prepare(frames8)
    sel = selector.select(embedder.embed_images(prepared, resize="squash"), prepared)
    # only the keyframes' rows are read: each keyframe's full-frame embedding
    embs = torch.zeros(frames.shape[0], 0)
    if sel.frame_indices:
        full = embedder.embed_images(frames8[sel.frame_indices], resize="squash")
        embs = full.new_zeros(frames.shape[0], full.shape[1])
        embs[sel.frame_indices] = full
    return sel, embs, bank.before_shot(index), frames8


@dataclass
class ShotContents:
    """Who and what a shot shows, for its keyframes: the shot's entities; ``characters`` (with their
    ``descriptions``) are located by ``detector`` where one is configured."""

    entities: tuple[str, ...] = ()
    characters: tuple[str, ...] = ()
    descriptions: dict[str, str] = field(default_factory=dict)
    detector: EntityDetector | None = None

    def locate(self, embedder, images: torch.Tensor) -> list[dict[str, tuple[float, ...]]]:
        """Per image ``[N, 3, H, W]``: each located character's box (fractions of the frame)."""
        if self.detector is None or not self.characters:
            return [{} for _ in images]
        return [{name: tuple(box.as_list()) for name, box in named.items()}
                for named in locate_entities(self.detector, embedder, images, list(self.characters), self.descriptions)]


def add_keyframes(project: Project, models, selector, frames: torch.Tensor, bank: KeyframeBank, index: int,
                  contents: ShotContents | None = None):
    """Choose the shot's keyframes, add those unlike the bank to it and save every keyframe's PNG.
    Returns ``(records, selection threshold, the new bank entries' tensors for the shot's state)``."""
    p, i = project, index
    contents = contents or ShotContents()
    sel, embs, earlier, source = select_keyframes(models.embedder, selector, frames, bank, i)
    records, images = [], source[sel.frame_indices]
    latents = models.codec.encode_images(images).cpu()
    located = contents.locate(models.embedder, images)
    bank_tensors = {}
    for fi, img, lat, boxes in zip(sel.frame_indices, images, latents, located, strict=True):
        # as the bank saves and reloads it (8-bit picture, float32 tensors): a bank kept in memory
        # between shots equals one read back from disk, so a resumed story is the same film
        kf = Keyframe(as_8bit(img), embs[fi].float(), lat.float(), source_shot=i, frame_index=fi,
                      entities=contents.entities, boxes=boxes)
        max_sim = earlier.max_similarity(embs[fi])
        added = max_sim <= bank.dedupe_threshold
        if added:
            bank.add(kf, dedupe=False)
            # kept in the shot's state too: the bank can be rebuilt from the shots alone
            bank_tensors[f"bank.{fi}.embedding"] = kf.embedding.contiguous()
            bank_tensors[f"bank.{fi}.latent"] = kf.latent.contiguous()
        records.append(KeyframeRecord(kf.name, p.rel(p.keyframe_png(kf.name)), fi, added, round(max_sim, 4),
                                      list(kf.entities), {k: list(v) for k, v in boxes.items()}))
        save_png(to_pil(img), p.keyframe_png(kf.name))
    # keyframes an earlier version of this shot selected and this one did not
    kept = {p.keyframe_png(r.name).name for r in records}
    for old in p.keyframes_dir.glob(f"shot{i + 1:03d}_f*.png"):
        if old.name not in kept:
            old.unlink()
    return records, sel.threshold, bank_tensors


def finish_shot(project: Project, models, selector, latents: torch.Tensor, trim: int, bank: KeyframeBank,
                index: int, fps: int, tail_length: int, contents: ShotContents | None = None) -> FinishedShot:
    """Decode ``latents [1, C, F, h, w]`` (dropping ``trim`` leading frames), add keyframes, write the
    video and the state file (latents, the last ``tail_length`` frames for a continuation, the new
    bank entries, the storyboard's thumbnails, so the summaries never decode the shots again)."""
    codec, p, i = models.codec, project, index
    t0 = time.perf_counter()
    frames = codec.decode(latents.to(codec.device))[0].permute(1, 0, 2, 3).cpu()[trim:]  # [T, 3, H, W]
    t1 = time.perf_counter()
    records, threshold, bank_tensors = add_keyframes(p, models, selector, frames, bank, i, contents)
    t2 = time.perf_counter()
    write_video(p.shot_video(i), frames, fps=fps)
    tail = frames[-max(1, tail_length):].contiguous()
    picks = sorted({0, frames.shape[0] // 2, frames.shape[0] - 1})
    with atomic_path(p.shot_state(i)) as tmp:
        save_file({"latents": latents.contiguous(), "tail_frames": tail, **bank_tensors,
                   "storyboard_frames": storyboard_thumbnails(frames[picks]),
                   "storyboard_index": torch.tensor(picks)}, tmp)
    t3 = time.perf_counter()
    return FinishedShot(frames, records, threshold, t1 - t0, t2 - t1, t3 - t2)
