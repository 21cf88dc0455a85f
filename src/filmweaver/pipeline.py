"""The Python API: the models once (:class:`FilmPipeline`), a project to work on shot by shot (:class:`Film`).

    from filmweaver import FilmPipeline

    pipe = FilmPipeline.from_pretrained()                      # the built-in model (or a hub id / directory)
    film = pipe.open("out/lighthouse", story="examples/lighthouse.json")
    out = film.generate(callback=print)                        # out.frames: one [F, 3, H, W] tensor per shot made
    film.regenerate(2, seed=7)                                 # shot numbers are 1-based, as on the CLI
    film.pin(3, "shot001_f0000")                               # keep a keyframe in shot 3's memory
    film.generate()                                            # remakes what the pin made stale

Everything is also written to the project directory (the only state: the CLI and the studio open the
same projects), each operation under the project's lock. Shot numbers are 1-based throughout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from filmweaver import script_edit
from filmweaver.engine import EngineConfig, ShotRecord, StoryEngine
from filmweaver.engine.events import ProgressCallback
from filmweaver.engine.memory import ADDED_REFERENCE_BASE
from filmweaver.engine.steering import memory_edits
from filmweaver.io import read_video
from filmweaver.methods import method_config
from filmweaver.project import Project, ProjectLock
from filmweaver.runtime import ModelSetup, RuntimeOptions, load_film_models
from filmweaver.script import StoryScript, load_story, parse_story


@dataclass
class FilmOutput:
    """What one operation made: ``frames`` ``[F, 3, H, W]`` in ``[0, 1]``, one tensor per shot in
    ``shots`` (their numbers), and where the project and its film are."""

    shots: list[int]
    frames: list[torch.Tensor]
    project_dir: Path
    film: Path | None = None


@dataclass
class ShotView:
    """One shot as the project holds it (for listing and inspection)."""

    number: int
    prompt: str
    status: str  # "pending" | "done" | "stale"
    stale_reason: str | None = None
    video: Path | None = None
    memory: list = field(default_factory=list)  # MemoryRecord per shot-cache keyframe
    keyframes: list = field(default_factory=list)  # KeyframeRecord per keyframe it gave the bank
    characters: list[str] = field(default_factory=list)


class FilmPipeline:
    """The models of a film, loaded once; :meth:`open` gives a :class:`Film` on a project directory."""

    def __init__(self, models, runtime: RuntimeOptions | None = None):
        self.models = models
        self.runtime = runtime or RuntimeOptions()

    @classmethod
    def from_pretrained(cls, model: str | Path | None = None, *, preset: str | None = None, embedder: str | None = None,
                        lora: str | Path | None = None, lora_2: str | Path | None = None,
                        first_shot_model: str | None = None, device: str = "auto", dtype: str = "float32",
                        offload: str = "none", attention: str | None = None) -> FilmPipeline:
        """Load a film's models. ``model``: a Wan hub id or a local directory (diffusers layout);
        without it, ``preset`` (``"synth"``: the built-in model, the default; ``"tiny"``: random
        weights for tests). Nothing is downloaded that you did not name."""
        setup = ModelSetup.from_options(preset=preset, model=None if model is None else str(model), embedder=embedder,
                                        lora=None if lora is None else str(lora),
                                        lora_2=None if lora_2 is None else str(lora_2), first_shot_model=first_shot_model)
        runtime = RuntimeOptions(device=device, dtype=dtype, offload=offload, attention=attention).check()
        return cls(load_film_models(setup, runtime), runtime)

    def open(self, directory: str | Path, story: str | Path | dict | StoryScript | None = None,
             config: EngineConfig | dict | None = None, method: str | None = None, progress: bool = False) -> Film:
        """A :class:`Film` on ``directory``: a new project from ``story`` (a script file, its parsed
        dict, or a :class:`StoryScript`), or an existing one (its own story and settings; a ``story``
        given is an edited version of it). ``config`` / ``method``: the film's settings (new projects)."""
        if isinstance(story, str | Path):
            story = load_story(story)
        elif isinstance(story, dict):
            story = parse_story(story)
        if isinstance(config, dict) or method is not None:
            config = method_config(method, config) if method else EngineConfig.model_validate(config)
        project = Project(directory)
        if project.exists and story is not None:
            project.check_same_story(story)
        engine = StoryEngine(self.models, project, story=story, config=config, progress=progress)
        engine.keep_frames = True
        return Film(engine)

    def __call__(self, story, directory: str | Path, callback: ProgressCallback | None = None, **open_kwargs) -> FilmOutput:
        """Story in, film out: ``open(directory, story, ...).generate(callback=callback)``."""
        return self.open(directory, story, **open_kwargs).generate(callback=callback)


class FilmReader:
    """A project read without models: its shots, their memory, pictures and frames (the studio's page
    and tools read projects this way while a job writes them)."""

    def __init__(self, project: Project | str | Path):
        self.project = project if isinstance(project, Project) else Project(project)

    @property
    def memory_edits(self):
        return memory_edits(self.project.manifest)

    # -- reading ---------------------------------------------------------------------------------------
    @property
    def story(self) -> StoryScript:
        return self.project.load_story()

    @property
    def shots(self) -> list[ShotView]:
        """Every shot of the story, with its status and memory (read from the manifest)."""
        views = []
        for shot in self.story.shots():
            rec = self.project.shot_record(shot.index)
            if rec is None:
                views.append(ShotView(shot.number, shot.prompt, "pending", characters=shot.entities.characters))
                continue
            r = ShotRecord.from_manifest(rec)
            video = self.project.shot_video(shot.index)
            views.append(ShotView(shot.number, r.prompt, r.status, rec.get("stale_reason"),
                                  video if video.is_file() else None, r.shot_cache, r.keyframes,
                                  shot.entities.characters))
        return views

    def picture(self, name: str) -> Path | None:
        """The PNG of a bank entry or keyframe by name (a shot's keyframe, a story reference, or a
        reference added to one shot's memory), or None."""
        for path in (self.project.bank_dir / f"{name}.png", self.project.keyframe_png(name)):
            if path.is_file():
                return path
        if name.startswith("ref_"):  # an added reference: ref_<label>_<ADDED_REFERENCE_BASE + n>
            n = int(name.rsplit("_", 1)[1]) - ADDED_REFERENCE_BASE
            added = [e for e in self.memory_edits if e.action == "reference"]
            if 0 <= n < len(added):
                return self.project.root / added[n].image
        return None

    def frames(self, shot: int) -> torch.Tensor:
        """Shot ``shot``'s frames ``[F, 3, H, W]`` in ``[0, 1]``, read from its video."""
        return read_video(self.project.shot_video(shot - 1))[0]



