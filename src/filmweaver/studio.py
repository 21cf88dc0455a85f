"""The studio: make a film in the browser, shot by shot, with memory you can see and steer.

``filmweaver studio PROJECTS_DIR`` serves a Gradio app on localhost. It is a client of the Python API
(:mod:`filmweaver.pipeline`), like the CLI: the project directory is the only state, so a closed tab or
a killed server loses nothing (the next Generate resumes) and the CLI opens the same projects. Every
write goes through one queue (one job at a time; a waiting user sees their place) and holds the
project's lock; a project another process is writing is shown, with its progress, read-only.
Uploads are checked (type, size) and copied into the project; nothing is served from outside
``PROJECTS_DIR``.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from filmweaver.engine.events import Progress
from filmweaver.io import write_json
from filmweaver.pipeline import FilmReader
from filmweaver.project import Project, ProjectError, ProjectLocked
from filmweaver.script import ScriptError, parse_story

PROJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PROGRESS_FILE = ".studio-progress.json"  # what the running job is doing, for every tab (and process)
PROGRESS_FRESH_S = 15.0  # a progress file older than this is from a job that is no longer running
JOB = "gpu"  # the one concurrency group: every write, one at a time


class StudioError(ValueError):
    """Something the user can fix, shown in the page's message line."""


