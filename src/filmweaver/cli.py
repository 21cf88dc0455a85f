"""``filmweaver`` command line: validate, generate (resumable), next, extend, regenerate, info, train, eval,
benchmark."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import logging
import os
from pathlib import Path

# torch's OpenMP threads spin at every barrier by default; on a CPU that other processes also use they
# take turns with those processes and a film takes 2-4x longer (the main job on 2 cores: 33 s idle,
# 95 s beside one busy process, 128 s beside two). Waiting passively: 50-56 s and 57 s, for about 4.6 s
# more on an idle CPU (BENCHMARKS.md, "CPU threads under load"). Read when torch is first imported,
# which the commands do lazily, after this; OMP_WAIT_POLICY set in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from typing import Annotated  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402

from filmweaver.methods import METHODS  # noqa: E402
from filmweaver.script import ScriptError, load_story  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Story script in, consistent multi-shot film out.")
console = Console(stderr=True, soft_wrap=True)  # one-line errors stay one line

def _version(value: bool):
    if value:
        from importlib.metadata import version

        typer.echo(f"filmweaver {version('filmweaver')}")
        raise typer.Exit()


class _ConsoleHandler(logging.Handler):
    """Log records as one line each on the console ("warning: ..."), never wrapped: a message that
    names a file or a shot stays greppable whatever the terminal's width."""

    def emit(self, record: logging.LogRecord) -> None:
        from rich.markup import escape

        style = {logging.WARNING: "bold yellow", logging.ERROR: "bold red"}.get(record.levelno)
        tag = f"[{style}]{record.levelname.lower()}:[/] " if style else ""
        console.print(tag + escape(record.getMessage()), highlight=False)


@app.callback()
def _main(quiet: bool = typer.Option(False, "-q", "--quiet", help="no progress bars, warnings and errors only"),
          verbose: bool = typer.Option(False, "-v", "--verbose", help="say more (each step's details)"),
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")):
    """Story script in, consistent multi-shot film out."""
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"
    log = logging.getLogger("filmweaver")
    log.handlers[:] = [_ConsoleHandler()]
    log.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


def _fail(message: str, code: int = 2):
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


# -- options every generating command shares -------------------------------------------------------
# Which weights make the film (recorded in the project; follow-up commands reuse it when not given).
Preset = Annotated[str | None, typer.Option(help="synth (built-in, the default for a new project), tiny (random, for "
                   "tests), or a Wan release: wan2.1-t2v-1.3b, wan2.1-t2v-14b, wan2.2-ti2v-5b, wan2.2-t2v-a14b, "
                   "wan2.2-i2v-a14b (hub id, or --model DIR); follow-ups: the project's")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="diffusers Wan hub id or local directory")]
Embedder = Annotated[str | None, typer.Option(help="CLIP hub id or directory for keyframes and retrieval")]
Lora = Annotated[str | None, typer.Option(help="LoRA file for the transformer (Wan or diffusers key names; "
                                          "StoryMem's backbone_high_noise.pth)")]
Lora2 = Annotated[str | None, typer.Option(help="LoRA file for the second expert of Wan2.2 A14B (StoryMem's "
                                           "backbone_low_noise.pth)")]
FirstShot = Annotated[str | None, typer.Option(help="StoryMem: a T2V Wan (hub id or dir, e.g. "
                      "Wan-AI/Wan2.2-T2V-A14B-Diffusers) for chunks with nothing in memory; only its transformer(s) load")]
# How they run (any command, never recorded).
Device = Annotated[str, typer.Option(help="auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps")]
Dtype = Annotated[str, typer.Option(help="float32 | bfloat16 | float16 (or fp32, bf16, fp16)")]
Offload = Annotated[str, typer.Option(help="none | model: keep the text encoder, transformer(s) and VAE in CPU "
                    "memory, one at a time on the GPU (small GPUs) | block: as model, but stream each transformer's "
                    "blocks one at a time (GPUs that cannot hold one transformer; slow)")]
Attention = Annotated[str | None, typer.Option(help="attention backend: a diffusers one (flash, _native_cudnn, native, "
                      "sage...) or flash4 (the installed flash-attn-4 package; Hopper/Blackwell)")]
Compile = Annotated[bool, typer.Option("--compile", help="torch.compile the repeated transformer blocks")]
VaeTiling = Annotated[bool, typer.Option("--vae-tiling", help="decode/encode in tiles (less GPU memory at high "
                                         "resolution)")]
FuseQkv = Annotated[bool, typer.Option("--fuse-qkv", help="one q/k/v matrix product per attention layer (LoRA "
                                       "adapters are merged in first)")]
FuseFfn = Annotated[bool, typer.Option("--fuse-ffn", help="CUDA: each FFN's up-projection and GELU in one cuBLASLt "
                                       "call (LoRA adapters are merged in first)")]
Force = Annotated[bool, typer.Option("--force", help="regenerate everything, even finished shots (and replace the "
                                     "project's story and models)")]


def _runtime(device: str, dtype: str, offload: str = "none", attention: str | None = None, compile_blocks: bool = False,
             vae_tiling: bool = False, fuse_qkv: bool = False, fuse_ffn: bool = False):
    """Checked runtime options (device resolved), before anything loads."""
    from pydantic import ValidationError

    from filmweaver.runtime import DTYPES, RuntimeOptions, SetupError

    if dtype not in DTYPES:
        _fail(f"--dtype {dtype!r}: choose from {', '.join(DTYPES)}")
    try:
        return RuntimeOptions(device=device, dtype=DTYPES[dtype], offload=offload, attention=attention,
                              compile_blocks=compile_blocks, vae_tiling=vae_tiling, fuse_qkv=fuse_qkv,
                              fuse_ffn=fuse_ffn).check()
    except ValidationError as e:
        err = e.errors()[0]
        _fail(f"--{str(err['loc'][0]).replace('_', '-')} {err.get('input')!r}: {err['msg']}")
    except SetupError as e:
        _fail(str(e))