class Film(FilmReader):
    """One project: generate, regenerate, extend, edit its shots, steer each shot's memory."""

    def __init__(self, engine: StoryEngine):
        super().__init__(engine.project)
        self.engine = engine

    @property
    def story(self) -> StoryScript:
        return self.engine.story

    # -- making shots --------------------------------------------------------------------------------
    def generate(self, max_shots: int | None = None, force: bool = False,
                 callback: ProgressCallback | None = None) -> FilmOutput:
        """Every shot not done (pending, stale, damaged); ``force``: all of them."""
        return self._run(lambda: self.engine.generate(force=force, max_shots=max_shots), callback)

    def next(self, callback: ProgressCallback | None = None) -> FilmOutput:
        """The first shot that is not done."""
        def one():
            index = self.engine.generate_next_shot()
            return [] if index is None else [index]
        return self._run(one, callback)

    def regenerate(self, shot: int, prompt: str | None = None, seed: int | None = None,
                   callback: ProgressCallback | None = None) -> FilmOutput:
        """Shot ``shot`` again (a new prompt or seed); later shots become stale."""
        def again():
            self.engine.regenerate_shot(shot - 1, prompt, seed)
            return [shot - 1]
        return self._run(again, callback)

    def extend(self, shot: int, chunks: int = 1, callback: ProgressCallback | None = None) -> FilmOutput:
        """Shot ``shot`` longer by ``chunks`` chunks; later shots become stale."""
        def longer():
            self.engine.extend_shot(shot - 1, chunks)
            return [shot - 1]
        return self._run(longer, callback)

    def _run(self, operation, callback) -> FilmOutput:
        previous = self.engine.on_progress  # a caller's own (the studio's) stays where none is given
        self.engine.on_progress = callback or previous
        try:
            made = operation()
        finally:
            self.engine.on_progress = previous
        frames = [self.engine.last_frames[i] for i in made if i in self.engine.last_frames]
        film = self.project.film_path if self.project.film_path.is_file() else None
        return FilmOutput([i + 1 for i in made], frames, self.project.root, film)

    # -- editing the story ------------------------------------------------------------------------------
    def insert_shot(self, at: int, prompt: str, cut: bool = True, **options) -> None:
        """A new shot numbered ``at`` (``len(shots) + 1`` appends); it and every later shot go stale."""
        self.engine.edit_shots(lambda doc: script_edit.insert_shot(doc, at - 1, prompt, cut, options or None))

    def delete_shot(self, shot: int) -> None:
        self.engine.edit_shots(lambda doc: script_edit.delete_shot(doc, shot - 1))

    def move_shot(self, shot: int, to: int) -> None:
        """Shot ``shot`` to number ``to``; the shots from the first moved place on go stale."""
        self.engine.edit_shots(lambda doc: script_edit.move_shot(doc, shot - 1, to - 1))

    def edit_shot(self, shot: int, prompt: str | None = None, cut: bool | None = None, **options) -> None:
        self.engine.edit_shots(lambda doc: script_edit.set_shot(doc, shot - 1, prompt, cut, options or None))

    def set_story(self, story: str | Path | dict | StoryScript) -> None:
        """Replace the story with an edited version (shots up to the first change stay done)."""
        if isinstance(story, str | Path):
            story = load_story(story)
        elif isinstance(story, dict):
            story = parse_story(story, file=self.project.story_path, base_dir=self.project.root)
        self.engine.replace_story(story)

    # -- steering memory ---------------------------------------------------------------------------------
    def pin(self, shot: int, keyframe: str, onward: bool = False) -> list[int]:
        """Keep ``keyframe`` (a bank entry's name) in shot ``shot``'s memory (and later shots', ``onward``).
        Returns the numbers of the shots now stale."""
        return [i + 1 for i in self.engine.pin(shot - 1, keyframe, onward)]

    def ban(self, shot: int, keyframe: str, onward: bool = False) -> list[int]:
        return [i + 1 for i in self.engine.ban(shot - 1, keyframe, onward)]

    def unpin(self, shot: int, keyframe: str) -> list[int]:
        return [i + 1 for i in self.engine.remove_memory_edit("pin", shot - 1, keyframe)]

    def unban(self, shot: int, keyframe: str) -> list[int]:
        return [i + 1 for i in self.engine.remove_memory_edit("ban", shot - 1, keyframe)]

    def add_reference(self, shot: int, image: str | Path, label: str = "", onward: bool = False) -> str:
        """An image of yours in shot ``shot``'s memory, showing ``label`` (an entity of the story)."""
        return self.engine.add_reference(shot - 1, image, label, onward)

    def lock(self) -> ProjectLock:
        """The project's writer lock (held by every operation; take it to keep other writers out)."""
        return ProjectLock(self.project.root)