class Studio:
    """The app's state outside the page: the projects directory and the models (loaded once, on the
    first job). ``load_pipeline()`` -> :class:`~filmweaver.pipeline.FilmPipeline`."""

    def __init__(self, projects_dir: str | Path, load_pipeline: Callable[[], object]):
        self.root = Path(projects_dir).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._load_pipeline = load_pipeline
        self._pipeline = None
        self._films: dict[str, object] = {}
        self._guard = threading.Lock()  # one writer inside this process too (the lock is re-entrant here)

    # -- projects ---------------------------------------------------------------------------------------
    def project_dir(self, name: str) -> Path:
        name = (name or "").strip()
        if not PROJECT_NAME.match(name):
            raise StudioError(f"project name {name!r}: letters, digits, '_', '-' and '.', up to 64 characters")
        return self.root / name

    def projects(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / "manifest.json").is_file())

    def pipeline(self):
        if self._pipeline is None:
            self._pipeline = self._load_pipeline()
        return self._pipeline

    def film(self, name: str, story=None):
        """The :class:`~filmweaver.pipeline.Film` of project ``name`` (a new one needs ``story``)."""
        directory = self.project_dir(name)
        if story is None and name in self._films:
            return self._films[name]
        if story is None and not (directory / "story.json").is_file():
            raise StudioError(f"project {name!r} has no story yet: write one and save it")
        film = self.pipeline().open(directory, story=story)
        self._films[name] = film
        return film

    def run(self, name: str, job: Callable[[object], str], story=None, report: Callable[[Progress], None] | None = None) -> str:
        """``job(film)`` under this process's guard and the project's lock; progress goes to the
        project's progress file (every tab reads it) and to ``report``. Returns the job's message."""
        with self._guard:
            film = self.film(name, story)
            progress_path = film.project.root / PROGRESS_FILE

            last = [0.0]

            def on_progress(event: Progress) -> None:
                now = time.time()
                if event.stage != "step" or now - last[0] > 0.25:  # a few writes a second at most
                    last[0] = now
                    write_json(progress_path, {"text": str(event), "fraction": event.fraction, "pid": os.getpid(),
                                               "time": now})
                if report is not None:
                    report(event)

            film.engine.on_progress = on_progress
            try:
                with film.lock():
                    return job(film)
            finally:
                film.engine.on_progress = None
                progress_path.unlink(missing_ok=True)

    # -- what a page shows ---------------------------------------------------------------------------------
    def running(self, name: str) -> str | None:
        """What a job on project ``name`` is doing now (from any tab or process), or None."""
        try:
            path = self.project_dir(name) / PROGRESS_FILE
            data = json.loads(path.read_text())
        except (OSError, ValueError, StudioError):
            return None
        return data["text"] if time.time() - data.get("time", 0) < PROGRESS_FRESH_S else None

    def story_text(self, name: str) -> str:
        path = self.project_dir(name) / "story.json"
        return path.read_text(encoding="utf-8") if path.is_file() else ""

    def storyboard(self, name: str) -> list[tuple[str, str]]:
        """(picture, caption) per shot: its middle frame's thumbnail from the storyboard state, or a
        placeholder caption for a shot not made yet."""
        film = self._readonly(name)
        if film is None:
            return []
        out = []
        for s in film.shots:
            label = f"Shot {s.number} · {s.status.upper() if s.status != 'done' else 'done'} · {s.prompt[:60]}"
            thumb = self._thumbnail(film.project, s.number - 1) if s.video else None
            if thumb is not None:
                out.append((str(thumb), label))
        return out

    def memory(self, name: str, shot: int) -> tuple[list[tuple[str, str]], list[str], str]:
        """Shot ``shot``'s memory: (picture, caption) per keyframe its shot cache held, the bank entries
        it could be given (for pin / ban), and its memory edits as text."""
        film = self._readonly(name)
        if film is None or not 1 <= shot <= len(film.shots):
            return [], [], ""
        view = film.shots[shot - 1]
        pictures = []
        for m in view.memory:
            path = film.picture(m.keyframe)
            if path is not None:
                sim = "-" if m.similarity is None else f"{m.similarity:.2f}"
                who = ", ".join(m.entities) or "nobody named"
                pictures.append((str(path), f"{m.keyframe} · {m.role} · sim {sim} · {who}"))
        from filmweaver.engine.steering import bank_names

        choices = sorted(bank_names(film.project, shot - 1))
        edits = [e.describe() for e in film.memory_edits if e.applies_to(shot - 1)]
        return pictures, choices, "\n".join(f"- {e}" for e in edits) or "no memory edits"

    def _readonly(self, name: str):
        """A read-only view of a project: its Film when it has a story (no model needed to read)."""
        try:
            directory = self.project_dir(name)
        except StudioError:
            return None
        if not (directory / "manifest.json").is_file():
            return None
        return FilmReader(Project(directory))

    @staticmethod
    def _thumbnail(project: Project, index: int) -> Path | None:
        """``.studio/shot_NNN.png``: the middle storyboard frame of a shot (remade when the shot is)."""
        from filmweaver.engine.summaries import storyboard_frames
        from filmweaver.io import to_pil

        state = project.shot_state(index)
        if not state.is_file():
            return None
        out = project.root / ".studio" / f"shot_{index + 1:03d}.png"
        if not out.is_file() or out.stat().st_mtime < state.stat().st_mtime:
            frames, _ = storyboard_frames(project, index)
            out.parent.mkdir(exist_ok=True)
            from filmweaver.io import atomic_path

            with atomic_path(out) as tmp:
                to_pil(frames[len(frames) // 2]).save(tmp, format="PNG")
        return out


def check_story_text(text: str, base_dir: Path):
    """The story in the editor, parsed; a :class:`StudioError` lists each problem at its JSON path."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise StudioError(f"story: not JSON ({e})") from None
    try:
        return parse_story(data, file="story", base_dir=base_dir)
    except ScriptError as e:
        raise StudioError(str(e)) from None


def user_message(e: Exception) -> str:
    if isinstance(e, ProjectLocked):
        return f"busy: {e}"
    if isinstance(e, StudioError | ProjectError | ValueError | IndexError):
        return f"error: {e}"
    return f"error: {type(e).__name__}: {e}"


def _entity_reference(doc: dict, entity: str, rel: str) -> dict:
    """The story document with ``rel`` added to ``entity``'s reference images (a sheet entry is made
    for an entity only EntityBench's descriptions or the schedule name)."""
    for key in ("characters", "locations", "objects"):
        for spec in doc.get(key, []):
            if spec.get("name") == entity:
                spec.setdefault("reference_images", []).append(rel)
                return doc
    doc.setdefault("characters", []).append({"name": entity, "reference_images": [rel]})
    return doc


def build_ui(studio: Studio, example: str = ""):
    """The Gradio page (Blocks). Element ids (``elem_id``) are the page's stable names (tests use them)."""
    import gradio as gr

    def view(name, shot):
        """What the page shows of project ``name`` with shot ``shot`` selected."""
        shot = int(shot or 1)
        board = studio.storyboard(name)
        directory = studio.project_dir(name) if PROJECT_NAME.match(name or "") else None
        film = directory / "film.mp4" if directory and (directory / "film.mp4").is_file() else None
        video = directory / "shots" / f"shot_{shot:03d}.mp4" if directory else None
        memory, choices, edits = studio.memory(name, shot)
        return (board, str(film) if film else None, str(film) if film else None,
                str(video) if video and video.is_file() else None, memory,
                gr.update(choices=choices, value=choices[-1] if choices else None), edits, status(name))

    def status(name):
        running = studio.running(name) if name else None
        return f"**running:** {running}" if running else "idle"

    def write(job_of, *, story=None, progress=None):
        """A write handler: ``job_of(film)`` under the studio's guard and the lock; its message and the view."""
        def handler(name, shot, *args, progress=gr.Progress()):
            try:
                message = studio.run(name, lambda film: job_of(film, int(shot or 1), *args),
                                     report=lambda e: progress(e.fraction, desc=str(e)))
            except Exception as e:  # noqa: BLE001 - every failure becomes the page's message line
                message = user_message(e)
            return (message, *view(name, shot))
        return handler

    def open_project(name, shot):
        try:
            studio.project_dir(name)
        except StudioError as e:
            return (user_message(e), "", *view("", shot))
        text = studio.story_text(name) or example
        return (f"opened {name}" if studio.story_text(name) else f"new project {name}: save a story to start",
                text, *view(name, shot))

    def save_story(name, shot, text):
        try:
            directory = studio.project_dir(name)
            story = check_story_text(text, directory)
            if (directory / "manifest.json").is_file():
                message = studio.run(name, lambda film: _said_stale(film.engine.replace_story(story)))
            else:
                message = studio.run(name, lambda film: _said_stale(film.engine.replace_story(film.story)), story=story)
        except Exception as e:  # noqa: BLE001
            message = user_message(e)
        return (message, *view(name, shot))

    def generate(film, shot):
        out = film.generate()
        return f"generated shots {out.shots}" if out.shots else "nothing to generate: every shot is done"

    def regenerate(film, shot, prompt, seed):
        film.regenerate(shot, prompt=prompt.strip() or None, seed=None if seed in (None, "") else int(seed))
        return f"regenerated shot {shot}"

    def extend(film, shot, chunks):
        film.extend(shot, int(chunks))
        return f"extended shot {shot} by {int(chunks)} chunk(s)"

    def insert(film, shot, prompt):
        film.insert_shot(shot + 1, prompt)
        return f"inserted shot {shot + 1}: generate to make it"

    def delete(film, shot):
        film.delete_shot(shot)
        return f"deleted shot {shot}"

    def move(film, shot, to):
        film.move_shot(shot, int(to))
        return f"moved shot {shot} to {int(to)}"

    def pin(film, shot, keyframe, onward):
        film.pin(shot, keyframe or "", onward=bool(onward))
        return f"pinned {keyframe} for shot {shot}{' onward' if onward else ''}: regenerate to use it"

    def ban(film, shot, keyframe, onward):
        film.ban(shot, keyframe or "", onward=bool(onward))
        return f"banned {keyframe} for shot {shot}{' onward' if onward else ''}: regenerate to use it"

    def add_reference(film, shot, upload, label, onward):
        if upload is None:
            raise StudioError("reference: choose an image first")
        rel = film.add_reference(shot, upload, label=label or "", onward=bool(onward))
        return f"added {rel} to shot {shot}'s memory"

    def entity_reference(film, shot, upload, entity):
        from filmweaver.engine.steering import add_reference_image

        if upload is None or not entity:
            raise StudioError("entity sheet: choose an entity and an image")
        rel = add_reference_image(film.project, upload)
        doc = json.loads(film.project.story_path.read_text(encoding="utf-8"))
        story = parse_story(_entity_reference(doc, entity, rel), file="story", base_dir=film.project.root)
        return _said_stale(film.engine.replace_story(story), f"{entity}'s reference image added")

    def tick(name, seen):
        """Every tab, every second: the running job's progress; the storyboard when the manifest moved."""
        try:
            mtime = (studio.project_dir(name) / "manifest.json").stat().st_mtime
        except (OSError, StudioError):
            return status(name), gr.update(), seen
        if mtime == seen:
            return status(name), gr.update(), seen
        return status(name), studio.storyboard(name), mtime

    with gr.Blocks(title="filmweaver studio") as page:
        gr.Markdown("# filmweaver studio")
        with gr.Row():
            name = gr.Textbox(label="project", elem_id="project", scale=3)
            open_btn = gr.Button("Open", elem_id="open", scale=1)
            state = gr.Markdown("idle", elem_id="status")
        message = gr.Markdown("", elem_id="message")
        seen = gr.State(None)
        with gr.Row():
            with gr.Column(scale=2):
                story = gr.Textbox(label="story (JSON)", lines=16, max_lines=40, elem_id="story-json")
                save_btn = gr.Button("Save story", elem_id="save-story")
                with gr.Accordion("entity sheet: reference images", open=False):
                    entity = gr.Textbox(label="entity name", elem_id="entity-name")
                    entity_image = gr.File(label="reference image", file_types=["image"], type="filepath",
                                           elem_id="entity-image")
                    entity_btn = gr.Button("Add to the sheet", elem_id="entity-add")
                generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=3):
                board = gr.Gallery(label="storyboard", columns=4, height=260, elem_id="storyboard")
                film_video = gr.Video(label="film", height=240, elem_id="film")
                film_file = gr.File(label="download the film", elem_id="film-file")
        with gr.Row():
            with gr.Column():
                shot = gr.Number(value=1, precision=0, minimum=1, label="shot", elem_id="shot")
                shot_video = gr.Video(label="shot", height=200, elem_id="shot-video")
                prompt = gr.Textbox(label="new prompt (empty: keep)", elem_id="shot-prompt")
                seed = gr.Number(value=None, precision=0, label="new seed (empty: keep)", elem_id="shot-seed")
                with gr.Row():
                    regen_btn = gr.Button("Regenerate", elem_id="regenerate")
                    chunks = gr.Number(value=1, precision=0, minimum=1, label="chunks", elem_id="chunks")
                    extend_btn = gr.Button("Extend", elem_id="extend")
                with gr.Row():
                    insert_btn = gr.Button("Insert after (new prompt)", elem_id="insert")
                    delete_btn = gr.Button("Delete", elem_id="delete")
                    to = gr.Number(value=1, precision=0, minimum=1, label="move to", elem_id="move-to")
                    move_btn = gr.Button("Move", elem_id="move")
            with gr.Column():
                memory = gr.Gallery(label="memory: the keyframes this shot's cache held", columns=4, height=220,
                                    elem_id="memory")
                edits = gr.Markdown("", elem_id="memory-edits")
                keyframe = gr.Dropdown(label="keyframe", choices=[], elem_id="keyframe")
                onward = gr.Checkbox(label="from this shot on", elem_id="onward")
                with gr.Row():
                    pin_btn = gr.Button("Pin", elem_id="pin")
                    ban_btn = gr.Button("Ban", elem_id="ban")
                ref_image = gr.File(label="reference image for this shot", file_types=["image"], type="filepath",
                                    elem_id="ref-image")
                ref_label = gr.Textbox(label="whom it shows", elem_id="ref-label")
                ref_btn = gr.Button("Add reference", elem_id="ref-add")

        views = [board, film_video, film_file, shot_video, memory, keyframe, edits, state]
        out = [message, *views]
        queued = {"concurrency_id": JOB, "concurrency_limit": 1}
        open_btn.click(open_project, [name, shot], [message, story, *views])
        save_btn.click(save_story, [name, shot, story], out, **queued)
        generate_btn.click(write(generate), [name, shot], out, **queued)
        regen_btn.click(write(regenerate), [name, shot, prompt, seed], out, **queued)
        extend_btn.click(write(extend), [name, shot, chunks], out, **queued)
        insert_btn.click(write(insert), [name, shot, prompt], out, **queued)
        delete_btn.click(write(delete), [name, shot], out, **queued)
        move_btn.click(write(move), [name, shot, to], out, **queued)
        pin_btn.click(write(pin), [name, shot, keyframe, onward], out, **queued)
        ban_btn.click(write(ban), [name, shot, keyframe, onward], out, **queued)
        ref_btn.click(write(add_reference), [name, shot, ref_image, ref_label, onward], out, **queued)
        entity_btn.click(write(entity_reference), [name, shot, entity_image, entity], out, **queued)
        shot.change(lambda n, s: view(n, s), [name, shot], views)
        gr.Timer(1.0).tick(tick, [name, seen], [state, board, seen], concurrency_limit=None, show_progress="hidden")
    return page


def _said_stale(result: tuple[list[int], list[int]], done: str = "story saved") -> str:
    stale, removed = result
    parts = [done]
    if stale:
        parts.append(f"stale now: shots {[i + 1 for i in stale]}")
    if removed:
        parts.append(f"removed: shots {[i + 1 for i in removed]}")
    return "; ".join(parts)


def launch(studio: Studio, host: str = "127.0.0.1", port: int = 7860, max_upload_mb: int = 20, example: str = "",
           block: bool = True):
    """Serve the studio. Only ``PROJECTS_DIR`` is served besides Gradio's own uploads."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
    page = build_ui(studio, example)
    page.queue(default_concurrency_limit=1)
    return page.launch(server_name=host, server_port=port, allowed_paths=[str(studio.root)], ssr_mode=False,
                       max_file_size=f"{max_upload_mb}mb", prevent_thread_lock=not block, quiet=True,
                       footer_links=[])
