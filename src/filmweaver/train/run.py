"""``filmweaver train CONFIG``: every phase of a training run, in order, resumable.

Phases (each skipped when its output exists in ``output_dir``):

1. render the synthetic data (workers; deterministic by seed);
2. ``vae``: train the compact video VAE (from-scratch models only), then set Wan's latent
   normalisation (per-channel mean/std) from the data -> ``vae/``;
3. ``embedder``: train the small CLIP used for keyframe selection and retrieval -> ``embedder/``;
4. ``probe``: the attribute probe for the ground-truth metrics -> ``probe/``;
5. ``dit``: the cache-guided objective, stage by stage (full training, or LoRA on a pretrained
   transformer) -> ``checkpoint/``, ``log.jsonl``. It is the last phase so that a run-wide
   ``time_budget_minutes`` can give it whatever time the others left;
6. save the whole model in the diffusers layout, the probe inside -> ``model/`` (loadable with ``--model``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from filmweaver.backbone.vae import LatentCodec
from filmweaver.memory.embedder import CLIPEmbedder
from filmweaver.models import FilmModels
from filmweaver.progress import progress_bar
from filmweaver.settings import dotted_keys
from filmweaver.synth.architecture import SYNTH_DEFAULTS, synth_architecture
from filmweaver.synth.dataset import render_dataset
from filmweaver.train.config import TrainConfig

SAVE_RESERVE_MINUTES = 0.5  # kept back from a run's time budget for what follows the DiT (save, plot)


class TimeBudgetSpent(RuntimeError):
    """``time_budget_minutes`` left too little for the DiT (the earlier phases' outputs are kept)."""


def dit_minutes(cfg: TrainConfig, elapsed_s: float) -> float | None:
    """The DiT phase's time limit: ``dit.max_minutes``, shrunk to what ``time_budget_minutes`` leaves
    after ``elapsed_s`` seconds of earlier phases. Raises when too little is left to train at all."""
    cap = cfg.dit.max_minutes
    if cfg.time_budget_minutes is None:
        return cap
    left = cfg.time_budget_minutes - elapsed_s / 60 - SAVE_RESERVE_MINUTES
    if left < 1.0:
        raise TimeBudgetSpent(
            f"time_budget_minutes={cfg.time_budget_minutes}: the phases before the DiT took {elapsed_s / 60:.1f} "
            f"minutes, leaving {max(left, 0):.1f} for the DiT (at least 1 is needed). Their outputs are kept: run "
            "again with a larger budget (or without one) and the run resumes at the DiT.")
    return left if cap is None else min(cap, left)


def build_models(cfg: TrainConfig, device) -> FilmModels:
    src = cfg.model
    if src.kind == "pretrained":
        if not src.path:
            raise ValueError("model.kind: pretrained needs model.path (a diffusers Wan directory or hub id)")
        # the frozen base in the training precision (a 14B expert in float32 would not fit beside its
        # activations); the adapter trains in float32 (add_memory_lora)
        dtype = torch.bfloat16 if cfg.mixed_precision == "bf16" else torch.float32
        return FilmModels.from_pretrained(src.path, embedder=src.embedder, device=str(device), dtype=dtype,
                                          only_expert=cfg.dit.expert)  # an A14B: the trained expert alone
    return synth_architecture(seed=cfg.seed, device=str(device), size=src.kind.split("-", 1)[1],
                              transformer=src.transformer, grammar=src.grammar)


def run_training(cfg: TrainConfig, progress: bool = True) -> dict:
    from accelerate import Accelerator, DistributedDataParallelKwargs

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    # several processes (`accelerate launch` / `torchrun`): the phases before the DiT run on the main
    # process (the others wait and load what it saved), the DiT is data parallel. A step's batch mode
    # can leave parameters unused (no keyframes: the shot-cache projections), hence find_unused_parameters.
    check_trackers(cfg.trackers)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision if torch.cuda.is_available() else "no",
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
                              log_with=list(cfg.trackers) or None, project_dir=str(out / "trackers"))
    if cfg.trackers:
        accelerator.init_trackers(out.name, config=_flat_config(cfg))
    check_launch(accelerator, int(os.environ.get("WORLD_SIZE", "1")))
    if accelerator.is_main_process:
        (out / "config.json").write_text(cfg.model_dump_json(indent=2))
    device = accelerator.device
    torch.manual_seed(cfg.seed)
    summary: dict = {"config": cfg.model_dump(mode="json"), "device": str(device)}
    timings = {}
    t = run_start = time.perf_counter()

    # 1. data: the synthetic world rendered here, or a curated dataset (read at the DiT, with the VAE)
    d = cfg.data
    curated = d.kind == "curated"
    scratch = cfg.model.kind != "pretrained"
    if curated:
        check_curated_config(cfg)
        data = None
    else:
        data = _rendered_data(cfg, accelerator, progress)
        timings["render_s"] = round(time.perf_counter() - t, 1)
        summary["data"] = {"frames": int(len(data.frames)), "shots": data.num_shots, "stories": d.num_stories,
                           "cast_stories": d.cast_stories, "long_takes": d.num_long_takes}
        accelerator.print(f"rendered {len(data.frames)} frames in {data.num_shots} shots ({timings['render_s']} s)")
    models = build_models(cfg, device)

    # 2. VAE
    if scratch and cfg.vae is not None:
        t = time.perf_counter()
        vae_dir = out / "vae"
        if cfg.vae.init_from and not (vae_dir / "config.json").is_file() and accelerator.is_main_process:
            shutil.copytree(Path(_model_dir(cfg.vae.init_from)) / "vae", vae_dir)
            summary["vae"] = {"init_from": cfg.vae.init_from}
        if not (vae_dir / "config.json").is_file() and accelerator.is_main_process:
            summary["vae"] = train_vae(models.codec.vae, data, cfg, device, progress)
            set_latent_statistics(models.codec.vae, data, device)
            models.codec.vae.save_pretrained(vae_dir)
        accelerator.wait_for_everyone()
        from diffusers import AutoencoderKLWan

        models.codec = LatentCodec(AutoencoderKLWan.from_pretrained(vae_dir).to(device))
        timings["vae_s"] = round(time.perf_counter() - t, 1)
    models.codec.vae.requires_grad_(False).eval()

    # 3. embedder
    if scratch and cfg.embedder is not None:
        t = time.perf_counter()
        emb_dir = out / "embedder"
        if cfg.embedder.init_from and not (emb_dir / "config.json").is_file() and accelerator.is_main_process:
            shutil.copytree(Path(_model_dir(cfg.embedder.init_from)) / "embedder", emb_dir)
            summary["embedder"] = {"init_from": cfg.embedder.init_from}
        if not (emb_dir / "config.json").is_file() and accelerator.is_main_process:
            summary["embedder"] = train_embedder(models, data, cfg, device, progress)
            models.embedder.model.save_pretrained(emb_dir)
        accelerator.wait_for_everyone()
        if cfg.embedder.init_from:  # another model's embedder keeps its own tokenizer and vocabulary
            models.embedder = CLIPEmbedder.from_pretrained(str(emb_dir), device=str(device))
        else:
            from transformers import CLIPModel

            models.embedder.model = CLIPModel.from_pretrained(emb_dir).to(device)
        models.embedder.model.eval().requires_grad_(False)
        timings["embedder_s"] = round(time.perf_counter() - t, 1)

    if cfg.stop_after == "embedder":
        return _finish(out, summary, timings, accelerator.is_main_process)

    # 4. probe (before the DiT: it needs only the frames and the VAE, and the DiT can then take the rest
    # of a time budget). Trained on the main process; the others wait for it.
    probe_dir = out / "probe"
    cast_probe = not curated and bool(d.cast_stories) and not (probe_dir / "cast" / "probe.json").is_file()
    if cfg.probe is not None and scratch and not curated and (not (probe_dir / "probe.json").is_file() or cast_probe):
        t = time.perf_counter()
        if accelerator.is_main_process:
            summary["probe"] = train_probe_phase(models, data, cfg, device, probe_dir, progress)
        accelerator.wait_for_everyone()
        timings["probe_s"] = round(time.perf_counter() - t, 1)
    if cfg.stop_after == "probe":
        return _finish(out, summary, timings, accelerator.is_main_process)

    # 5. DiT
    from filmweaver.train.data import LatentStore
    from filmweaver.train.dit import CacheGuidedDenoiser, train_dit

    dit_minutes(cfg, time.perf_counter() - run_start)  # a spent budget fails here, before encoding and compiling
    t = time.perf_counter()
    store_dtype = torch.float16 if device.type == "cuda" else torch.float32
    if curated:
        data, store = _curated_store(cfg, models, out, device, store_dtype, summary, progress)
    else:
        store = LatentStore.encode(data, models.codec, device, progress=progress, dtype=store_dtype)
    timings["encode_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    text_encoder = models.prompt_encoder.text_encoder
    dcfg = cfg.dit
    # also on a resume: the checkpoint holds the trained parameters only, so the frozen ones under a
    # LoRA must come from init_from again (the trained ones are then replaced by the checkpoint's)
    if dcfg.init_from:
        init_dit_from(models, _model_dir(dcfg.init_from))
        summary["dit_init_from"] = dcfg.init_from
    timestep_range = select_expert(models, dcfg.expert)
    if dcfg.lora is not None or not scratch:
        from filmweaver.backbone.lora import add_memory_lora
        from filmweaver.train.config import LoraConfig

        lora = dcfg.lora or LoraConfig()
        summary["lora_parameters"] = add_memory_lora(models.backbone.transformer, lora.rank, lora.alpha,
                                                     lora.target_modules, lora.use_rslora)
        text_encoder.requires_grad_(False)
    else:
        text_encoder.requires_grad_(dcfg.train_text_encoder)
    for expert in models.experts():
        if dcfg.gradient_checkpointing:
            expert.transformer.enable_gradient_checkpointing()
        expert.context_attention = dcfg.context_attention
        if dcfg.entity_tags:
            expert.enable_entity_tags()
        if dcfg.entity_slots:
            expert.enable_entity_slots()
        if dcfg.text_slots:
            expert.enable_text_slots()
        if dcfg.region_slots and not dcfg.entity_slots:
            raise ValueError("dit.region_slots marks entity slots by region: set dit.entity_slots too")
        expert.slot_regions = dcfg.region_slots
        if dcfg.regional_prompts:
            expert.enable_regional_text()
        if dcfg.compile_blocks:
            expert.compile_blocks(dynamic=True)
    ids, mask = models.prompt_encoder.tokenize(data.prompts)
    e_ids, e_mask = models.prompt_encoder.tokenize([""])
    unrestated = _unrestated_prompts(data, dcfg, models)
    if unrestated:
        summary["unrestated_shots"] = int(unrestated[2].sum())
    prompt_tables = {}
    if not any(p.requires_grad for p in text_encoder.parameters()) and not dcfg.entity_tags:
        # a frozen encoder: every prompt embedded once, then the encoder leaves the GPU
        from filmweaver.train.dit import PromptTable

        text_encoder.to(device)
        prompt_tables = {"prompts": PromptTable(text_encoder, ids, mask, device),
                         "empty_prompt": PromptTable(text_encoder, e_ids, e_mask, device)}
        if unrestated:
            prompt_tables["unrestated_prompts"] = PromptTable(text_encoder, *unrestated[:2], device)
        text_encoder.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    module = CacheGuidedDenoiser(models.backbone, None if prompt_tables else text_encoder).to(device)
    saved_copy, sharded = None, dcfg.fsdp and accelerator.num_processes > 1
    # a LoRA on a pretrained base saves the adapter and the memory projections, not the base
    trained_only = cfg.model.kind == "pretrained" and dcfg.lora is not None
    if sharded:  # the model saved at the end is gathered into an unsharded copy (main process)
        from filmweaver.train.sharding import host_copy_bytes, shard_for_training

        saved_copy = shard_for_training(module, [e.transformer for e in models.experts()], device,
                                        keep_copy=accelerator.is_main_process, without_frozen_base=trained_only)
        if saved_copy is not None:
            summary["saving_copy_mb"] = round(host_copy_bytes(saved_copy) / 2**20, 3)
    tags = {}
    if dcfg.entity_tags:
        if data.cast_names is None:
            raise ValueError("dit.entity_tags needs a rendered set with every shot's characters (render it again)")
        tag_ids, tag_mask = models.prompt_encoder.tokenize([" ".join(n) for n in data.cast_names])
        tags = {"tag_ids": tag_ids.to(device), "tag_mask": tag_mask.to(device)}
    if dcfg.text_slots:
        if not hasattr(models.backbone, "add_text_slots"):
            raise ValueError("dit.text_slots: a backbone of two experts (Wan2.2 A14B) takes no text slots")
        tags["text_slots"] = _text_slots(data, models, unrestated)
    if dcfg.regional_prompts:
        tags["regional"] = _regional_slots(data, models)
    minutes = dit_minutes(cfg, time.perf_counter() - run_start)
    if minutes != dcfg.max_minutes:
        accelerator.print(f"time_budget_minutes={cfg.time_budget_minutes}: the DiT gets {minutes:.1f} minutes")
        dcfg = dcfg.model_copy(update={"max_minutes": minutes})
    summary["dit_max_minutes"] = minutes
    summary["dit"] = train_dit(module, store, ids, mask, e_ids, e_mask, dcfg, accelerator, out, cfg.seed,
                               cfg.log_every, cfg.checkpoint_every, progress, timestep_range=timestep_range,
                               unrestated=unrestated, **prompt_tables, **tags)
    timings["dit_s"] = round(time.perf_counter() - t, 1)
    del store
    if sharded:
        from filmweaver.train.sharding import gather_for_saving

        gather_for_saving(module, saved_copy, trained_only=trained_only)
        if saved_copy is not None:
            models.backbone = saved_copy.backbone
            if saved_copy.text_encoder is not None:
                models.prompt_encoder.text_encoder = saved_copy.text_encoder

    # 6. save the model (EMA weights) with the probe inside it
    model_dir = out / "model"
    if accelerator.is_main_process:
        save_trained_model(models, cfg, model_dir)
        if (probe_dir / "probe.json").is_file():
            shutil.copytree(probe_dir, model_dir / "probe", dirs_exist_ok=True)
        plot_loss(out / "log.jsonl", out / "loss.png")
    timings["total_s"] = round(time.perf_counter() - run_start, 1)
    accelerator.end_training()  # trackers flush and close
    return _finish(out, summary, timings, accelerator.is_main_process)


def _unrestated_prompts(data, dcfg, models: FilmModels) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``augment.unrestate``: every shot's name-only prompt, tokenised (its own prompt where it has none),
    and which shots have one ``[S]``; None when the augmentation is off or no shot has one."""
    alt = getattr(data, "unrestated", None)
    if not dcfg.augment.unrestate or not alt or not any(alt):
        return None
    ids, mask = models.prompt_encoder.tokenize(_name_only_prompts(data))
    return ids, mask, torch.tensor([u is not None for u in alt])


def _name_only_prompts(data) -> list[str]:
    """Every shot's name-only prompt, its own prompt where it has none."""
    return [u or p for u, p in zip(data.unrestated, data.prompts, strict=True)]


def _shot_characters(data, option: str) -> list[list[str]]:
    """Every shot's characters in its order, which ``option`` needs (an error naming it without them)."""
    if data.cast_names is None:
        raise ValueError(f"{option} needs every shot's characters (a rendered set, or a curated one whose "
                         "captions name them)")
    return [list(n) for n in data.cast_names]


def _text_slots(data, models: FilmModels, unrestated) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``dit.text_slots``: each shot's prompt tokens' character slots ``[S, L]``
    (:func:`filmweaver.text.entity_token_slots`), and its name-only prompt's where there are some."""
    from filmweaver.text import entity_token_slots

    names = _shot_characters(data, "dit.text_slots")
    slots = entity_token_slots(models.prompt_encoder, data.prompts, names)
    alt = None
    if unrestated is not None:
        alt = entity_token_slots(models.prompt_encoder, _name_only_prompts(data), names)
    return slots, alt


def _regional_slots(data, models: FilmModels) -> tuple[torch.Tensor, torch.Tensor]:
    """``dit.regional_prompts``: each shot's prompt tokens' description slots ``[S, L]`` (a character's
    description, not its name: :func:`filmweaver.text.entity_token_slots` with ``spans="attributes"``) and
    how many characters it shows ``[S]`` (its strips)."""
    from filmweaver.text import entity_token_slots

    names = _shot_characters(data, "dit.regional_prompts")
    return (entity_token_slots(models.prompt_encoder, data.prompts, names, spans="attributes"),
            torch.tensor([len(n) for n in names]))


def _rendered_data(cfg: TrainConfig, accelerator, progress: bool):
    """The synthetic world's training set, rendered (or read from ``data.cache_dir``)."""
    from filmweaver.synth.dataset import load_rendered, save_rendered

    d = cfg.data
    data = load_rendered(d.cache_dir) if d.cache_dir else None
    if data is None:
        data = render_dataset(d.num_stories, d.num_long_takes, d.first_seed, tuple(d.shot_frames), d.long_take_frames,
                              d.height, d.width, d.workers, progress, cast_stories=d.cast_stories)
        if d.cache_dir and accelerator.is_main_process:
            save_rendered(data, d.cache_dir)
    return data


def check_curated_config(cfg: TrainConfig) -> None:
    """What a curated dataset cannot train (it has no renderer's ground truth): a VAE or an embedder
    from scratch. One line naming the setting, before anything loads."""
    if cfg.model.kind == "pretrained":
        return
    for phase in ("vae", "embedder"):
        section = getattr(cfg, phase)
        if section is not None and not section.init_from:
            raise ValueError(f"data.kind: curated trains the DiT only: set {phase}.init_from (e.g. builtin) "
                             f"for model.kind {cfg.model.kind}")


def _curated_store(cfg: TrainConfig, models: FilmModels, out: Path, device, dtype, summary: dict, progress: bool):
    """The curated dataset's shot table and latent store: the latents (precomputed in its shards, or
    encoded once) in ``output_dir/latents.bin``, memory-mapped on the host; each batch's rows go to the
    device as they are drawn."""
    from filmweaver.train.curated import concat_tables, load_curated
    from filmweaver.train.data import BucketedStore, LatentStore

    d, codec = cfg.data, models.codec
    size = (d.height or models.defaults.get("height", 480), d.width or models.defaults.get("width", 832))
    if not d.buckets:
        latents, table, info = load_curated(d.path, codec, size, min_length=cfg.dit.chunk_frames,
                                            min_shots=d.min_shots, cache=out / "latents.bin", progress=progress)
        summary["data"] = {"kind": "curated", "path": d.path, "height": size[0], "width": size[1],
                           "latent_frames": int(len(latents)), **info}
        return table, LatentStore(latents, table, temporal_factor=codec.temporal_factor, device=device, dtype=dtype)
    buckets = [tuple(b) for b in d.buckets]
    tables, stores, per_bucket = [], [], {}
    for h, w in buckets:  # one pass over the shards per bucket; each bucket's latents in a file of its own
        latents, table, info = load_curated(d.path, codec, (h, w), min_length=cfg.dit.chunk_frames,
                                            min_shots=d.min_shots, cache=out / f"latents-{h}x{w}.bin",
                                            progress=progress, buckets=buckets)
        per_bucket[f"{h}x{w}"] = {"samples": info["samples"], "shots": info["shots"],
                                  "latent_frames": 0 if latents is None else int(len(latents))}
        if latents is not None:
            tables.append(table)
            stores.append(LatentStore(latents, table, temporal_factor=codec.temporal_factor, device=device, dtype=dtype))
    if not stores:
        raise ValueError(f"data.path: no scene of {d.path} has {d.min_shots} shots of at least "
                         f"{cfg.dit.chunk_frames} latent frames in any bucket")
    summary["data"] = {"kind": "curated", "path": d.path, "buckets": per_bucket,
                       "samples": sum(b["samples"] for b in per_bucket.values()),
                       "shots": sum(b["shots"] for b in per_bucket.values()),
                       "latent_frames": sum(b["latent_frames"] for b in per_bucket.values())}
    return concat_tables(tables), BucketedStore(stores)


def check_trackers(trackers: list[str]) -> None:
    """Each tracker's package is installed (one line naming the missing one, before anything trains)."""
    import importlib.util

    for name in trackers:
        if importlib.util.find_spec(name) is None:
            raise ValueError(f"trackers: {name} is not installed (pip install {name})")


def check_launch(accelerator, launched: int) -> None:
    """Refuse what would train wrongly: ``launched`` processes that accelerate does not see as one group
    (each would train alone on the same files), or accelerate's own FSDP / DeepSpeed (it would wrap the
    model its own way; ``dit.fsdp`` shards it here)."""
    kind = accelerator.distributed_type.value
    if kind in ("FSDP", "DEEPSPEED"):
        raise RuntimeError(f"accelerate is configured for {kind}: filmweaver shards the model itself with --set "
                           "dit.fsdp=true; launch with a plain multi-GPU accelerate config (or torchrun)")
    if launched > 1 and accelerator.num_processes == 1:
        raise RuntimeError(f"launched as {launched} processes, but accelerate sees one (on a machine without a GPU, "
                           "set ACCELERATE_USE_CPU=1 or use `accelerate launch --cpu`)")


def _flat_config(cfg: TrainConfig) -> dict:
    """The config as one level of dotted keys with plain values (what trackers' hyper-parameter tables take)."""
    return {k: v if isinstance(v, int | float | str | bool) else str(v)
            for k, v in dotted_keys(cfg.model_dump(mode="json")).items()}


def _finish(out: Path, summary: dict, timings: dict, write: bool = True) -> dict:
    summary["timings"] = timings
    if write:  # the main process's (several processes would write the same file at once)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _model_dir(spec: str) -> str:
    """A model directory, or ``"builtin"``: the shipped model's."""
    from filmweaver.models import BUILTIN_MODEL_DIR

    return str(BUILTIN_MODEL_DIR) if spec == "builtin" else spec


def init_dit_from(models: FilmModels, model_dir: str) -> None:
    """Copy a saved model's transformer, context projections and text encoder into ``models`` (the
    architectures must match: a missing or mis-shaped tensor is an error naming it)."""
    src = FilmModels.from_pretrained(model_dir, device="cpu")
    pairs = [(models.backbone.transformer, src.backbone.transformer, "transformer"),
             (models.backbone.context_proj, src.backbone.context_proj, "context projections"),
             (models.prompt_encoder.text_encoder, src.prompt_encoder.text_encoder, "text encoder")]
    # a model trained with entity tags, entity slots or text slots passes them on
    for attr, _, enable, label in src.backbone.ENTITY_PROJECTIONS:
        if getattr(src.backbone, attr) is not None:
            getattr(models.backbone, enable)()
            pairs.append((getattr(models.backbone, attr), getattr(src.backbone, attr), label))
    for dst, s, name in pairs:
        theirs = s.state_dict()
        mine = dst.state_dict()
        if name == "text encoder":  # a grown vocabulary: each known word keeps its embedding
            theirs = _vocabulary_mapped(theirs, mine, src.prompt_encoder.tokenizer, models.prompt_encoder.tokenizer)
        bad = sorted(k for k in mine if k not in theirs or theirs[k].shape != mine[k].shape)
        if bad or set(theirs) - set(mine):
            raise ValueError(f"dit.init_from={model_dir}: the {name} does not match this architecture "
                             f"(first differing tensor: {(bad or sorted(set(theirs) - set(mine)))[0]})")
        dst.load_state_dict({k: v.to(mine[k].dtype) for k, v in theirs.items()})


def _vocabulary_mapped(theirs: dict, mine: dict, their_tokenizer, my_tokenizer) -> dict:
    """``theirs`` with every token-embedding matrix re-indexed to ``my_tokenizer``'s vocabulary: a token
    both know keeps its row, a new one starts at the mean of the old rows (a vocabulary that grew)."""
    old, new = their_tokenizer.get_vocab(), my_tokenizer.get_vocab()
    if old == new:
        return theirs
    out = dict(theirs)
    for k, v in theirs.items():
        if k in mine and v.ndim == 2 and v.shape[0] == len(old) and mine[k].shape[0] == len(new) \
                and v.shape[1] == mine[k].shape[1]:
            rows = v.mean(0, keepdim=True).repeat(len(new), 1)
            for tok, i in new.items():
                if tok in old:
                    rows[i] = v[old[tok]]
            out[k] = rows
    return out


def export_ema(ema_file: str | Path, base_model: str | Path, out_dir: str | Path, model_id: str | None = None) -> dict:
    """A loadable model from a DiT checkpoint's EMA weights alone: ``ema_file`` (a run's
    ``checkpoint/ema.safetensors``, or a half-precision copy of it) into ``base_model``'s architecture,
    whose VAE, embedder, tokenizer, scheduler and probe it keeps. For a run that stopped before its end
    (a lease that went away) or to look at a run midway. Full-training checkpoints only: LoRA
    checkpoints hold adapter weights. Returns ``{"tensors": N, "model_id": ...}``.

    Every tensor must name a parameter of the transformer, its context projections or the text encoder
    with the same shape (the error names the first that does not); the base model's own weights stay
    where the checkpoint has none (the text encoder, when it was frozen)."""
    from safetensors.torch import load_file

    from filmweaver.train.dit import CacheGuidedDenoiser

    ema = load_file(str(ema_file))
    if any(k.startswith("p") and k[1:].isdigit() for k in ema):
        raise ValueError(f"{ema_file}: the EMA weights are stored by position (a checkpoint written before "
                         "they were named): resume the run from its checkpoint to save its model instead")
    if any("lora_" in k for k in ema):
        raise ValueError(f"{ema_file}: a LoRA checkpoint (adapter weights); export_ema takes full-training ones")
    models = FilmModels.from_pretrained(str(base_model), device="cpu")
    module = CacheGuidedDenoiser(models.backbone, models.prompt_encoder.text_encoder)
    params = dict(module.named_parameters())
    for k, t in ema.items():
        if k not in params or params[k].shape != t.shape:
            why = "no such parameter" if k not in params else f"shape {tuple(t.shape)}, the model's {tuple(params[k].shape)}"
            raise ValueError(f"{ema_file}: tensor {k} does not fit {base_model} ({why})")
    with torch.no_grad():
        for k, t in ema.items():
            params[k].copy_(t.to(params[k].dtype))
    models.trained = True
    models.model_id = model_id or f"{models.model_id}+{Path(ema_file).stem}"
    out = Path(out_dir)
    models.save_pretrained(out, dtype=torch.float16)
    # what the EMA does not hold stays the base model's files, byte for byte: saving would cast the VAE
    # and CLIP embedder to half precision (the shipped embedder is float32) and rewrite their configs
    for part in ("vae", "embedder", "probe"):
        if (Path(base_model) / part).is_dir():
            shutil.rmtree(out / part, ignore_errors=True)
            shutil.copytree(Path(base_model) / part, out / part)
    return {"tensors": len(ema), "model_id": models.model_id}


def train_vae(vae, data, cfg: TrainConfig, device, progress: bool) -> dict:
    """Reconstruction (L1 + L2) with a small KL term, on random ``clip_frames``-frame clips."""
    vc = cfg.vae
    rng = np.random.default_rng(cfg.seed)
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=vc.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=vc.lr, total_steps=vc.steps, pct_start=0.05)
    n = vc.clip_frames
    ok = np.nonzero(data.shot_length >= n)[0]
    losses = []
    for _ in progress_bar(range(vc.steps), desc="vae", enabled=progress):
        shots = rng.choice(ok, size=vc.batch_size)
        first = np.array([rng.integers(data.shot_length[s] - n + 1) for s in shots]) + data.shot_start[shots]
        idx = first[:, None] + np.arange(n)[None]
        x = torch.from_numpy(data.frames[idx]).to(device).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.sample()).sample
        rec = rec.float()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + vc.kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    vae.eval()
    return {"steps": vc.steps, "final_loss": float(np.mean(losses[-50:]))}


