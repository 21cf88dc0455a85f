"""What a person looks at after an operation: the storyboard (first, middle and last frame of every
shot), the memory sheet (what the shot cache held for every shot) and ``film.mp4``.

None of them decodes a shot again: the storyboard's thumbnails are kept in each shot's state when the
shot is made, and the film is the shots' H.264 packets copied one after another, so an operation's
summaries cost the same whether the story has 5 shots or 50 done already.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from safetensors import safe_open

from filmweaver.engine.records import ShotRecord
from filmweaver.io import concat_videos, contact_sheet, load_image, read_video, save_png, write_video
from filmweaver.project import Project

log = logging.getLogger("filmweaver")


def storyboard_frames(project: Project, index: int) -> tuple[torch.Tensor, list[int]]:
    """Shot ``index``'s storyboard thumbnails ``[3, 3, h, w]`` in [0, 1] and their frame numbers, from
    its state (a shot from before they were kept there: decoded from its mp4)."""
    with contextlib.suppress(Exception), safe_open(str(project.shot_state(index)), "pt") as f:
        if "storyboard_frames" in f.keys():
            return f.get_tensor("storyboard_frames").float() / 255, f.get_tensor("storyboard_index").tolist()
    frames, _ = read_video(project.shot_video(index))
    picks = sorted({0, len(frames) // 2, len(frames) - 1})
    return frames[picks], picks


def write_film(project: Project, videos: list[Path], fps: int) -> None:
    """film.mp4: the shots' packets copied one after another (lossless, no re-encoding); shots encoded
    differently (an older project's) are decoded and encoded again."""
    try:
        concat_videos(videos, project.film_path)
    except ValueError as e:
        log.info("film.mp4: re-encoding the shots (%s)", e)
        write_video(project.film_path, [read_video(v)[0] for v in videos], fps=fps)


def write_summaries(project: Project, policy: str, fps: int, banner: str | None = None) -> None:
    """Storyboard, memory sheet and film of every shot that has a video (stale ones marked), then
    their paths in the manifest. ``banner``: a warning across the pictures (an untrained model)."""
    p = project
    done = [r for r in map(ShotRecord.from_manifest, p.shots)
            if r.status in ("done", "stale") and p.shot_video(r.index).is_file()]
    if not done:
        return
    board = []
    for r in done:
        thumbs, picks = storyboard_frames(p, r.index)
        status = "" if r.done else " [STALE]"
        caption = f"Shot {r.number} (scene {r.scene_num}, {'cut' if r.cut else 'continues'}){status}: {r.prompt}"
        board.append((caption, [(t, f"frame {k}") for t, k in zip(thumbs, picks, strict=True)]))
    name = p.manifest.get("story", {}).get("name") or "story"
    save_png(contact_sheet(board, title=f"{name}: storyboard", banner=banner), p.storyboard_path)
    mem_rows = []
    for r in done:
        thumbs = []
        for m in r.shot_cache:
            png = p.bank_dir / f"{m.keyframe}.png"
            if png.is_file():
                sim = "-" if m.similarity is None else f"{m.similarity:.2f}"
                who = ", ".join(m.entities)  # whom it shows, where the story says
                thumbs.append((load_image(png), f"{who} ({sim})" if who else f"{m.keyframe} sim {sim}"))
        mem_rows.append((f"Shot {r.number} [{','.join(sorted(set(r.modes)))}]: {r.prompt}", thumbs))
    save_png(contact_sheet(mem_rows, title=f"{name}: shot cache per shot ({policy})", banner=banner),
             p.memory_sheet_path)
    write_film(p, [p.shot_video(r.index) for r in done], fps)
    p.manifest["film"] = p.rel(p.film_path)
    p.manifest["storyboard"] = p.rel(p.storyboard_path)
    p.manifest["memory_sheet"] = p.rel(p.memory_sheet_path)
    p.save()