def _model_setup(recorded: dict | None, **given):
    """The model setup for a command: a project's ``recorded`` one (checked against what was given), or
    a new one from the options (``None`` = not given)."""
    from filmweaver.runtime import ModelSetup, SetupError

    given = {k: v for k, v in given.items() if v is not None}
    try:
        if recorded is not None:
            return ModelSetup.model_validate(recorded).reconcile(given)
        return ModelSetup.from_options(**given)
    except SetupError as e:
        _fail(str(e))


def _recorded_setup(project) -> dict | None:
    return project.manifest.get("model", {}).get("setup")


def _require_project(out: Path) -> None:
    """A one-line error unless ``out`` is a directory holding a manifest (or its backup copy)."""
    if not (out.is_dir() and ((out / "manifest.json").is_file() or (out / "manifest.backup.json").is_file())):
        _fail(f"{out} is not a filmweaver project (no manifest.json)")


def _read_project(out: Path, must_exist: bool = True, hint: str = ""):
    """``out``'s :class:`~filmweaver.project.Project`, or a one-line error: not a project (when
    ``must_exist``), or not ours, or damaged beyond its backup copy."""
    from filmweaver.project import Project, ProjectError

    if must_exist:
        _require_project(out)
    try:
        project = Project(out)
    except ProjectError as e:
        _fail(str(e))
    if must_exist and not project.exists:
        _fail(f"{out}: {project.recovered}{hint}")
    return project


def _load_models(setup, runtime):
    from filmweaver.models import ModelLoadError
    from filmweaver.runtime import SetupError, load_film_models

    try:
        models = load_film_models(setup, runtime)
    except (ModelLoadError, SetupError, OSError) as e:
        _fail(str(e))
    if not models.trained:
        console.print(f"[bold yellow]warning:[/] {models.model_id} is an UNTRAINED random model: the film will be "
                      "noise. It exercises the engine end to end; pass --model for real weights.", highlight=False)
    return models


@contextlib.contextmanager
def _locked(out: Path):
    """The project's writer lock for the command's whole run, taken before any model loads (a second
    writer is refused at once) and released when the command ends, however it ends (an error, a
    failed check): a command run in-process (the Python API, tests) leaves the project free."""
    from filmweaver.project import ProjectError, ProjectLock

    lock = ProjectLock(out)
    try:
        lock.acquire()
    except (ProjectError, OSError) as e:
        _fail(str(e))
    try:
        yield lock
    finally:
        lock.release()


ExternalRefs = Annotated[bool, typer.Option("--allow-external-references", help="accept reference images outside "
                                            "the script's folder (refused by default: a script must not "
                                            "read arbitrary files)")]


@app.command()
def validate(script: Path = typer.Argument(..., help="story script (ST-Bench / EntityBench JSON)"),
             allow_external_references: ExternalRefs = False,
             as_json: bool = typer.Option(False, "--json", help="print the parsed script (entity sheet, every shot "
                                          "with its entities, warnings) as JSON, for tools")):
    """Check a story script; print a summary with each shot's entities, or every problem with its JSON path."""
    from filmweaver.script import entity_warnings

    try:
        story = load_story(script, allow_external_references)
    except ScriptError as e:
        _fail(str(e), code=1)
    if as_json:
        typer.echo(json.dumps(story.describe(), indent=1, ensure_ascii=False))
        return
    typer.echo(story.summary())
    for w in entity_warnings(story):
        typer.echo(f"warning: {script}: {w}", err=True)


def _engine(models, out, story=None, config=None, progress=True):
    from filmweaver.engine import StoryEngine
    from filmweaver.project import ProjectError

    try:
        return StoryEngine(models, out, story=story, config=config, progress=progress)
    except (ProjectError, ValueError, NotImplementedError) as e:
        _fail(str(e))