@torch.no_grad()
def set_latent_statistics(vae, data, device, num_frames: int = 4096) -> None:
    """Wan normalises latents per channel, ``(z - mean) / std``; set both from the training data."""
    idx = np.linspace(0, len(data.frames) - 1, min(num_frames, len(data.frames))).astype(int)
    x = torch.from_numpy(data.frames[idx]).to(device).permute(0, 3, 1, 2).float() / 255.0
    z = torch.cat([vae.encode(c[:, :, None] * 2 - 1).latent_dist.mode().float() for c in x.split(256)])
    mean = z.mean(dim=(0, 2, 3, 4))
    std = z.std(dim=(0, 2, 3, 4)).clamp_min(1e-3)
    vae.register_to_config(latents_mean=mean.tolist(), latents_std=std.tolist())


def train_embedder(models: FilmModels, data, cfg: TrainConfig, device, progress: bool) -> dict:
    """Contrastive (CLIP) training on (frame, prompt of its shot) pairs."""
    ec = cfg.embedder
    emb = models.embedder
    clip = emb.model.train().requires_grad_(True)
    rng = np.random.default_rng(cfg.seed + 1)
    tok = emb.tokenizer(data.prompts, padding="max_length", max_length=emb.max_text_length, truncation=True,
                        return_tensors="pt")
    opt = torch.optim.AdamW(clip.parameters(), lr=ec.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=ec.lr, total_steps=ec.steps, pct_start=0.05)
    losses = []
    for _ in progress_bar(range(ec.steps), desc="embedder", enabled=progress):
        # one frame per shot in a batch, so that no two pairs share a prompt by construction
        shots = rng.choice(data.num_shots, size=min(ec.batch_size, data.num_shots), replace=False)
        frames = data.shot_start[shots] + np.array([rng.integers(data.shot_length[s]) for s in shots])
        x = torch.from_numpy(data.frames[frames]).to(device).permute(0, 3, 1, 2).float() / 255.0
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = clip(input_ids=tok.input_ids[shots].to(device), attention_mask=tok.attention_mask[shots].to(device),
                       pixel_values=emb.preprocess(x), return_loss=True)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        sched.step()
        losses.append(out.loss.item())
    clip.eval()
    return {"steps": ec.steps, "final_loss": float(np.mean(losses[-50:]))}


