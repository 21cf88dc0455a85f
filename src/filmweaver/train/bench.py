"""``filmweaver bench --train``: a memory-LoRA training step at real sizes with random weights.

What ``filmweaver train`` does per step on a pretrained Wan (``model.kind: pretrained``), timed on
random weights of a release shape (nothing is downloaded): the frozen base in the bench's dtype, a
float32 LoRA on StoryMem's targets (:func:`~filmweaver.backbone.lora.add_memory_lora`), gradient
checkpointing on every block, one chunk of ``frames`` frames at ``height x width`` with ``memory``
shot-cache keyframes (and the temporal cache, with ``temporal``) as context, the velocity loss under
autocast, backward, gradient clipping and the optimizer step (:func:`~filmweaver.train.dit.make_optimizer`).
The prompt is a random embedding of the text width: the trainer embeds every prompt once with the
frozen text encoder (:class:`~filmweaver.train.dit.PromptTable`) and moves the encoder off the GPU.
``fsdp`` (under ``torchrun``): the transformer sharded over the ranks as ``dit.fsdp`` trains
(:mod:`filmweaver.train.sharding`), each rank one sample a step. Reported per case: seconds per step
(median of ``repeats`` after ``warmup``), peak GPU memory (rank 0's), trainable parameters, tokens.
"""

from __future__ import annotations

import torch

from filmweaver.backbone.lora import add_memory_lora
from filmweaver.bench import (
    SHAPES,
    TEXT_TOKENS,
    BenchOptions,
    build_transformer,
    latent_grid,
    machine_env,
    median_seconds,
    random_context,
)
from filmweaver.context import flow_interpolate
from filmweaver.runtime import RuntimeOptions, prepare_experts
from filmweaver.train.config import DiTPhase
from filmweaver.train.dit import make_optimizer, sample_timesteps
from filmweaver.train.sharding import clip_grad_norm, shard_for_training


def run_train_bench(o: BenchOptions, progress: bool = False) -> dict:
    """Time one training step per (memory, temporal) case; returns ``{"cases": [...], "env": {...}}``."""
    device, world = o.device, 1
    if o.fsdp:
        import torch.distributed as dist

        from filmweaver.parallel import init_distributed

        device, _ = init_distributed(device, flag="--fsdp")
        world = dist.get_world_size()
    dev, dtype = torch.device(device), o.torch_dtype()
    bb = build_transformer(o.shape, dev, dtype)
    bb.context_attention = o.context_attention
    prepare_experts([bb], RuntimeOptions(device=o.device, attention=o.attention_backend))
    trainable = add_memory_lora(bb.transformer, o.lora_rank)
    bb.transformer.enable_gradient_checkpointing()
    bb.train()
    if o.fsdp:
        shard_for_training(bb, [bb.transformer], dev, keep_copy=False)
    params = [p for p in bb.parameters() if p.requires_grad]
    opt = make_optimizer(params, DiTPhase(optimizer=o.optimizer, lr=1e-5))
    c, lf, lh, lw = latent_grid(o.shape, o.frames, o.height, o.width)
    g = torch.Generator(device=dev).manual_seed(0)
    x0 = torch.randn(o.batch, c, lf, lh, lw, generator=g, device=dev)
    text = torch.randn(o.batch, TEXT_TOKENS, SHAPES[o.shape]["text_dim"], generator=g, device=dev, dtype=dtype)

    def step(ctx):
        s = sample_timesteps(o.batch, 3.0, dev)
        eps = torch.randn_like(x0)
        x_t = flow_interpolate(x0, eps, s.view(-1, 1, 1, 1, 1))
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32):
            v = bb(x_t, s * 1000.0, text, context=ctx)
        loss = (v.float() - (eps - x0)).pow(2).mean()
        loss.backward()
        clip_grad_norm(params, 1.0) if o.fsdp else torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    cases = []
    for tc in o.temporal:
        for m in o.memory:
            ctx = random_context(o, m, tc, (c, lh, lw), g, dev, dtype)
            n_ctx = bb.count_tokens(ctx, (lh, lw))
            n_gen = lf * (lh // 2) * (lw // 2)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
                torch.cuda.reset_peak_memory_stats(dev)
            seconds = median_seconds(lambda ctx=ctx: step(ctx), dev, o.warmup, o.repeats)
            peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
            case = {"shape": o.shape, "height": o.height, "width": o.width, "frames": o.frames, "memory": m,
                    "temporal": tc, "batch": o.batch, "tokens": n_gen + n_ctx, "context_tokens": n_ctx,
                    "seconds_per_step": round(seconds, 3), "peak_gpu_gib": None if peak is None else round(peak, 1)}
            cases.append(case)
            if progress:
                print(case, flush=True)
    env = {**machine_env(dev, dtype, o.attention_backend), "lora_rank": o.lora_rank, "trainable_parameters": trainable, "optimizer": o.optimizer,
           "gradient_checkpointing": True, "context_attention": o.context_attention, "warmup": o.warmup,
           "repeats": o.repeats, "fsdp": o.fsdp, "world_size": world}
    return {"cases": cases, "env": env}


def markdown_rows(result: dict, command: str) -> str:
    env = result["env"]
    lines = ["| shape | res x frames | memory | temporal | tokens | s / step | peak GPU memory |",
             "|---|---|---|---|---|---|---|"]
    for c in result["cases"]:
        peak = "-" if c["peak_gpu_gib"] is None else f"{c['peak_gpu_gib']} GiB"
        lines.append(f"| {c['shape']} | {c['height']}x{c['width']}x{c['frames']} | {c['memory']} | "
                     f"{'yes' if c['temporal'] else 'no'} | {c['tokens']:,} | {c['seconds_per_step']:.2f} | {peak} |")
    lines += ["", f"{env['device']}, torch {env['torch']}, diffusers {env.get('diffusers')}, {env['dtype']} base, "
              f"float32 LoRA rank {env['lora_rank']} ({env['trainable_parameters'] / 1e6:.0f} M parameters), "
              f"{env['optimizer']}, gradient checkpointing, attention {env['attention_backend']}, batch "
              f"{result['cases'][0]['batch']}"
              + (f" per rank, sharded over {env['world_size']} (FSDP2; peak memory: rank 0's)" if env.get("fsdp") else "")
              + f", median of {env['repeats']}. Command: `{command}`"]
    return "\n".join(lines) + "\n"


def run(options: BenchOptions, progress: bool = False) -> tuple[dict, str]:
    """``filmweaver bench --train`` as the CLI runs it: the result (with its command) and markdown rows."""
    if options.story or options.context_parallel or options.cfg_parallel:
        raise ValueError("--train times a training step (sharded over GPUs with --fsdp): without --story, "
                         "--context-parallel, --cfg-parallel")
    command = options.command()
    result = run_train_bench(options, progress)
    result["command"] = command
    return result, markdown_rows(result, command)