@app.command()
def generate(
    script: Path = typer.Argument(..., help="story script (ST-Bench JSON)"),
    out: Path = typer.Option(..., "-o", "--out", help="project directory (created; rerun to resume)"),
    preset: Preset = None, model: ModelOpt = None, embedder: Embedder = None, lora: Lora = None,
    lora_2: Lora2 = None, first_shot_model: FirstShot = None,
    device: Device = "auto", dtype: Dtype = "float32", offload: Offload = "none", attention: Attention = None,
    compile_blocks: Compile = False, vae_tiling: VaeTiling = False, fuse_qkv: FuseQkv = False,
    fuse_ffn: FuseFfn = False,
    step_cache: str | None = typer.Option(None, help="none | first_block (diffusers FirstBlockCache) | mag (MagCache, needs "
                                   "--mag-ratios) | mag_calibrate (writes the project's mag_ratios.json): faster, changes the film"),
    step_cache_threshold: float | None = typer.Option(None, help="first_block: relative residual change below which steps are "
                                               "reused; mag: accumulated error below which they are"),
    mag_ratios: Path | None = typer.Option(None, help="--step-cache mag: a mag_ratios.json from a mag_calibrate run"),
    policy: str | None = typer.Option(None, help="shot cache: topk (default) | sink_window | none"),
    k: int | None = typer.Option(None, help="topk: keyframes retrieved per shot (the engine's default if unset)"),
    per_shot: int | None = typer.Option(None, help="topk: at most this many keyframes from one earlier shot "
                                        "(the model's default if unset; none: no cap)"),
    anchor_characters: bool | None = typer.Option(None, "--anchor-characters/--no-anchor-characters",
                                                  help="keep the first keyframe of the shot that introduced each "
                                                  "named sheet character in memory (the model's default if unset)"),
    memory_compression: int | None = typer.Option(None, help="pool each keyframe into 2x2 or 4x4 patches: 4x / 16x fewer "
                                                  "memory tokens (model default if unset)"),
    steps: int | None = typer.Option(None, help="denoising steps per chunk (model default if unset)"),
    guidance: float | None = typer.Option(None, help="classifier-free guidance scale"),
    memory_guidance: float | None = typer.Option(None, help="guidance on the shot cache too (1 = off; one more forward "
                                                 "a step while keyframes are in memory)"),
    scheduler: str | None = typer.Option(None, help="unipc | euler (model default if unset)"),
    shift: float | None = typer.Option(None, help="flow shift (scheduler default if unset)"),
    height: int | None = typer.Option(None), width: int | None = typer.Option(None),
    chunks: int | None = typer.Option(None, help="chunks per shot when the script gives no duration (default 1)"),
    seed: int | None = typer.Option(None, help="base seed (default 0; shot i uses seed + i unless the script sets one)"),
    continuation: str | None = typer.Option(None, help="cut: false shots continue by mi2v (default) | mm2v | none"),
    method: str | None = typer.Option(None, help=f"a named method ({' | '.join(METHODS)}); "
                                      "its memory settings replace --policy/--k/--continuation"),
    no_temporal_cache: bool = typer.Option(False, "--no-temporal-cache", help="ablation: no temporal cache"),
    regional_prompts: bool | None = typer.Option(None, "--regional-prompts/--no-regional-prompts",
                                                 help="each character's description read only where it is drawn "
                                                 "(shots of several characters; the model's default if unset)"),
    quality_scorer: str | None = typer.Option(None, help="keyframe quality filter: none | contrast | hpsv3 (StoryMem's; "
                                              "pip install hpsv3) | package.module:factory"),
    quality_model: str | None = typer.Option(None, help="--quality-scorer hpsv3: checkpoint file or hub id"),
    quality_threshold: float | None = typer.Option(None, help="frames scoring below this are never keyframes "
                                                   "(StoryMem: 3.0 for HPSv3)"),
    max_shots: int | None = typer.Option(None, help="stop after this many shots (rerun to continue)"),
    settings_file: Path | None = typer.Option(None, "--config", help="engine settings (YAML or JSON with "
                                              "EngineConfig's sections: sampler, shot_cache, temporal_cache, "
                                              "keyframes, ...); the options above win over it"),
    set_: list[str] = typer.Option([], "--set", help="one engine setting, dotted.key=value (e.g. shot_cache.k=5); "
                                   "repeatable; over --config, under the options above"),
    force: Force = False, allow_external_references: ExternalRefs = False,
    context_parallel: str | None = typer.Option(None, help="ulysses | ring: one story on several GPUs, every forward's "
                                                "tokens split over the ranks of `torchrun --nproc_per_node N`"),
    cfg_parallel: bool = typer.Option(False, "--cfg-parallel", help="one story on two GPUs (`torchrun --nproc_per_node 2`): "
                                      "the conditional and unconditional forwards of guidance on one GPU each"),
):
    """Generate a film from a script into a project directory; finished shots are kept on rerun."""
    from filmweaver.project import ProjectError

    try:
        story = load_story(script, allow_external_references)
    except ScriptError as e:
        _fail(str(e), code=1)
    if max_shots is not None and max_shots < 1:
        _fail(f"--max-shots {max_shots}: expected at least 1")
    # the film's settings, checked before anything loads: only what the user gave counts as set (a
    # method's settings and the model's defaults fill the rest, EngineConfig.resolve)
    options = dict(scheduler=scheduler, shift=shift, steps=steps, guidance=guidance, memory_guidance=memory_guidance,
                   policy=policy, k=k, memory_compression=memory_compression, per_shot=per_shot,
                   anchor_characters=anchor_characters, no_temporal_cache=no_temporal_cache or None,
                   regional_prompts=regional_prompts,
                   quality_scorer=quality_scorer, quality_model=quality_model, quality_threshold=quality_threshold,
                   height=height, width=width, chunks=chunks, seed=seed, continuation=continuation,
                   step_cache=step_cache, step_cache_threshold=step_cache_threshold,
                   mag_ratios=_read_mag_ratios(mag_ratios))
    config = _generate_config(method, options, settings_file, set_)
    runtime = _runtime(device, dtype, offload, attention, compile_blocks, vae_tiling, fuse_qkv, fuse_ffn)
    runtime, rank, scratch = _start_parallel(runtime, context_parallel, cfg_parallel)
    if scratch is not None:  # only rank 0 writes the project
        out = Path(scratch.name)
    with _locked(out):
        project = _read_project(out, must_exist=False)
        if not force:
            try:
                project.check_same_story(story)
            except ProjectError as e:
                _fail(str(e))
        setup = _model_setup(None if force else _recorded_setup(project), preset=preset, model=model, embedder=embedder,
                             lora=lora, lora_2=lora_2, first_shot_model=first_shot_model)
        models = _load_models(setup, runtime)
        engine = _engine(models, project, story=story, config=config, progress=rank == 0)
        if cfg_parallel:
            try:
                engine.sampler.enable_cfg_parallel()
            except ValueError as e:
                _fail(str(e))
        from filmweaver.pipeline import Film

        made = _run(engine, lambda: Film(engine).generate(max_shots=max_shots, force=force))
        if rank == 0:
            _report(engine, [n - 1 for n in made.shots])
    if scratch is not None:
        scratch.cleanup()


def _start_parallel(runtime, context_parallel: str | None, cfg_parallel: bool):
    """Under torchrun: join the process group. Returns ``(runtime on this rank's device, with the
    context parallelism asked for, rank, a scratch directory for ranks other than 0, else None)``."""
    import tempfile

    from filmweaver.parallel import init_distributed

    if not (context_parallel or cfg_parallel):
        return runtime, 0, None
    if runtime.offload == "block":
        _fail("--offload block streams the blocks through hooks: it does not combine with parallelism")
    try:
        device, rank = init_distributed(runtime.device, context_parallel, cfg_parallel)
    except (ValueError, RuntimeError) as e:
        _fail(str(e))
    scratch = tempfile.TemporaryDirectory(prefix=f"filmweaver-rank{rank}-") if rank else None
    try:
        runtime = runtime.model_validate({**runtime.model_dump(), "device": device, "context_parallel": context_parallel})
    except ValueError as e:
        _fail(f"--context-parallel {context_parallel!r}: {e.errors()[0]['msg'] if hasattr(e, 'errors') else e}")
    return runtime, rank, scratch


