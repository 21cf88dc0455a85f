"""What a project's models are, and how they run.

Two kinds of setting reach the models, and they are kept apart on purpose:

* :class:`ModelSetup` says *which* weights make the film: preset or model path, LoRA files (with their
  SHA-256), the first-shot model, the embedder. It changes the film, so the project records it in its
  manifest and every follow-up command (``next``, ``extend``, ``regenerate``) loads the same setup
  without being told again; naming a different one is an error, not a silent switch.
* :class:`RuntimeOptions` say *how* they run: device, dtype, offload, attention backend, compile, VAE
  tiling, fused projections. They change speed and memory only (up to kernel rounding), so every
  command accepts them and none is recorded as part of the film.

:func:`load_film_models` applies both in the one order that works (load, first-shot model, fusion,
offload, attention and compile) for the CLI, ``bench`` and clients alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from filmweaver.io import file_digest

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


class SetupError(ValueError):
    """A model setup that cannot be used or that contradicts the one a project was made with."""


def _local_or_id(value: str | None) -> str | None:
    """A directory the user named, made absolute (the project may be reopened from elsewhere); a hub
    id as it is."""
    if value is None:
        return None
    p = Path(value).expanduser()
    return str(p.resolve()) if p.exists() else value


class ModelSetup(BaseModel):
    """Which weights make the film; recorded in the manifest (``model.setup``)."""

    model_config = ConfigDict(extra="forbid")

    preset: str = "synth"
    model: str | None = None  # hub id, or an absolute directory
    embedder: str | None = None
    lora: str | None = None  # absolute path
    lora_sha256: str | None = None
    lora_2: str | None = None
    lora_2_sha256: str | None = None
    first_shot_model: str | None = None

    @classmethod
    def from_options(cls, preset: str | None = None, model: str | None = None, embedder: str | None = None,
                     lora: str | None = None, lora_2: str | None = None,
                     first_shot_model: str | None = None) -> ModelSetup:
        """The setup the user named on a command line: paths made absolute, LoRA files hashed."""
        fields = {"model": _local_or_id(model), "embedder": _local_or_id(embedder),
                  "first_shot_model": _local_or_id(first_shot_model)}
        if preset is not None:
            fields["preset"] = preset
        for key, path, option in (("lora", lora, "--lora"), ("lora_2", lora_2, "--lora-2")):
            if path is None:
                continue
            p = Path(path).expanduser()
            if not p.is_file():
                raise SetupError(f"{option} {path}: no such file")
            fields[key], fields[f"{key}_sha256"] = str(p.resolve()), file_digest(p)
        return cls(**fields)

    def verify_files(self) -> None:
        """Every LoRA file is still there with the content the project was made with."""
        for key, option in (("lora", "--lora"), ("lora_2", "--lora-2")):
            path, digest = getattr(self, key), getattr(self, f"{key}_sha256")
            if path is None:
                continue
            if not Path(path).is_file():
                raise SetupError(f"the project was made with {option} {path}, which is gone: put it back, or "
                                 "start a new project")
            if digest is not None and file_digest(path) != digest:
                raise SetupError(f"{option} {path} changed since the project was made (sha256 {digest[:12]}...): "
                                 "put the original back, or start a new project")

    def reconcile(self, given: dict) -> ModelSetup:
        """This (recorded) setup, checked against the options a follow-up command was given: each given
        option must name what was recorded. ``given`` holds only what the user set (``None`` left out)."""
        named = ModelSetup.from_options(**given)
        for key in given:
            mine, theirs = getattr(self, key), getattr(named, key)
            if mine != theirs:
                option = "--" + key.replace("_", "-")
                raise SetupError(f"the project was made with {option} {mine or '(none)'}, not {theirs}: follow-up "
                                 "commands reuse the project's models (omit the option), or use another output "
                                 "directory")
            if key in ("lora", "lora_2") and getattr(self, f"{key}_sha256") != getattr(named, f"{key}_sha256"):
                raise SetupError(f"--{key.replace('_', '-')} {theirs} changed since the project was made")
        self.verify_files()
        return self

    def identity(self) -> str:
        """What the film depends on, as a short suffix of the model id: the LoRA contents."""
        out = f"+lora:{self.lora_sha256[:12]}" if self.lora_sha256 else ""
        return out + (f"+lora2:{self.lora_2_sha256[:12]}" if self.lora_2_sha256 else "")


class RuntimeOptions(BaseModel):
    """How the models run; accepted by every command, never part of the film."""

    model_config = ConfigDict(extra="forbid")

    device: str = "auto"  # auto: cuda, then mps, then cpu
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    offload: Literal["none", "model", "block"] = "none"
    attention: str | None = None
    compile_blocks: bool = False
    compile_mode: str | None = None  # torch.compile's mode (e.g. "max-autotune-no-cudagraphs")
    vae_tiling: bool = False
    fuse_qkv: bool = False
    fuse_ffn: bool = False
    # ulysses | ring: every forward's tokens split over the ranks (the process group must exist)
    context_parallel: Literal["ulysses", "ring"] | None = None

    def check(self) -> RuntimeOptions:
        """Cheap checks before any model loads; returns a copy with the device resolved."""
        if self.offload == "block" and self.compile_blocks:
            raise SetupError("--offload block streams the blocks through hooks: it does not combine with --compile")
        if self.offload == "block" and self.context_parallel:
            raise SetupError("--offload block streams the blocks through hooks: it does not combine with parallelism")
        return self.model_copy(update={"device": resolve_device(self.device)})


def resolve_device(device: str) -> str:
    """``auto`` -> cuda, then mps, then cpu; an unavailable device is a one-line error."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise SetupError(f"--device {device}: this torch has no CUDA device (torch {torch.__version__}); "
                         "pass --device cpu or install a CUDA build of torch")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SetupError(f"--device {device}: no MPS device here; pass --device cpu")
    if kind not in ("cpu", "cuda", "mps"):
        raise SetupError(f"--device {device}: expected auto, cpu, cuda, cuda:N or mps")
    if kind == "cuda" and ":" in device:
        index = device.split(":", 1)[1]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise SetupError(f"--device {device}: there are {torch.cuda.device_count()} CUDA device(s)")
    return device


