"""``filmweaver`` command line: validate, generate (resumable), next, extend, regenerate, info."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from filmweaver.script import ScriptError, load_story

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Story script in, consistent multi-shot film out.")
console = Console(stderr=True)

_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}


def _fail(message: str, code: int = 2):
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _load_models(preset, model, embedder, device, dtype):
    import torch

    from filmweaver.models import ModelLoadError, load_models

    try:
        models = load_models(preset=preset, model=model, embedder=embedder, device=device,
                             dtype=getattr(torch, _DTYPES[dtype]))
    except (ModelLoadError, OSError) as e:
        _fail(str(e))
    if not models.trained:
        console.print(f"[bold yellow]warning:[/] {models.model_id} is an UNTRAINED random model: the film will be "
                      "noise. It exercises the engine end to end; pass --model for real weights.", highlight=False)
    return models


@app.command()
def validate(script: Path = typer.Argument(..., help="story script (ST-Bench JSON)")):
    """Check a story script; print a summary, or every problem with its JSON path."""
    try:
        story = load_story(script)
    except ScriptError as e:
        _fail(str(e), code=1)
    typer.echo(story.summary())


def _engine(models, out, story=None, config=None, explicit=frozenset()):
    from filmweaver.engine import StoryEngine
    from filmweaver.project import ProjectError

    try:
        return StoryEngine(models, out, story=story, config=config, progress=True,
                           explicit=explicit)
    except (ProjectError, ValueError, NotImplementedError) as e:
        _fail(str(e))


@app.command()
def generate(
    script: Path = typer.Argument(..., help="story script (ST-Bench JSON)"),
    out: Path = typer.Option(..., "-o", "--out", help="project directory (created; rerun to resume)"),
    preset: str = typer.Option("synth", help="built-in model when --model is not given: synth (trained on the synthetic world) or tiny (random, for tests)"),
    model: str | None = typer.Option(None, help="diffusers Wan hub id or local directory"),
    embedder: str | None = typer.Option(None, help="CLIP hub id or directory for keyframes and retrieval"),
    policy: str = typer.Option("topk", help="shot cache: topk | sink_window | none"),
    k: int = typer.Option(3, help="topk: keyframes retrieved per shot"),
    steps: int | None = typer.Option(None, help="denoising steps per chunk (model default if unset)"),
    guidance: float | None = typer.Option(None, help="classifier-free guidance scale"),
    scheduler: str = typer.Option("unipc", help="unipc | euler"),
    shift: float | None = typer.Option(None, help="flow shift (scheduler default if unset)"),
    height: int | None = typer.Option(None), width: int | None = typer.Option(None),
    chunks: int = typer.Option(1, help="chunks per shot when the script gives no duration"),
    seed: int = typer.Option(0, help="base seed (shot i uses seed + i unless the script sets one)"),
    continuation: str = typer.Option("mi2v", help="cut: false shots continue by mi2v | mm2v | none"),
    no_temporal_cache: bool = typer.Option(False, help="ablation: no temporal cache"),
    max_shots: int | None = typer.Option(None, help="stop after this many shots (rerun to continue)"),
    force: bool = typer.Option(False, help="regenerate everything, even finished shots"),
    device: str = typer.Option("cpu"), dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16"),
):
    """Generate a film from a script into a project directory; finished shots are kept on rerun."""
    from filmweaver.engine import EngineConfig, KeyframeConfig, ShotCacheConfig, TemporalCacheConfig
    from filmweaver.sampler import SamplerConfig

    try:
        story = load_story(script)
    except ScriptError as e:
        _fail(str(e), code=1)
    models = _load_models(preset, model, embedder, device, dtype)
    sampler = SamplerConfig(scheduler=scheduler, shift=shift)
    explicit = set()
    if steps is not None:
        sampler.num_inference_steps, explicit = steps, explicit | {"num_inference_steps"}
    if guidance is not None:
        sampler.guidance_scale, explicit = guidance, explicit | {"guidance_scale"}
    config = EngineConfig(height=height, width=width, shot_chunks=chunks, seed=seed, sampler=sampler,
                          shot_cache=ShotCacheConfig(policy=policy, k=k), continuation=continuation,
                          temporal_cache=TemporalCacheConfig(enabled=not no_temporal_cache),
                          keyframes=KeyframeConfig())
    engine = _engine(models, out, story=story, config=config, explicit=explicit)
    done = engine.generate(force=force, max_shots=max_shots)
    _report(engine, done)


def _report(engine, done):
    p = engine.project
    n = len(engine.story.shots())
    finished = sum(1 for r in p.shots if r["status"] == "done")
    stale = [r["number"] for r in p.shots if r["status"] == "stale"]
    console.print(f"generated {len(done)} shot(s); {finished}/{n} done" + (f"; stale: {stale}" if stale else ""))
    typer.echo(str(p.root))


def _open(out: Path, preset, model, embedder, device, dtype):
    from filmweaver.project import Project

    if not (out / "manifest.json").is_file():
        _fail(f"{out} is not a filmweaver project (no manifest.json)")
    project = Project(out)
    models = _load_models(preset, model, embedder, device, dtype)
    return _engine(models, project)


@app.command("next")
def next_shot(out: Path = typer.Argument(..., help="project directory"), preset: str = "synth",
              model: str | None = None, embedder: str | None = None, device: str = "cpu", dtype: str = "float32"):
    """Generate the next pending (or stale) shot of a project."""
    engine = _open(out, preset, model, embedder, device, dtype)
    index = engine.generate_next_shot()
    _report(engine, [] if index is None else [index])


@app.command()
def extend(out: Path = typer.Argument(..., help="project directory"),
           shot: int = typer.Option(..., help="shot number (1-based)"),
           chunks: int = typer.Option(1, help="chunks to add"), preset: str = "synth", model: str | None = None,
           embedder: str | None = None, device: str = "cpu", dtype: str = "float32"):
    """Extend a finished shot by N chunks (temporal cache carries its motion); later shots go stale."""
    from filmweaver.project import ProjectError

    engine = _open(out, preset, model, embedder, device, dtype)
    try:
        engine.extend_shot(shot - 1, chunks)
    except (ProjectError, IndexError) as e:
        _fail(str(e))
    _report(engine, [shot - 1])


@app.command()
def regenerate(out: Path = typer.Argument(..., help="project directory"),
               shot: int = typer.Option(..., help="shot number (1-based)"),
               prompt: str | None = typer.Option(None, help="new prompt for this shot"),
               seed: int | None = typer.Option(None, help="new seed for this shot"),
               preset: str = "synth", model: str | None = None, embedder: str | None = None,
               device: str = "cpu", dtype: str = "float32"):
    """Regenerate one shot (memory rebuilt from the shots before it); later shots are marked stale."""
    from filmweaver.project import ProjectError

    engine = _open(out, preset, model, embedder, device, dtype)
    try:
        engine.regenerate_shot(shot - 1, prompt=prompt, seed=seed)
    except (ProjectError, IndexError) as e:
        _fail(str(e))
    _report(engine, [shot - 1])


@app.command()
def info(out: Path = typer.Argument(..., help="project directory")):
    """Print a project's shots, status, modes and memory."""
    m = json.loads((out / "manifest.json").read_text())
    typer.echo(f"{m['story']['name']} | model {m['model']['id']} (trained: {m['model']['trained']})")
    for r in m.get("shots", []):
        modes = ",".join(c["mode"] for c in r["chunks"])
        mem = ", ".join(f"{x['keyframe']}({x['similarity']})" for x in r["shot_cache"]) or "-"
        typer.echo(f"shot {r['number']:>2} {r['status']:<5} chunks {r['num_chunks']} [{modes}] memory: {mem}")


if __name__ == "__main__":
    app()


@app.command()
def train(config: Path = typer.Argument(..., help="training config (YAML), e.g. configs/synth-small.yaml"),
          set_: list[str] = typer.Option([], "--set", help="override a config key: dotted.key=value (repeatable)"),
          output_dir: str | None = typer.Option(None, "--output-dir", "-o", help="overrides output_dir")):
    """Train (or resume training) the model a config describes: VAE, embedder, cache-guided DiT, probe."""
    from pydantic import ValidationError

    from filmweaver.train.config import load_train_config
    from filmweaver.train.run import run_training

    if not config.is_file():
        _fail(f"{config}: no such config file")
    overrides = list(set_) + ([f"output_dir={output_dir}"] if output_dir else [])
    try:
        cfg = load_train_config(config, overrides)
    except ValidationError as e:
        _fail(f"{config}: invalid training config:\n{e}")
    summary = run_training(cfg)
    console.print(f"[bold green]done:[/] model in {Path(cfg.output_dir) / 'model'}; "
                  f"timings {summary['timings']}", highlight=False)