# each generate option and the EngineConfig field it sets (dotted: section.field): the one table
GENERATE_OPTIONS = {
    "scheduler": "sampler.scheduler", "shift": "sampler.shift", "steps": "sampler.num_inference_steps",
    "guidance": "sampler.guidance_scale", "memory_guidance": "sampler.memory_guidance_scale",
    "policy": "shot_cache.policy", "k": "shot_cache.k", "memory_compression": "shot_cache.compression",
    "per_shot": "shot_cache.per_shot", "anchor_characters": "shot_cache.anchor_characters",
    "no_temporal_cache": "temporal_cache.enabled", "quality_scorer": "keyframes.quality_scorer",
    "quality_model": "keyframes.quality_model", "quality_threshold": "keyframes.quality_threshold",
    "height": "height", "width": "width", "chunks": "shot_chunks", "seed": "seed", "continuation": "continuation",
    "step_cache": "step_cache", "step_cache_threshold": "step_cache_threshold", "mag_ratios": "step_cache_mag_ratios",
    "regional_prompts": "regional_prompts",
}
_INVERTED = {"no_temporal_cache"}  # a switch that sets its field to False
# the option behind each config field, for messages that name the option
_OPTION_OF = {key.split(".")[-1]: "--" + name.replace("_", "-") for name, key in GENERATE_OPTIONS.items()}


def _settings_from_options(options: dict) -> dict:
    """The options given (not None) as nested EngineConfig settings."""
    settings: dict = {}
    for name, value in options.items():
        if value is None:
            continue
        *section, field = GENERATE_OPTIONS[name].split(".")
        node = settings.setdefault(section[0], {}) if section else settings
        node[field] = False if name in _INVERTED else value
    return settings


def _read_mag_ratios(path: Path | None) -> list[float] | None:
    if path is None:
        return None
    try:
        return json.loads(path.read_text())["mag_ratios"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        _fail(f"--mag-ratios {path}: expected a mag_ratios.json written by --step-cache mag_calibrate ({e})")


def _generate_config(method: str | None, options: dict, settings_file: Path | None, overrides: list[str]):
    """The film's EngineConfig: a method's settings, under ``--config``, under ``--set``, under the options."""
    from pydantic import ValidationError

    from filmweaver.engine import EngineConfig
    from filmweaver.methods import method_config

    settings = _with_settings_file(settings_file, overrides, _settings_from_options(options))
    try:
        return method_config(method, settings) if method is not None else EngineConfig.model_validate(settings)
    except ValidationError as e:
        _fail(_option_error(e))
    except ValueError as e:
        _fail(str(e))


def _with_settings_file(path: Path | None, overrides: list[str], options: dict) -> dict:
    """``--config`` then ``--set`` under the options given (``options`` win); unknown keys are errors."""
    from filmweaver.engine import EngineConfig
    from filmweaver.settings import (
        SettingsError,
        apply_overrides,
        merge_settings,
        read_settings,
        unknown_keys,
    )

    if path is None and not overrides:
        return options
    try:
        base = apply_overrides(read_settings(path) if path is not None else {}, overrides,
                               str(path) if path is not None else "the engine")
    except SettingsError as e:
        _fail(str(e))
    unknown = unknown_keys(EngineConfig, base)
    if unknown:
        where = f"--config {path}" if path is not None else "--set"
        _fail(f"{where}: unknown engine setting(s) {', '.join(unknown)} (sections: "
              f"{', '.join(EngineConfig.model_fields)})")
    return merge_settings(base, options)


def _option_error(e) -> str:
    """A pydantic error about the film's settings as one line naming the command-line option."""
    err = e.errors()[0]
    field = str(err["loc"][-1])
    option = _OPTION_OF.get(field, "--" + field.replace("_", "-"))
    return f"{option} {err.get('input')!r}: {err['msg']}"


def _run(engine, operation):
    """Run an engine operation; the errors a user can act on become one line."""
    from filmweaver.project import ProjectError

    try:
        return operation()
    except (ProjectError, IndexError, ValueError) as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"{engine.project.root}: {e.strerror or e} while writing the project (nothing finished was lost; "
              "rerun the command to resume)")


def _report(engine, done):
    p = engine.project
    n = len(engine.story.shots())
    finished = sum(1 for r in p.shots if r["status"] == "done")
    stale = [r["number"] for r in p.shots if r["status"] == "stale"]
    console.print(f"generated {len(done)} shot(s); {finished}/{n} done" + (f"; stale: {stale}" if stale else ""))
    ratios = p.root / "mag_ratios.json"
    if engine.config.step_cache == "mag_calibrate" and ratios.is_file():
        console.print(f"MagCache ratios: {ratios} (next: --step-cache mag --mag-ratios {ratios})", highlight=False)
    typer.echo(str(p.root))


@contextlib.contextmanager
def _open(out: Path, runtime, shot: int | None = None, finished: bool = False, **given):
    """Reopen a project for a follow-up command, under its lock until the command ends: its recorded
    models (``given`` options must agree with them), its own story and settings. ``shot`` (1-based)
    must exist, and be ``finished``."""
    from filmweaver.pipeline import Film

    _require_project(out)  # before the lock makes the folder
    with _locked(out):
        project = _read_project(out, hint="; generate it again from its script")
        if shot is not None:
            _check_shot(project, shot, finished)
        setup = _model_setup(_recorded_setup(project), **given)
        yield Film(_engine(_load_models(setup, runtime), project))


def _check_shot(project, shot: int, finished: bool) -> None:
    """``--shot`` against the project's own story (before any model loads)."""
    from filmweaver.project import ProjectError
    from filmweaver.script import ScriptError

    try:
        n = len(project.load_story().shots())
    except (ProjectError, ScriptError) as e:
        _fail(str(e))
    if not 1 <= shot <= n:
        _fail(f"--shot {shot}: the story has {n} shots (1..{n})")
    if finished and (project.shot_record(shot - 1) or {}).get("status") != "done":
        _fail(f"--shot {shot}: the shot is not finished; generate it before extending it")


@app.command("next")
def next_shot(out: Path = typer.Argument(..., help="project directory"), preset: Preset = None,
              model: ModelOpt = None, embedder: Embedder = None, lora: Lora = None, lora_2: Lora2 = None,
              first_shot_model: FirstShot = None, device: Device = "auto", dtype: Dtype = "float32",
              offload: Offload = "none", attention: Attention = None, compile_blocks: Compile = False,
              vae_tiling: VaeTiling = False, fuse_qkv: FuseQkv = False, fuse_ffn: FuseFfn = False):
    """Generate the next pending (or stale) shot of a project, with the models it was made with."""
    runtime = _runtime(device, dtype, offload, attention, compile_blocks, vae_tiling, fuse_qkv, fuse_ffn)
    with _open(out, runtime, preset=preset, model=model, embedder=embedder, lora=lora, lora_2=lora_2,
               first_shot_model=first_shot_model) as film:
        made = _run(film.engine, film.next)
        _report(film.engine, [n - 1 for n in made.shots])