def train_probe_phase(models: FilmModels, data, cfg: TrainConfig, device, probe_dir: Path, progress: bool) -> dict:
    from filmweaver.synth.probe import train_probe

    pc = cfg.probe
    d = cfg.data
    acc: dict = {}
    if pc.init_from and not (probe_dir / "probe.json").is_file():
        shutil.copytree(Path(_model_dir(pc.init_from)) / "probe", probe_dir)
        acc["attributes"] = {"init_from": pc.init_from}
    if not (probe_dir / "probe.json").is_file():
        # held-out frames come from stories outside the training range (and outside the evaluation range)
        held = render_dataset(pc.held_out_stories, 0, d.first_seed + 50_000_000, tuple(d.shot_frames),
                              d.long_take_frames, d.height, d.width, d.workers, progress)
        probe, acc["attributes"] = train_probe(data.frames, data.frame_labels(), held.frames, held.frame_labels(),
                                               models.codec, pc.steps, pc.batch_size, pc.lr, device, cfg.seed, progress)
        probe.save(probe_dir, acc["attributes"])
    if d.cast_stories and not (probe_dir / "cast" / "probe.json").is_file():
        acc["cast"] = train_cast_probe_phase(models, data, cfg, device, probe_dir / "cast", progress)
    return acc if d.cast_stories or pc.init_from else acc["attributes"]


