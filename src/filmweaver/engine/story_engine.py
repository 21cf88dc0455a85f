"""The story engine: the public operations on one project (generate, resume, regenerate, extend)
and the project's lifecycle, with each shot made by the stages of this package."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from filmweaver.backbone.regional_text import TextRegions, shot_regions
from filmweaver.engine.bank import BankStore
from filmweaver.engine.config import EngineConfig
from filmweaver.engine.denoise import chunk_schedule, denoise_chunks
from filmweaver.engine.editing import reconcile_shots, remap_shot_indices
from filmweaver.engine.events import Progress, ProgressCallback
from filmweaver.engine.finish import ShotContents, finish_shot
from filmweaver.engine.memory import MemoryAssembler
from filmweaver.engine.plan import ShotPlan, chunks_for, plan_shots
from filmweaver.engine.records import ChunkRecord, ShotRecord, ShotTimings
from filmweaver.engine.steering import MemoryEdit, add_reference_image, apply_edit
from filmweaver.engine.step_cache import StepCache
from filmweaver.engine.storymem import storymem_shot
from filmweaver.engine.summaries import write_summaries
from filmweaver.memory.detect import make_detector
from filmweaver.memory.keyframes import KeyframeSelector, StoryMemKeyframeSelector, make_quality_scorer
from filmweaver.memory.shot_cache import make_shot_cache_policy
from filmweaver.models import FilmModels
from filmweaver.progress import progress_bar
from filmweaver.project import Project, ProjectError, ProjectLock
from filmweaver.sampler import FlowMatchSampler
from filmweaver.script import Shot, StoryScript, parse_story
from filmweaver.text import entity_token_slots

log = logging.getLogger("filmweaver")

_VOCABULARY_WARNED: set[str] = set()
UNTRAINED_BANNER = "UNTRAINED MODEL: random weights, output is noise (engine demo / test preset)"


def check_model_fits(cfg: EngineConfig, models: FilmModels) -> None:
    """A ``ValueError`` naming what of ``cfg`` the model cannot do (before anything is generated)."""
    codec = models.codec
    if cfg.height % (codec.spatial_factor * 2) or cfg.width % (codec.spatial_factor * 2):
        raise ValueError(f"height and width must be multiples of {codec.spatial_factor * 2}, got {cfg.height}x{cfg.width}")
    m2v = models.backbone.config.in_channels == 2 * codec.latent_channels + 4
    if m2v and cfg.shot_cache.compression != 1:
        raise ValueError("shot_cache.compression applies to in-context backbones; StoryMem's M2V layout "
                         "takes memory frames at full resolution")
    if getattr(models.backbone.config, "image_dim", None):
        if models.image_encoder is None or not m2v:
            raise ValueError("an image-conditioned (Wan2.1-I2V) transformer needs its CLIP vision tower "
                             "(image_encoder/ and image_processor/ in the model directory) and the I2V input layout "
                             f"({2 * codec.latent_channels + 4} input channels)")
        if models.prompt_encoder.max_sequence_length != 512:
            # diffusers' Wan cross-attention takes everything before the last 512 tokens as image tokens
            raise ValueError("an image-conditioned (Wan2.1-I2V) transformer needs 512 text tokens, the prompt "
                             f"encoder makes {models.prompt_encoder.max_sequence_length}")
    if models.embedder is None:
        raise ValueError("memory needs an image/text embedder: pass --embedder (a CLIP hub id or directory)")


def make_keyframe_selector(cfg: EngineConfig, device: str) -> KeyframeSelector:
    k = cfg.keyframes
    scorer = make_quality_scorer(k.quality_scorer, k.quality_model, device)
    if cfg.storymem.enabled:
        return StoryMemKeyframeSelector(k.max_per_shot, k.start_threshold, k.threshold_step, scorer,
                                        3.0 if k.quality_threshold is None else k.quality_threshold)
    return KeyframeSelector(k.max_per_shot, k.start_threshold, k.threshold_step, scorer, k.quality_threshold)


def warn_vocabulary(models: FilmModels, story: StoryScript) -> None:
    """A closed-vocabulary text encoder (the built-in model's) silently drops words it doesn't know:
    say so, once per model in a process (a benchmark opens an engine per story and method)."""
    if models.model_id in _VOCABULARY_WARNED:
        return
    unseen = models.prompt_encoder.coverage([s.prompt for s in story.shots()])
    message = unseen.warning(f"{models.model_id}'s text encoder on {story.story_name or 'the story'}")
    if message:
        _VOCABULARY_WARNED.add(models.model_id)
        log.warning(message)


def make_samplers(cfg: EngineConfig, models: FilmModels, storymem_layout: bool,
                  user_set: set[str]) -> tuple[FlowMatchSampler, FlowMatchSampler]:
    """The sampler, and the one for StoryMem's first-shot (T2V) model with its own shift and guidance
    (the same one where there is no such model). StoryMem's layout samples at its M2V shift unless the
    user set one."""
    sampler_cfg = cfg.sampler
    if storymem_layout and "sampler.shift" not in user_set:
        sampler_cfg = sampler_cfg.model_copy(update={"shift": cfg.storymem.m2v_shift})
    sampler = FlowMatchSampler(sampler_cfg, models.scheduler_config, boundary=getattr(models.backbone, "boundary", None))
    if not (storymem_layout and models.first_shot_backbone is not None):
        return sampler, sampler
    sm = cfg.storymem
    first = FlowMatchSampler(
        sampler_cfg.model_copy(update={"shift": sm.first_shot_shift, "guidance_scale": sm.first_shot_guidance,
                                       "guidance_scale_2": None, "memory_guidance_scale": 1.0}),
        models.scheduler_config, boundary=getattr(models.first_shot_backbone, "boundary", None))
    return sampler, first


def model_record(models: FilmModels, m2v: bool, image_conditioned: bool) -> dict:
    """What the manifest records of the models a project is made with."""
    rec = {"id": models.model_id, "trained": models.trained, "embedder": models.embedder_id,
           "layout": "m2v" if m2v else "context"}
    if models.setup is not None:
        rec["setup"] = models.setup.model_dump(mode="json")
    if image_conditioned:
        rec["image_encoder"] = models.image_encoder.model_id
    if not models.trained:
        rec["warning"] = UNTRAINED_BANNER
    return rec


class StoryEngine:
    """Generates, resumes, extends and regenerates the shots of one project directory.

    ``StoryEngine(models, project_dir, story=..., config=...)`` starts or reopens a project; without
    ``story`` it reopens the one saved in the project. All operations are idempotent on disk: a
    finished shot whose inputs did not change is never generated again.

    Each shot goes through the stages of :mod:`filmweaver.engine`: plan, assemble memory, denoise,
    finish; the summaries follow each operation.
    """

    def __init__(self, models: FilmModels, project: Project | str | Path, story: StoryScript | None = None,
                 config: EngineConfig | None = None, progress: bool = True, explicit: set[str] = frozenset()):
        self.models = models
        self.project = p = project if isinstance(project, Project) else Project(project)
        self._verified: set[int] = set()  # shots whose files this operation checked or wrote
        # with keep_frames, the frames [F, 3, H, W] in [0, 1] of each shot the last operation made (the API's .frames)
        self.keep_frames = False
        self.last_frames: dict[int, torch.Tensor] = {}
        self.progress = progress
        self.on_progress: ProgressCallback | None = None  # called as shots start, step and finish
        self.story = story if story is not None else p.load_story()
        if config is None and p.exists:
            config = EngineConfig.model_validate(p.manifest["config"])
        self.config = cfg = (config or EngineConfig()).resolve(models, explicit)
        if p.exists and p.manifest.get("model", {}).get("id") not in (None, models.model_id):
            raise ProjectError(
                f"{p.root} was generated with model {p.manifest['model']['id']!r}, not {models.model_id!r}; "
                "use the same model, another output directory, or --force to start over")
        check_model_fits(cfg, models)
        self.m2v = models.backbone.config.in_channels == 2 * models.codec.latent_channels + 4
        # StoryMem's own layout and sampling where the backbone has its (I2V) channel layout
        self.storymem_layout = self.m2v and cfg.storymem.enabled
        self.image_conditioned = bool(getattr(models.backbone.config, "image_dim", None))
        self.sampler, self.first_shot_sampler = make_samplers(cfg, models, self.storymem_layout,
                                                              (config or EngineConfig()).set_fields() | set(explicit))
        self.selector = make_keyframe_selector(cfg, str(models.backbone.device))
        self.detector = make_detector(cfg.keyframes.entity_detector, cfg.keyframes.entity_detector_model,
                                      str(models.backbone.device))
        self.descriptions = {e.name: e.description for e in self.story.entities()}
        warn_vocabulary(models, self.story)
        self.step_cache = StepCache.for_config(cfg, models.experts())
        sc = cfg.shot_cache
        policy = make_shot_cache_policy(sc.policy, sc.k, sc.sink, sc.max_size, sc.per_shot)
        self.bank = BankStore(p, self.story, models, (cfg.height, cfg.width), cfg.keyframes.dedupe_threshold)
        self.memory = MemoryAssembler(models, cfg, p, self.story, policy, self.plan, self.storymem_layout,
                                      self.image_conditioned, self.bank)

    # -- planning ----------------------------------------------------------------------------------
    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.models.codec.latent_size(self.config.height, self.config.width)

    def chunks_for(self, shot: Shot) -> int:
        return chunks_for(shot, self.config, self.models.codec)

    def plan(self) -> list[ShotPlan]:
        return plan_shots(self.story, self.config, self.models.model_id, self.models.codec,
                          self.project.manifest.get("overrides", {}), one_clip_per_shot=self.storymem_layout,
                          memory_edits=self.project.manifest.get("memory_edits"))

    # -- public operations (each holds the project's lock: one writer at a time) ----------------------
    def generate(self, force: bool = False, max_shots: int | None = None) -> list[int]:
        """Generate every shot not already done (all with ``force``). Returns the indices generated."""
        with ProjectLock(self.project.root):
            self._start_project(force)
            plans = self.plan()
            if max_shots is not None:
                plans = plans[:max_shots]
            done = []
            bar = progress_bar(plans, desc="shots", enabled=self.progress)
            for plan in bar:
                i = plan.shot.index
                if not force and self._is_current(plan):
                    continue
                bar.set_postfix_str(f"shot {plan.shot.number}")
                self._generate_shot(plan)
                done.append(i)
            self._write_summaries()
            return done

    def generate_next_shot(self) -> int | None:
        """Generate the first shot that is not done (pending or stale). Returns its index, or None."""
        with ProjectLock(self.project.root):
            self._start_project(False)
            for plan in self.plan():
                if not self._is_current(plan):
                    self._generate_shot(plan)
                    self._write_summaries()
                    return plan.shot.index
            return None

    def regenerate_shot(self, index: int, prompt: str | None = None, seed: int | None = None) -> None:
        """Regenerate shot ``index`` (0-based) with an optional new prompt or seed. Memory is rebuilt
        from the shots before it; later shots are marked stale (they saw the old version)."""
        with ProjectLock(self.project.root):
            self._tidy()
            self._regenerate_shot(index, prompt, seed)

    def extend_shot(self, index: int, chunks: int = 1) -> None:
        """Extend a finished shot by ``chunks`` chunks: the temporal cache is refilled from the shot's
        own latents and the shot cache is retrieved as it was. Later shots are marked stale."""
        if chunks < 1:
            raise ValueError(f"chunks: expected at least 1 chunk to add, got {chunks}")
        with ProjectLock(self.project.root):
            self._tidy()
            self._extend_shot(index, chunks)

    # -- editing the story (memory rebuilt: the changed shot and later ones go stale) ------------------
    def replace_story(self, story: StoryScript, index_map: dict[int, int | None] | None = None) -> tuple[list[int], list[int]]:
        """Put an edited version of the project's story in place. ``index_map``: each old shot index's
        new one (None: deleted), where shots moved (:mod:`filmweaver.script_edit` gives it). Shots
        from the first changed one on are stale; shots past the new end are removed. Returns
        ``(stale indices, removed indices)``."""
        with ProjectLock(self.project.root):
            self._tidy()
            p = self.project
            if not p.exists:
                self._use_story(story)
                self._start_project(False)
                return [], []
            old = self.plan()
            if index_map:
                remap_shot_indices(p, index_map)
            self._use_story(p.import_story(story))
            p.manifest["story"]["name"] = self.story.story_name
            stale, removed = reconcile_shots(p, old, self.plan())
            p.save()
            self._write_summaries()
            return stale, removed

    def edit_shots(self, edit: Callable[[dict], tuple[dict, dict]]) -> tuple[list[int], list[int]]:
        """Apply one of :mod:`filmweaver.script_edit`'s edits to the project's story, e.g.
        ``engine.edit_shots(lambda doc: script_edit.move_shot(doc, 3, 1))``."""
        with ProjectLock(self.project.root):
            doc = json.loads(self.project.story_path.read_text(encoding="utf-8")) if self.project.story_path.is_file() \
                else self.story.model_dump(mode="json", exclude_none=True)
            new_doc, index_map = edit(doc)
            story = parse_story(new_doc, file=self.project.story_path, base_dir=self.project.root)
            return self.replace_story(story, index_map)

    # -- steering memory (engine.steering: pins, bans and references per shot) -------------------------
    def pin(self, index: int, keyframe: str, onward: bool = False) -> list[int]:
        """Keep bank entry ``keyframe`` in shot ``index``'s memory (and every later shot's, ``onward``).
        The shot and later ones go stale; returns their indices."""
        return apply_edit(self.project, MemoryEdit("pin", index, onward, keyframe=keyframe), len(self.story.shots()))

    def ban(self, index: int, keyframe: str, onward: bool = False) -> list[int]:
        """Keep bank entry ``keyframe`` out of shot ``index``'s memory (and later shots', ``onward``)."""
        return apply_edit(self.project, MemoryEdit("ban", index, onward, keyframe=keyframe), len(self.story.shots()))

    def add_reference(self, index: int, image: str | Path, label: str = "", onward: bool = False) -> str:
        """Copy ``image`` into the project and put it in shot ``index``'s memory as a reference of
        ``label`` (an entity of the story, or ""). Returns its path in the project."""
        names = {e.name for e in self.story.entities()}
        if label and label not in names:
            raise ValueError(f"reference label {label!r} is not an entity of the story ({', '.join(sorted(names)) or 'none'})")
        with ProjectLock(self.project.root):
            rel = add_reference_image(self.project, image)
            apply_edit(self.project, MemoryEdit("reference", index, onward, image=rel, label=label),
                       len(self.story.shots()))
            return rel

    def remove_memory_edit(self, action: str, index: int, target: str) -> list[int]:
        """Undo a pin, ban or reference (``target``: the keyframe's name, or the reference's path)."""
        edit = MemoryEdit(action, index, keyframe="" if action == "reference" else target,
                          image=target if action == "reference" else "")
        return apply_edit(self.project, edit, len(self.story.shots()), remove=True)

    def _is_current(self, plan: ShotPlan) -> bool:
        """Done from these inputs with intact files; a damaged shot is reported and redone."""
        p, i = self.project, plan.shot.index
        if p.is_done(i, plan.fingerprint):
            return True
        rec = p.shot_record(i)
        if rec is not None and rec.get("status") == "done" and rec.get("fingerprint") == plan.fingerprint:
            log.warning("shot %d: %s; generating it again", plan.shot.number, p.shot_problem(i))
        return False

    def _regenerate_shot(self, index: int, prompt: str | None, seed: int | None) -> None:
        self._check_index(index)
        self._require_done_before(index)
        ov = self.project.manifest.setdefault("overrides", {}).setdefault(str(index), {})
        if prompt is not None:
            ov["prompt"] = prompt
        if seed is not None:
            ov["seed"] = seed
        ov.pop("extra_chunks", None)
        self._generate_shot(self.plan()[index])
        self._write_summaries()

    def _extend_shot(self, index: int, chunks: int) -> None:
        self._check_index(index)
        if not self.project.is_done(index):
            raise ProjectError(f"shot {index + 1} is not finished; generate it before extending it")
        ov = self.project.manifest.setdefault("overrides", {}).setdefault(str(index), {})
        ov["extra_chunks"] = ov.get("extra_chunks", 0) + chunks
        prior = load_file(str(self.project.shot_state(index)))["latents"]
        self._generate_shot(self.plan()[index], prior_latents=prior)
        self._write_summaries()

    # -- internals -----------------------------------------------------------------------------------
    def _check_index(self, index: int) -> None:
        n = len(self.story.shots())
        if not 0 <= index < n:
            raise IndexError(f"shot {index + 1} does not exist: the story has {n} shots (1..{n})")

    def _require_done_before(self, index: int) -> None:
        # each shot's files are verified once an operation (a shot's cost stays flat along the story)
        missing = [i + 1 for i in range(index) if i not in self._verified and not self.project.is_done(i)]
        if missing:
            raise ProjectError(f"shots {missing} before shot {index + 1} are not finished: run generate first")
        self._verified.update(range(index))

    def _tidy(self) -> None:
        """Under the lock, before writing: say what was recovered, remove what a killed run left. Each
        operation reads the bank from disk once (another process may have written in between)."""
        p = self.project
        self.bank.reset()
        self._verified = set()
        self.last_frames = {}
        if p.recovered:
            log.warning("%s: %s", p.root, p.recovered)
            p.recovered = None
        for part in p.remove_partial_files():
            log.info("removed %s, left by an interrupted write", part)

    def _use_story(self, story: StoryScript) -> None:
        self.story = self.bank.story = self.memory.story = story
        self.descriptions = {e.name: e.description for e in story.entities()}

    def _start_project(self, force: bool) -> None:
        """Under the lock: tidy up, take in the story, record the setup."""
        p = self.project
        m = p.manifest
        self._tidy()
        if force or not p.exists:
            m.clear()
        else:
            p.check_same_story(self.story)
        self._use_story(p.import_story(self.story))  # reference images now resolve inside the project
        m["story"] = {"name": self.story.story_name, "overview": self.story.story_overview, "base_dir": "."}
        m["model"] = model_record(self.models, self.m2v, self.image_conditioned)
        m["config"] = self.config.model_dump(mode="json")
        p.save()

    def _text_regions(self, plan: ShotPlan) -> TextRegions | None:
        """Where each character the shot's prompt describes is (regional prompts: its box in the shot's
        ``layout``, else its strip by the shot's order), or None: the setting off, fewer than two
        characters, or a backbone without the in-context layout."""
        cfg, characters = self.config, list(plan.shot.entities.characters)
        if not cfg.regional_prompts or len(characters) < 2 or self.m2v or self.storymem_layout:
            return None
        self.models.backbone.enable_regional_text()
        slots = entity_token_slots(self.models.prompt_encoder, [plan.prompt], [characters], spans="attributes")[0]
        boxes = {name: tuple(box) for name, box in plan.shot.options.layout.items()}
        strength = float("inf") if cfg.regional_strength is None else cfg.regional_strength
        return TextRegions(slots, shot_regions(characters, self.latent_hw, boxes), strength)

    def _generate_shot(self, plan: ShotPlan, prior_latents: torch.Tensor | None = None) -> dict:
        """Make one shot (or extend it by the chunks its plan adds to ``prior_latents``), write its files,
        then its manifest record. Returns the record."""
        cfg, models, p = self.config, self.models, self.project
        i, backbone = plan.shot.index, models.backbone
        t_start, cpu_start = time.perf_counter(), time.process_time()
        if i > 0:
            self._require_done_before(i)
        num_shots = len(self.story.shots())
        self._emit(Progress("shot", plan.shot.number, num_shots))

        def on_step(chunk, k, n):
            self._emit(Progress("step", plan.shot.number, num_shots, chunk, plan.num_chunks, k, n))

        # 1. Memory: the bank before this shot, the shot cache, the temporal cache (+ continuation).
        bank = self.bank.before(i)
        memory = self.memory.assemble(plan, bank, prior_latents)
        t_memory = time.perf_counter() - t_start

        # 2. Text, then the chunks. In the backbone's dtype once: the same tensors at every step (a
        # causal-context model's key/value cache recognises the prompt by identity).
        text = models.prompt_encoder.encode([plan.prompt]).to(backbone.device, backbone.dtype)
        if getattr(backbone, "text_slot_proj", None) is not None:  # which words speak of which character
            slots = entity_token_slots(models.prompt_encoder, [plan.prompt], [list(plan.shot.entities.characters)])
            text = backbone.add_text_slots(text, slots)
        regions = self._text_regions(plan)
        negative = models.prompt_encoder.encode([plan.negative_prompt]).to(backbone.device, backbone.dtype)
        # an extension keeps the log of the chunks it builds on
        chunk_log = ShotRecord.from_manifest(p.shot_record(i)).chunks if prior_latents is not None else []
        trim = 0  # video frames a StoryMem continuation fixed, dropped from the shot as StoryMem does
        if self.storymem_layout:
            video, trim, memory.continuation, record = storymem_shot(
                models, (self.sampler, self.first_shot_sampler), self.step_cache, cfg, p, plan, memory, text,
                negative, self.latent_hw, self.progress, on_step)
            chunks, records = [video.cpu()], [record]
        else:
            anchor = cfg.keyframe_first and prior_latents is None and len(memory.temporal) == 0
            first_chunk = 0 if prior_latents is None else -(-prior_latents.shape[2] // cfg.chunk_frames)
            if anchor:
                memory.continuation = "keyframe_first"
            chunks, records = denoise_chunks(models, self.sampler, self.step_cache, cfg, self.m2v, plan, memory,
                                             chunk_schedule(plan, cfg.chunk_frames, first_chunk, anchor), text,
                                             negative, self.latent_hw, self.progress, on_step, regions)
        chunk_log += records
        latents = torch.cat(([prior_latents.cpu()] if prior_latents is not None else []) + chunks, dim=2)
        t_denoise = time.perf_counter() - t_start - t_memory

        # 3. Decode, keyframes into the bank, files. The bank is kept in memory for the next shot and
        # saved when the operation ends (derived data: a run killed before then rebuilds it exactly).
        shown = plan.shot.entities
        contents = ShotContents(tuple(shown.names()), tuple(shown.characters), self.descriptions, self.detector)
        done = finish_shot(p, models, self.selector, latents, trim, bank, i, cfg.fps, cfg.mm2v_frames, contents)
        self.bank.after = bank

        # 4. The manifest last.
        stale = p.mark_stale_after(i, f"shot {plan.shot.number} was regenerated")
        timings = ShotTimings(round(t_memory, 3), round(t_denoise, 3), round(done.decode_s, 3),
                              round(done.keyframes_s, 3), round(done.write_s, 3),
                              round(time.perf_counter() - t_start, 3), round(time.process_time() - cpu_start, 3))
        record = self._shot_record(plan, memory, chunk_log, latents, done, timings, stale)
        manifest_record = record.to_manifest()
        p.set_shot_record(manifest_record)
        self._verified.add(i)
        self._verified.difference_update(stale)
        p.save()
        if self.keep_frames:
            self.last_frames[i] = done.frames
        self._emit(Progress("shot_done", plan.shot.number, num_shots))
        return manifest_record

    def _emit(self, event: Progress) -> None:
        if self.on_progress is not None:
            self.on_progress(event)

    def _shot_record(self, plan: ShotPlan, memory, chunk_log: list[ChunkRecord], latents: torch.Tensor, done,
                     timings: ShotTimings, stale: list[int]) -> ShotRecord:
        cfg, p, shot, i = self.config, self.project, plan.shot, plan.shot.index
        shown = shot.entities
        return ShotRecord(
            index=i, number=shot.number, scene_num=shot.scene_num, json_path=shot.json_path, prompt=plan.prompt,
            negative_prompt=plan.negative_prompt, cut=shot.cut, seed=plan.seed, characters=shot.options.characters,
            location=shot.options.location,
            entities={"characters": shown.characters, "locations": shown.locations, "objects": shown.objects},
            status="done", fingerprint=plan.fingerprint, num_chunks=plan.num_chunks,
            num_latent_frames=latents.shape[2], num_frames=done.frames.shape[0], fps=cfg.fps,
            continuation=memory.continuation, chunks=chunk_log, image_condition=memory.image_source,
            shot_cache=memory.describe(cfg.shot_cache.gap), keyframes=done.keyframes,
            keyframe_threshold=done.keyframe_threshold,
            files={"video": p.file_entry(p.shot_video(i)), "state": p.file_entry(p.shot_state(i)),
                   "keyframes": [p.file_entry(p.keyframe_png(k.name)) for k in done.keyframes]},
            timings=timings, finished_at=round(time.time(), 3), made_stale=[s + 1 for s in stale] or None)

    def _write_summaries(self) -> None:
        """After an operation: the step cache's calibration, the keyframe bank, then the pictures and
        the film (:mod:`filmweaver.engine.summaries`)."""
        self.step_cache.write_calibration(self.project.root / "mag_ratios.json")
        self.bank.save()
        write_summaries(self.project, self.config.shot_cache.policy, self.config.fps,
                        None if self.models.trained else UNTRAINED_BANNER)