@app.command()
def extend(out: Path = typer.Argument(..., help="project directory"),
           shot: int = typer.Option(..., help="shot number (1-based)"),
           chunks: int = typer.Option(1, help="chunks to add (at least 1)"), preset: Preset = None,
           model: ModelOpt = None, embedder: Embedder = None, lora: Lora = None, lora_2: Lora2 = None,
           first_shot_model: FirstShot = None, device: Device = "auto", dtype: Dtype = "float32",
           offload: Offload = "none", attention: Attention = None, compile_blocks: Compile = False,
           vae_tiling: VaeTiling = False, fuse_qkv: FuseQkv = False, fuse_ffn: FuseFfn = False):
    """Extend a finished shot by N chunks (temporal cache carries its motion); later shots go stale."""
    if chunks < 1:
        _fail(f"--chunks {chunks}: expected at least 1 chunk to add")
    if shot < 1:
        _fail(f"--shot {shot}: shots are numbered from 1")
    runtime = _runtime(device, dtype, offload, attention, compile_blocks, vae_tiling, fuse_qkv, fuse_ffn)
    with _open(out, runtime, shot=shot, finished=True, preset=preset, model=model, embedder=embedder, lora=lora,
               lora_2=lora_2, first_shot_model=first_shot_model) as film:
        _run(film.engine, lambda: film.extend(shot, chunks))
        _report(film.engine, [shot - 1])


@app.command()
def regenerate(out: Path = typer.Argument(..., help="project directory"),
               shot: int = typer.Option(..., help="shot number (1-based)"),
               prompt: str | None = typer.Option(None, help="new prompt for this shot"),
               seed: int | None = typer.Option(None, help="new seed for this shot"),
               preset: Preset = None, model: ModelOpt = None, embedder: Embedder = None, lora: Lora = None,
               lora_2: Lora2 = None, first_shot_model: FirstShot = None, device: Device = "auto",
               dtype: Dtype = "float32", offload: Offload = "none", attention: Attention = None,
               compile_blocks: Compile = False, vae_tiling: VaeTiling = False, fuse_qkv: FuseQkv = False,
               fuse_ffn: FuseFfn = False):
    """Regenerate one shot (memory rebuilt from the shots before it); later shots are marked stale."""
    from filmweaver.script import MAX_SEED

    if shot < 1:
        _fail(f"--shot {shot}: shots are numbered from 1")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        _fail(f"--seed {seed}: expected a seed from 0 to 2**63-1")
    if prompt is not None and not prompt.strip():
        _fail("--prompt: expected a non-empty prompt")
    runtime = _runtime(device, dtype, offload, attention, compile_blocks, vae_tiling, fuse_qkv, fuse_ffn)
    with _open(out, runtime, shot=shot, preset=preset, model=model, embedder=embedder, lora=lora, lora_2=lora_2,
               first_shot_model=first_shot_model) as film:
        _run(film.engine, lambda: film.regenerate(shot, prompt=prompt, seed=seed))
        _report(film.engine, [shot - 1])


def _edit_memory(out: Path, action: str, shot: int, target: str, onward: bool, remove: bool, label: str = "") -> None:
    """pin / ban / reference: a memory edit in the manifest (no model loads), under the project's lock."""
    from filmweaver.engine.steering import MemoryEdit, add_reference_image, apply_edit
    from filmweaver.project import ProjectError
    from filmweaver.script import ScriptError

    _require_project(out)
    with _locked(out):
        project = _read_project(out)
        try:
            story = project.load_story()
            if not 1 <= shot <= len(story.shots()):
                _fail(f"--shot {shot}: the story has {len(story.shots())} shots (1..{len(story.shots())})")
            if label and label not in {e.name for e in story.entities()}:
                _fail(f"--label {label!r}: not an entity of the story")
            if action == "reference" and not remove:
                target = add_reference_image(project, target)
            edit = MemoryEdit(action, shot - 1, onward, keyframe="" if action == "reference" else target,
                              image=target if action == "reference" else "", label=label)
            stale = apply_edit(project, edit, len(story.shots()), remove=remove)
        except (ProjectError, ScriptError, ValueError) as e:
            _fail(str(e))
    done = "removed" if remove else "recorded"
    typer.echo(f"{done}: {edit.describe()}" + (f"; stale now: {[i + 1 for i in stale]}" if stale else "")
               + " (run `filmweaver generate` or `next` to remake them)")


Shot = Annotated[int, typer.Option("--shot", help="shot number (1-based)")]
Onward = Annotated[bool, typer.Option("--onward", help="also every later shot")]
Remove = Annotated[bool, typer.Option("--remove", help="undo the edit instead")]


@app.command()
def pin(out: Path = typer.Argument(..., help="project directory"),
        keyframe: str = typer.Argument(..., help="a bank keyframe's name, e.g. shot001_f0000 (`filmweaver info`)"),
        shot: Shot = ..., onward: Onward = False, remove: Remove = False):
    """Keep a keyframe in a shot's memory whatever the policy picks; the shot and later ones go stale."""
    _edit_memory(out, "pin", shot, keyframe, onward, remove)


@app.command()
def ban(out: Path = typer.Argument(..., help="project directory"),
        keyframe: str = typer.Argument(..., help="a bank keyframe's name, e.g. shot002_f0008"),
        shot: Shot = ..., onward: Onward = False, remove: Remove = False):
    """Keep a keyframe out of a shot's memory; the shot and later ones go stale."""
    _edit_memory(out, "ban", shot, keyframe, onward, remove)