def load_film_models(setup: ModelSetup, runtime: RuntimeOptions):
    """The :class:`~filmweaver.models.FilmModels` of ``setup``, set up to run as ``runtime`` says.

    The transformers are prepared by :func:`prepare_experts` (its order matters)."""
    import torch

    from filmweaver.models import load_models

    runtime = runtime.check()
    dtype = getattr(torch, DTYPES[runtime.dtype])
    # 1. weights (in CPU memory when they will be offloaded)
    load_device = "cpu" if runtime.offload != "none" else runtime.device
    models = load_models(preset=setup.preset, model=setup.model, embedder=setup.embedder, device=load_device,
                         dtype=dtype, lora=setup.lora, lora_2=setup.lora_2, vae_tiling=runtime.vae_tiling)
    models.model_id += setup.identity()
    models.setup = setup
    # 2. StoryMem: a text-to-video release for what has no memory
    if setup.first_shot_model:
        models.load_first_shot_model(setup.first_shot_model, dtype, load_device)
    # 3. fusion, 4. offload, 5. attention backend, context parallelism and compilation
    prepare_experts(models.experts(), runtime,
                    offload=(lambda: models.enable_model_offload(runtime.device, stream_blocks=runtime.offload == "block"))
                    if runtime.offload != "none" else None)
    return models


def prepare_experts(experts: list, runtime: RuntimeOptions, offload=None) -> None:
    """Set up transformers (:class:`~filmweaver.backbone.wan.ContextWanTransformer`) to run as ``runtime``
    says, in the one order that works: fused projections replace modules, so they come before
    offloading (``offload()``, which snapshots each module's weights); the attention backend and the
    context-parallel configuration go on the processors that will run, and compilation, last, traces
    them. Used by every command and by ``bench`` (random weights)."""
    from filmweaver.backbone.attention import (
        set_attention_backend,  # torch: this module stays light for the CLI
    )

    for expert in experts:
        if runtime.fuse_qkv:
            expert.fuse_qkv()
        if runtime.fuse_ffn:
            expert.fuse_ffn_gelu()
    if offload is not None:
        offload()
    for expert in experts:
        if runtime.attention:
            try:
                set_attention_backend(expert.transformer, runtime.attention)
            except (ValueError, RuntimeError, ImportError) as e:
                raise SetupError(f"--attention {runtime.attention}: {e}") from e
        if runtime.context_parallel:
            try:
                expert.enable_context_parallel(runtime.context_parallel)
            except (ValueError, RuntimeError) as e:
                raise SetupError(f"--context-parallel {runtime.context_parallel}: {e}") from e
        if runtime.compile_blocks:
            expert.compile_blocks(mode=runtime.compile_mode)