def train_cast_probe_phase(models: FilmModels, data, cfg: TrainConfig, device, cast_dir: Path, progress: bool) -> dict:
    """The cast probe (who is where: synth.cast_metrics reads generated cast stories with it), on the
    training frames, checked on held-out cast stories."""
    from filmweaver.synth.probe import cast_targets, train_cast_probe

    pc, d = cfg.probe, cfg.data
    held = render_dataset(0, 0, d.first_seed + 60_000_000, tuple(d.shot_frames), d.long_take_frames, d.height, d.width,
                          d.workers, progress, cast_stories=max(2, pc.held_out_stories // 4))

    def targets(s):
        return cast_targets(np.repeat(s.shot_cast, s.shot_length, axis=0), s.frame_boxes,
                            np.repeat(s.shot_labels[:, 4:], s.shot_length, axis=0))

    probe, acc = train_cast_probe(data.frames, targets(data), held.frames, targets(held), models.codec, pc.steps,
                                  pc.batch_size, pc.lr, device, cfg.seed, progress)
    probe.save(cast_dir, acc)
    return acc


def select_expert(models: FilmModels, expert: str | None) -> tuple[float, float] | None:
    """``dit.expert``: keep only that expert of a Wan2.2 A14B (the other is not needed to train it) and
    return the noise levels it denoises (``[boundary, 1]`` or ``[0, boundary)``, as flow-matching
    sigmas), to which its training timesteps are confined; None for one transformer."""
    from filmweaver.backbone.experts import ExpertSwitch

    switch = models.backbone
    if not isinstance(switch, ExpertSwitch):
        if expert is not None:
            raise ValueError(f"dit.expert {expert!r}: this model has one transformer (no experts); unset it")
        return None
    if expert is None:
        raise ValueError("dit.expert: this model has two experts (Wan2.2 A14B); train one per run: "
                         "dit.expert=high_noise (its `transformer`, for --lora) or low_noise (`transformer_2`, --lora-2)")
    models.backbone = switch.high_noise if expert == "high_noise" else switch.low_noise
    b = switch.boundary_ratio
    return (b, 1.0) if expert == "high_noise" else (0.0, b)


def save_trained_model(models: FilmModels, cfg: TrainConfig, model_dir: Path) -> None:

    models.trained = True
    models.model_id = f"filmweaver-{cfg.model.kind}" if cfg.model.kind != "pretrained" else f"{cfg.model.path}+lora"
    models.model_id += f"@{Path(cfg.output_dir).name}"
    if cfg.model.kind != "pretrained":
        d = dict(SYNTH_DEFAULTS)
        aug = cfg.dit.augment
        # show cache frames at the noise level they were trained at (the low end of the range)
        d["shot_cache.timestep"] = aug.noise_shot_cache[0] if aug.noise_shot_cache else 0.0
        d["temporal_cache.timestep"] = aug.noise_temporal_cache[0] if aug.noise_temporal_cache else 0.0
        d["chunk_frames"] = cfg.dit.chunk_frames
        d["sampler.shift"] = cfg.dit.timestep_shift
        d["temporal_cache.schedule"] = [list(x) for x in cfg.dit.temporal_schedule]
        d["shot_cache.compression"] = cfg.dit.memory_compression
        if aug.entity_memory > 0:  # trained on memory as the entity policy retrieves it: retrieve it so
            d["shot_cache.policy"] = "entity"
        if cfg.dit.regional_prompts:
            d["regional_prompts"] = True
        d.update(dotted_keys(cfg.generate, depth=1))  # what the recipe recommends for generating
        models.defaults = d
    tr = models.backbone.transformer
    dtype = torch.float16 if cfg.save_dtype == "float16" else torch.float32
    if getattr(tr, "peft_config", None):
        # the adapter on its own, with the memory projections it was trained with beside it (base +
        # this directory = the trained model: generate --lora), then for the synthetic kinds the merged
        # model (to load anywhere); a pretrained base is the user's own, not copied
        lora_dir = model_dir / "lora"
        tr.save_lora_adapter(str(lora_dir))
        models.backbone.save_context_projections(lora_dir)
        if cfg.model.kind == "pretrained":
            return
        tr.fuse_lora()
        tr.unload_lora()
    models.save_pretrained(model_dir, dtype=dtype)


def plot_loss(log_path: Path, png: Path) -> None:
    if not log_path.is_file():
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    recs = [json.loads(x) for x in log_path.read_text().splitlines()]
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=120)
    for stage in dict.fromkeys(r["stage"] for r in recs):
        rs = [r for r in recs if r["stage"] == stage]
        line, = ax.plot([r["step"] for r in rs], [r["loss"] for r in rs], label=stage)
        for key, style in (("character_loss", "--"), ("props_loss", ":")):
            if any(key in r for r in rs):
                ax.plot([r["step"] for r in rs if key in r], [r[key] for r in rs if key in r], style,
                        color=line.get_color(), label=f"{stage}: {key.split('_')[0]} pixels")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