@app.command()
def reference(out: Path = typer.Argument(..., help="project directory"),
              image: str = typer.Argument(..., help="an image (PNG, JPEG, WebP; copied into the project), or with "
                                          "--remove its path in the project (references/...)"),
              shot: Shot = ..., label: str = typer.Option("", help="whom or what it shows: an entity of the story"),
              onward: Onward = False, remove: Remove = False):
    """Put an image of yours into a shot's memory as a reference; the shot and later ones go stale."""
    _edit_memory(out, "reference", shot, image, onward, remove, label)


@app.command()
def studio(projects_dir: Path = typer.Argument(Path("projects"), help="directory of projects (created)"),
           preset: Preset = None, model: ModelOpt = None, embedder: Embedder = None, lora: Lora = None,
           device: Device = "auto", dtype: Dtype = "float32",
           host: str = typer.Option("127.0.0.1", help="address to serve on (0.0.0.0: every network interface)"),
           port: int = typer.Option(7860, help="port"),
           max_upload_mb: int = typer.Option(20, help="largest upload accepted, MB"),
           example: Path | None = typer.Option(None, help="a script the editor starts with for a new project")):
    """Make films in the browser (Gradio): write a story, generate, regenerate, extend, steer memory."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        _fail("the studio needs Gradio: pip install 'filmweaver[app]'")
    from filmweaver.pipeline import FilmPipeline
    from filmweaver.studio import Studio, launch

    runtime = _runtime(device, dtype)
    setup = _model_setup(None, preset=preset, model=model, embedder=embedder, lora=lora)
    text = ""
    if example is not None:
        try:
            load_story(example)
            text = example.read_text(encoding="utf-8")
        except (ScriptError, OSError) as e:
            _fail(f"--example {example}: {e}")
    app_state = Studio(projects_dir, lambda: FilmPipeline(_load_models(setup, runtime), runtime))
    console.print(f"filmweaver studio on http://{host}:{port} (projects in {app_state.root})", highlight=False)
    launch(app_state, host=host, port=port, max_upload_mb=max_upload_mb, example=text)


@app.command()
def info(out: Path = typer.Argument(..., help="project directory")):
    """Print a project's shots, status, modes and memory (no lock: safe while another command writes)."""
    from filmweaver.engine.records import ShotRecord
    from filmweaver.engine.steering import memory_edits

    project = _read_project(out)
    if project.recovered:
        console.print(f"[bold yellow]warning:[/] {project.recovered}", highlight=False)
    m = project.manifest
    typer.echo(f"{m['story']['name']} | model {m['model']['id']} (trained: {m['model']['trained']})")
    for r in map(ShotRecord.from_manifest, m.get("shots", [])):
        mem = ", ".join(f"{x.keyframe}({x.similarity})" for x in r.shot_cache) or "-"
        typer.echo(f"shot {r.number:>2} {r.status:<5} chunks {r.num_chunks} [{','.join(r.modes)}] memory: {mem}")
    for e in memory_edits(m):
        typer.echo(f"memory edit: {e.describe()}")



@app.command()
def train(config: Path = typer.Argument(..., help="training config (YAML), e.g. configs/synth-small.yaml"),
          set_: list[str] = typer.Option([], "--set", help="override a config key: dotted.key=value (repeatable)"),
          output_dir: str | None = typer.Option(None, "--output-dir", "-o", help="overrides output_dir")):
    """Train (or resume training) the model a config describes: VAE, embedder, cache-guided DiT, probe."""
    from pydantic import ValidationError

    from filmweaver.train.config import load_train_config
    from filmweaver.train.run import TimeBudgetSpent, run_training

    if not config.is_file():
        _fail(f"{config}: no such config file")
    overrides = list(set_) + ([f"output_dir={output_dir}"] if output_dir else [])
    try:
        cfg = load_train_config(config, overrides)
    except ValidationError as e:
        _fail(f"{config}: invalid training config:\n{e}")
    except ValueError as e:  # a --set key that names nothing
        _fail(str(e))
    try:
        summary = run_training(cfg)
    except TimeBudgetSpent as e:
        _fail(str(e))
    console.print(f"[bold green]done:[/] model in {Path(cfg.output_dir) / 'model'}; "
                  f"timings {summary['timings']}", highlight=False)


@app.command()
def curate(inputs: list[Path] = typer.Argument(..., help="video files, or directories of them"),
           out: Path = typer.Option(..., "-o", "--out", help="the dataset directory (resumable)"),
           config: Path | None = typer.Option(None, "--config", help="curation settings (YAML/JSON)"),
           set_: list[str] = typer.Option([], "--set", help="override a setting: dotted.key=value (repeatable), "
                                          "e.g. shots.detector=pyscenedetect, filters.max_people=2"),
           workers: int | None = typer.Option(None, help="videos curated in parallel (processes)"),
           device: str | None = typer.Option(None, help="cpu | cuda (the detectors, embedder and captioner)"),
           ray: str | None = typer.Option(None, "--ray", help="curate on a Ray cluster through Ray Data: its address, "
                                          "or 'local' to start one here (pip install 'filmweaver[ray]')"),
           force: bool = typer.Option(False, "--force", help="curate videos that already have a record again"),
           quiet: bool = typer.Option(False, "--quiet", help="no progress bar")):
    """Raw videos -> multi-shot training samples: shots, filters, scenes, captions, WebDataset shards, report."""
    from pydantic import ValidationError

    from filmweaver.curate import CurateConfig
    from filmweaver.curate import curate as run_curate
    from filmweaver.curate.video import find_videos
    from filmweaver.settings import SettingsError, apply_overrides, read_settings

    try:
        raw = apply_overrides(read_settings(config) if config is not None else {}, list(set_), "the curation")
        raw.update({k: v for k, v in {"workers": workers, "device": device}.items() if v is not None})
        cfg = CurateConfig.model_validate(raw)
    except SettingsError as e:
        _fail(str(e))
    except ValidationError as e:
        err = e.errors()[0]
        _fail(f"{config or '--set'}: {'.'.join(map(str, err['loc']))}: {err['msg']}")
    missing = [p for p in inputs if not p.exists()]
    if missing:
        _fail(f"{missing[0]}: no such file or directory")
    videos = find_videos(inputs)
    if not videos:
        _fail(f"{', '.join(map(str, inputs))}: no videos ({', '.join(('.mp4', '.mkv', '.mov', '...'))})")
    try:
        records = run_curate(videos, out, cfg, force=force, progress=not quiet, ray_address=ray)
    except ValueError as e:
        _fail(str(e))
    samples = sum(len(r.get("samples", [])) for r in records)
    failed = [r for r in records if r["status"] != "done"]
    for r in failed:
        console.print(f"[bold yellow]skipped:[/] {r.get('error')}", highlight=False)
    console.print(f"[bold green]done:[/] {samples} samples from {len(records) - len(failed)} of {len(records)} videos "
                  f"in {out} (report: {out / 'report.html'})", highlight=False)


@app.command("export-ema")
def export_ema_(ema: Path = typer.Argument(..., help="a run's checkpoint/ema.safetensors (or a half-precision copy)"),
                base: str = typer.Argument(..., help="model directory giving the architecture, VAE, embedder and probe"),
                out: Path = typer.Argument(..., help="where to write the model"),
                model_id: str | None = typer.Option(None, help="the model id to record (default: BASE's + the file name)")):
    """A model from a DiT checkpoint's EMA weights: a run that stopped early, or one looked at midway."""
    from filmweaver.models import ModelLoadError
    from filmweaver.train.run import export_ema

    if not ema.is_file():
        _fail(f"{ema}: no such file")
    try:
        info = export_ema(ema, base, out, model_id)
    except (ValueError, OSError, ModelLoadError) as e:
        _fail(str(e))
    console.print(f"[bold green]done:[/] {info['tensors']} tensors -> {out} ({info['model_id']})", highlight=False)


@app.command("compact-checkpoint")
def compact_checkpoint_(src: Path = typer.Argument(..., help="a run's DiT checkpoint directory (RUN/checkpoint)"),
                        dest: Path = typer.Argument(..., help="where to write the compact checkpoint (then copy it to RUN/checkpoint on the next machine)")):
    """A DiT checkpoint a quarter the size (bfloat16 weights, step and schedule; no EMA or optimiser
    moments), for a run whose next part runs on another machine: the same `filmweaver train` command
    resumes from it at the same step."""
    from filmweaver.train.dit import compact_checkpoint

    try:
        info = compact_checkpoint(src, dest)
    except (ValueError, OSError) as e:
        _fail(str(e))
    console.print(f"[bold green]done:[/] step {info['step']}, {info['tensors']} tensors, "
                  f"{info['bytes'] / 1e6:.1f} MB -> {dest}", highlight=False)


@app.command("export-lora")
def export_lora(lora: Path = typer.Argument(..., help="a trained LoRA file (a run's model/lora/pytorch_lora_weights.safetensors)"),
                out: Path = typer.Argument(..., help="the file to write, e.g. StoryMem/backbone_high_noise.pth")):
    """A trained memory LoRA in StoryMem's layout, for its pipeline.py --lora_weight_path (high-noise
    expert: backbone_high_noise.pth, low-noise: backbone_low_noise.pth; pass --lora_rank RANK there)."""
    from filmweaver.backbone.lora import LoraConversionError, export_storymem_lora

    if not lora.is_file():
        _fail(f"{lora}: no such file")
    if out.suffix not in (".pth", ".pt"):
        _fail(f"{out}: StoryMem loads .pth files (name it backbone_high_noise.pth or backbone_low_noise.pth)")
    try:
        info = export_storymem_lora(lora, out)
    except (LoraConversionError, OSError) as e:
        _fail(str(e))
    console.print(f"[bold green]done:[/] {info['modules']} adapted modules, rank {info['rank']} -> {out} "
                  f"(StoryMem: --lora_rank {info['rank']})", highlight=False)


def _judges(clip, aesthetic_clip, aesthetic_head, inception, probe, video_embedder, detector, metrics, device):
    from filmweaver.eval.judges import EvalSetupError
    from filmweaver.eval.run import EvalConfig, Judges

    cfg = EvalConfig(clip=None if clip == "none" else clip, aesthetic_clip=aesthetic_clip, aesthetic_head=aesthetic_head,
                     inception=inception, probe=None if probe == "none" else probe, video_embedder=video_embedder,
                     detector=detector, metrics=[m.strip() for m in metrics.split(",")] if metrics else None,
                     device=device)
    try:
        return Judges(cfg)
    except EvalSetupError as e:
        _fail(str(e))


_CLIP_HELP = "CLIP judge: hub id or local directory (e.g. openai/clip-vit-large-patch14); 'builtin' = the synth model's CLIP; 'none'"
_PROBE_HELP = "synthetic-world attribute probe judge: 'builtin', a probe directory, or 'none'"


@app.command("eval")
def eval_(run_dir: Path = typer.Argument(..., help="a generated project directory"),
          clip: str = typer.Option("builtin", help=_CLIP_HELP),
          aesthetic_clip: str | None = typer.Option(None, help="CLIP ViT-L/14 for the aesthetic head (default: --clip)"),
          aesthetic_head: str | None = typer.Option(None, help="LAION aesthetic linear head (.pth / .safetensors)"),
          inception: str | None = typer.Option(None, help="FID Inception v3 weights (torch-fidelity's weights-inception-2015-12-05-6726825d.pth) for the Inception Score"),
          probe: str = typer.Option("none", help=_PROBE_HELP),
          video_embedder: str | None = typer.Option(None, help="video-text judge (ViCLIP) as package.module:factory"),
          detector: str | None = typer.Option(None, help="character detector for crops: opencv-hog | opencv-face | "
                                                 "package.module:factory (without one: whole keyframes of single-character shots)"),
          metrics: str | None = typer.Option(None, help="comma-separated metrics (default: all whose judge is set)"),
          device: str = typer.Option("cpu")):
    """Score a generated film: writes metrics.json (value, model, protocol per metric) and metrics.md."""
    from filmweaver.eval.judges import EvalSetupError
    from filmweaver.eval.run import evaluate_run, metrics_table

    judges = _judges(clip, aesthetic_clip, aesthetic_head, inception, probe, video_embedder, detector, metrics, device)
    try:
        result = evaluate_run(run_dir, judges)
    except EvalSetupError as e:
        _fail(str(e))
    typer.echo(metrics_table(result))
    console.print(f"[bold green]wrote[/] {run_dir / 'metrics.json'}", highlight=False)


@app.command()
def benchmark(scripts_dir: Path = typer.Argument(..., help="directory of story scripts (*.json), e.g. ST-Bench"),
              out: Path = typer.Option(..., "-o", "--out", help="benchmark directory (rerun to resume)"),
              methods: str = typer.Option("independent,storymem,filmweaver,keyframe_first", help=f"comma-separated methods of {', '.join(METHODS)} ('default': the model's own settings)"),
              preset: Preset = None, model: ModelOpt = None, embedder: Embedder = None, lora: Lora = None,
              lora_2: Lora2 = None, first_shot_model: FirstShot = None,
              stories: int | None = typer.Option(None, help="only the first N scripts (sorted by name)"),
              max_shots: int | None = typer.Option(None, help="only the first N shots of each story"),
              steps: int | None = typer.Option(None, help="denoising steps per chunk (model default if unset)"),
              chunks: int = typer.Option(1, help="chunks per shot when the script gives no duration"),
              seed: int = 0,
              clip: str = typer.Option("builtin", help=_CLIP_HELP),
              aesthetic_clip: str | None = None, aesthetic_head: str | None = None, inception: str | None = None,
              probe: str = typer.Option("none", help=_PROBE_HELP), video_embedder: str | None = None,
              detector: str | None = None, metrics: str | None = None,
              device: Device = "auto", dtype: Dtype = "float32", offload: Offload = "none", attention: Attention = None,
              compile_blocks: Compile = False, vae_tiling: VaeTiling = False):
    """Generate every story with every method, score them, write report.json / report.md / report.html.

    Under torchrun (one process per GPU) the (story, method) pairs are shared out and rank 0 writes
    the report: `torchrun --nproc_per_node 2 -m filmweaver.cli benchmark DIR -o OUT --device cuda`."""
    from filmweaver.eval.benchmark import run_benchmark, story_scripts
    from filmweaver.parallel import shard_from_env

    runtime = _runtime(device, dtype, offload, attention, compile_blocks, vae_tiling)
    device = runtime.device
    rank, world, local_rank = shard_from_env()
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo")  # a barrier between shards; the work itself is independent
        if device == "cuda":
            device = f"cuda:{local_rank}"
            runtime = runtime.model_copy(update={"device": device})

    try:
        scripts = story_scripts(scripts_dir, stories)
    except FileNotFoundError as e:
        _fail(str(e))
    judges = _judges(clip, aesthetic_clip, aesthetic_head, inception, probe, video_embedder, detector, metrics, device)
    setup = _model_setup(None, preset=preset, model=model, embedder=embedder, lora=lora, lora_2=lora_2,
                         first_shot_model=first_shot_model)
    models = _load_models(setup, runtime)
    settings = {"shot_chunks": chunks, "seed": seed}
    if steps is not None:
        settings["sampler"] = {"num_inference_steps": steps}
    try:
        report = run_benchmark(scripts, out, [m.strip() for m in methods.split(",")], models, judges, settings,
                               max_shots=max_shots, shard=(rank, world), progress=True)
    except (ScriptError, ValueError) as e:
        _fail(str(e), code=1)
    if report is None:  # a shard other than rank 0: rank 0 writes the report
        return
    from filmweaver.eval.benchmark import markdown_table

    typer.echo(markdown_table(report))
    console.print(f"[bold green]wrote[/] {out / 'report.html'}", highlight=False)


def bench(out: Path | None = None, **options):
    """Seconds per forward, tokens, memory overhead and TFLOP/s of the context-injected Wan transformer
    (or, with --story N, seconds per shot along a story; with --train, a memory-LoRA training step)."""
    import torch

    from filmweaver.bench import SHAPES, BenchOptions, run

    given = {}
    for f in dataclasses.fields(BenchOptions):
        value = options[f.name]
        given[f.name] = f.metadata["parse"](value) if f.metadata["parse"] and isinstance(value, str) else value
    opts = BenchOptions(**given)
    if opts.shape not in SHAPES:
        _fail(f"unknown shape {opts.shape!r}: choose from {', '.join(SHAPES)}")
    if opts.device.startswith("cuda") and not torch.cuda.is_available():
        _fail("no CUDA device: pass --device cpu (with --shape tiny) to try the harness")
    if opts.train:
        from filmweaver.train.bench import (
            run as run_train,  # the trainer's own step (the core never imports it)
        )
    try:
        result, markdown = run_train(opts) if opts.train else run(opts)
    except (ValueError, RuntimeError) as e:  # a bad combination, or a parallel flag outside torchrun
        _fail(str(e))
    if opts.context_parallel or opts.cfg_parallel or opts.fsdp:
        import torch.distributed as dist

        if dist.get_rank():
            return
    if out is not None:
        from filmweaver.io import write_json

        write_json(out, result)
    typer.echo(markdown)


def _bench_signature() -> inspect.Signature:
    """``bench``'s options, one per :class:`~filmweaver.bench.BenchOptions` field (its flag, default and
    help), so the option list lives in one place."""
    from filmweaver.bench import BenchOptions

    params = [inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None, default=typer.Option(
        None, "-o", "--out", help="write the results as JSON here"))]
    for f in dataclasses.fields(BenchOptions):
        meta = f.metadata
        if meta["switch"]:
            annotation, default = bool, typer.Option(False, meta["flag"], help=meta["help"])
        elif f.type in ("bool | None",):
            flag = meta["flag"]
            annotation = bool | None
            default = typer.Option(None, f"{flag}/--no-{flag[2:]}", help=meta["help"])
        elif meta["parse"] is not None:  # written as text on the command line
            annotation, default = str, typer.Option(meta["text"](f.default), meta["flag"], help=meta["help"])
        else:
            annotation = {"int": int, "str": str, "str | None": str | None}[f.type]
            default = typer.Option(f.default, meta["flag"], help=meta["help"])
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default))
    return inspect.Signature(params)


bench.__signature__ = _bench_signature()
app.command()(bench)


if __name__ == "__main__":
    app()
