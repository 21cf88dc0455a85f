"""The cache-guided flow-matching objective and its training loop (full or LoRA, one code path).

For a batch (see :mod:`filmweaver.train.data`): noise the target chunk to a random timestep
(``x_t = (1 - s) x_0 + s eps``), build the context exactly as the engine does at inference (temporal
cache through :class:`TemporalCache`, keyframes at :func:`memory_positions`), optionally noise the
cache frames (asymmetric noising) and regress the velocity ``eps - x_0`` of the target only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from filmweaver.backbone.regional_text import TextRegions, strip_regions
from filmweaver.context import ContextFrames, flow_interpolate, noise_to_timestep
from filmweaver.memory.shot_cache import memory_positions
from filmweaver.memory.temporal_cache import TemporalCache
from filmweaver.progress import progress_bar
from filmweaver.synth.world import COVERAGE_LAYERS
from filmweaver.text import embed_token_ids, mean_over_tokens
from filmweaver.train.config import DiTPhase
from filmweaver.train.data import Batch, LatentStore, to_device
from filmweaver.train.sharding import (
    assign_full,
    clip_grad_norm,
    full_tensor,
    is_sharded,
    load_optimizer_state,
    optimizer_state,
)

FIT_WINDOW = 500  # steps per rate measurement (fit_steps_to_time)
SYNC_EVERY = 50  # steps between the ranks' joint deadline checks (several processes)


class CacheGuidedDenoiser(nn.Module):
    """Backbone + text encoder as one module (what the optimiser and accelerate see)."""

    def __init__(self, backbone, text_encoder):
        super().__init__()
        self.backbone = backbone
        self.text_encoder = text_encoder

    def forward(self, x_t, timestep, ids, mask, context: list[ContextFrames], tag_ids=None, tag_mask=None, text=None,
                text_slots=None, text_regions=None):
        """``tag_ids`` / ``tag_mask`` ``[B, K, L]``: the names each shot-cache keyframe shows (entity tags,
        pooled like :func:`filmweaver.text.pooled_embeddings`) for a backbone with entity tags.
        ``text`` ``[B, L, D]``: the prompts' embeddings, computed beforehand (:class:`PromptTable`)
        when the text encoder is frozen; then ``ids`` / ``mask`` are not read. ``text_slots [B, L]``:
        each prompt token's character slot (-1: none), for a backbone with text slots. ``text_regions``:
        a batched :class:`~filmweaver.backbone.regional_text.TextRegions` (regional prompts)."""
        if text is None:
            text = embed_token_ids(self.text_encoder, ids, mask)
        if text_slots is not None:
            text = self.backbone.add_text_slots(text, text_slots)
        if tag_ids is not None:
            b, k, n = tag_ids.shape
            ids, tag_mask = tag_ids.reshape(b * k, n), tag_mask.reshape(b * k, n)
            pooled = mean_over_tokens(embed_token_ids(self.text_encoder, ids, tag_mask).float(), tag_mask).reshape(b, k, -1)
            context = [dataclasses.replace(c, entity_embeddings=pooled) if c.kind == "shot" else c for c in context]
        if text_regions is not None:
            return self.backbone(x_t, timestep, text, context=context, text_regions=text_regions)
        return self.backbone(x_t, timestep, text, context=context)


class PromptTable:
    """Every prompt's embedding computed once by a frozen text encoder (what :func:`embed_token_ids`
    gives it in training) and kept in host memory trimmed to its real tokens, so the encoder can leave
    the GPU (UMT5-XXL: 11 GiB in bfloat16). :meth:`get` gives rows ``[B, L, D]`` padded with zeros to
    the encoder's length, exactly the encoder's output."""

    def __init__(self, text_encoder, ids: torch.Tensor, mask: torch.Tensor, device, batch: int = 16):
        self.length = ids.shape[1]
        self.rows: list[torch.Tensor] = []
        with torch.no_grad():
            for i in range(0, len(ids), batch):
                hidden = embed_token_ids(text_encoder, ids[i:i + batch].to(device), mask[i:i + batch].to(device))
                for row, m in zip(hidden, mask[i:i + batch], strict=True):
                    self.rows.append(row[: int(m.sum())].cpu())
        self.width, self.dtype = hidden.shape[-1], hidden.dtype

    def get(self, index, device) -> torch.Tensor:
        out = torch.zeros(len(index), self.length, self.width, dtype=self.dtype, device=device)
        for k, i in enumerate(torch.as_tensor(index).tolist()):
            row = self.rows[i]
            out[k, : len(row)] = row.to(device, non_blocking=True)
        return out


def build_context(batch: Batch, schedule, t_shot: torch.Tensor | None, t_temporal: torch.Tensor | None,
                  gap: float = 0.0, memory_compression: int = 1, entity_slots: bool = False) -> list[ContextFrames]:
    """The context blocks for ``batch``, placed as the engine places them (shot cache first);
    ``entity_slots``: the keyframes carry which of the shot's characters they show (``batch.memory_slots``)."""
    capacity = sum(n for _, n in schedule)
    blocks: list[ContextFrames] = []
    if batch.memory is not None:
        mem = batch.memory
        if t_shot is not None:
            mem = noise_to_timestep(mem, t_shot, noise=torch.randn_like(mem))
        slots = batch.memory_slots.to(mem.device) if entity_slots and batch.memory_slots is not None else None
        blocks.append(ContextFrames(mem, memory_positions(mem.shape[2], capacity, gap),
                                    0.0 if t_shot is None else t_shot, 1, kind="shot", spatial=memory_compression,
                                    entity_slots=slots))
    if batch.history is not None:
        # one TemporalCache per history length (not per item): a handful of batched pushes per step
        by_len: dict[int, list[int]] = {}
        for i, h in enumerate(batch.history):
            by_len.setdefault(h.shape[1], []).append(i)
        order, groups = [], []
        for idx in by_len.values():
            cache = TemporalCache(list(schedule))
            cache.push(torch.stack([batch.history[i] for i in idx]))
            groups.append(cache.context(0.0))
            order += idx
        inverse = to_device(torch.argsort(torch.tensor(order)), groups[0][0].latents.device)
        for j, first in enumerate(groups[0]):
            lat = torch.cat([g[j].latents for g in groups])[inverse]
            if t_temporal is not None:
                lat = noise_to_timestep(lat, t_temporal, noise=torch.randn_like(lat))
            blocks.append(ContextFrames(lat, first.positions, 0.0 if t_temporal is None else t_temporal,
                                        first.compression, kind="temporal"))
    return blocks


def sample_timesteps(n: int, shift: float, device, generator: torch.Generator | None = None,
                     within: tuple[float, float] | None = None) -> torch.Tensor:
    """Flow-matching noise levels in (0, 1), shifted towards noise as the sampler's ``shift`` does;
    ``within`` = (lo, hi): only levels in that range, with the same density inside it (one expert's
    share of the schedule)."""
    u = torch.rand(n, device=device, generator=generator)
    if within is not None:  # the shift is monotone: map the range back to uniform draws and draw in there
        lo, hi = (s / (shift - (shift - 1) * s) for s in within)
        u = lo + (hi - lo) * u
    u = u.clamp(1e-4, 1 - 1e-4)
    return shift * u / (1 + (shift - 1) * u)


def make_optimizer(params: list[nn.Parameter], cfg: DiTPhase) -> torch.optim.Optimizer:
    """``dit.optimizer``: torch's AdamW, or bitsandbytes' 8-bit AdamW (same hyper-parameters)."""
    kwargs = dict(lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as e:
            raise ValueError("dit.optimizer adamw8bit needs bitsandbytes (pip install bitsandbytes; CUDA)") from e
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def _uniform(n: int, lo_hi, device) -> torch.Tensor | None:
    if lo_hi is None:
        return None
    lo, hi = lo_hi
    return lo + (hi - lo) * torch.rand(n, device=device)


class EMA:
    """Exponential moving average of the trained parameters (fp32 shadows). ``names``: the parameters'
    names in the module, the keys the checkpoint stores the shadows under (so a checkpoint's EMA alone
    makes a model: :func:`filmweaver.train.run.export_ema`)."""

    def __init__(self, params: list[nn.Parameter], decay: float, names: list[str] | None = None):
        self.params = params
        self.decay = decay
        self.shadow = [p.detach().float().clone() for p in params]
        self.names = names or [f"p{i}" for i in range(len(params))]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadows by name, whole (a collective when the parameters are sharded)."""
        return {n: full_tensor(s).cpu().contiguous() for n, s in zip(self.names, self.shadow, strict=True)}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        # checkpoints written before the shadows were named store them by position (p0, p1, ...)
        keys = self.names if self.names[0] in state else [f"p{i}" for i in range(len(self.shadow))]
        for k, s in zip(keys, self.shadow, strict=True):
            assign_full(s, state[k])

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1 - self.decay)

    @torch.no_grad()
    def copy_to(self) -> None:
        for s, p in zip(self.shadow, self.params, strict=True):
            p.copy_(s.to(p.dtype))


def train_dit(module: CacheGuidedDenoiser, store: LatentStore, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
              empty_ids: torch.Tensor, empty_mask: torch.Tensor, cfg: DiTPhase, accelerator, out_dir: Path,
              seed: int = 0, log_every: int = 50, checkpoint_every: int = 1000, progress: bool = True,
              tag_ids: torch.Tensor | None = None, tag_mask: torch.Tensor | None = None,
              timestep_range: tuple[float, float] | None = None, prompts: PromptTable | None = None,
              empty_prompt: PromptTable | None = None, unrestated: tuple | None = None,
              unrestated_prompts: PromptTable | None = None,
              text_slots: tuple[torch.Tensor, torch.Tensor | None] | None = None,
              regional: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """Run every stage of ``cfg`` (resuming from ``out_dir/checkpoint`` if present). Returns a summary.

    ``prompt_ids/prompt_mask [S, L]``: tokenised prompt of every shot in the store; ``empty_*``
    ``[1, L]`` the empty prompt (text dropout for classifier-free guidance); ``tag_ids/tag_mask [S, L]``
    (entity tags): the names every shot shows, which its keyframes carry when they are memory.
    ``timestep_range``: train only these noise levels (one expert of a Wan2.2 A14B). ``prompts`` /
    ``empty_prompt``: the embeddings of every shot's prompt and of the empty one, precomputed (a frozen
    text encoder: the module then has none). ``unrestated``: ``(ids [S, L], mask [S, L], has [S])``, each
    shot's name-only prompt (:func:`filmweaver.train.curated.unrestated_prompt`) and which shots have
    one, drawn instead of the prompt with probability ``augment.unrestate`` (``unrestated_prompts``:
    their embeddings, with a frozen encoder). ``text_slots``: ``(slots [S, L], unrestated [S, L] or
    None)``, each shot's prompt tokens' character slots (:func:`filmweaver.text.entity_token_slots`)
    for a backbone with text slots. ``regional``: ``(slots [S, L], characters [S])``, each shot's
    description slots and cast size (regional prompts: each description read only from its strip).
    """
    device = accelerator.device
    # sharded (filmweaver.train.sharding): every rank saves and loads checkpoints together (they gather
    # the shards), the main process writes
    sharded = is_sharded(module)
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    opt = make_optimizer(params, cfg)
    planned = sum(s.steps for s in cfg.stages)
    plan = {"total": planned, "bounds": np.cumsum([s.steps for s in cfg.stages]).tolist()}  # mutable: fit_steps_to_time
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: learning_rate_factor(k, plan, cfg.warmup_steps))
    ema = EMA(params, cfg.ema_decay, names=[n for n, _ in named])
    ckpt_dir = out_dir / "checkpoint"
    saves = sharded or accelerator.is_main_process  # who takes part in saving a checkpoint

    def save() -> None:  # the current step's checkpoint (written by the main process)
        _save_checkpoint(ckpt_dir, accelerator.unwrap_model(model), opt, sched, ema, step, plan,
                         write=accelerator.is_main_process)

    step, log = 0, []
    if (ckpt_dir / "state.json").is_file():
        step = _load_checkpoint(ckpt_dir, module, opt, sched, ema, plan)
        log = [json.loads(x) for x in (out_dir / "log.jsonl").read_text().splitlines()] if (out_dir / "log.jsonl").is_file() else []
        # the steps after the checkpoint are trained again: their old log lines go
        log = [r for r in log if r["step"] <= step]
        if accelerator.is_main_process and (out_dir / "log.jsonl").is_file():
            from filmweaver.io import write_text

            write_text(out_dir / "log.jsonl", "".join(json.dumps(r) + "\n" for r in log))
        accelerator.print(f"resumed DiT training at step {step}/{plan['total']}")
    model, opt = (module, opt) if sharded else accelerator.prepare(module, opt)
    schedule = [tuple(x) for x in cfg.temporal_schedule]
    history = sum(n for _, n in schedule)
    aug = cfg.augment
    # several processes (data parallel: each rank draws its own batches, DDP averages the gradients):
    # every rank takes the step's batch mode and memory size from one generator they share, so all
    # ranks use the same parameters in a step (a mode without keyframes leaves the shot-cache
    # projections unused). Every step seeds its own generators from (seed, step, rank), so a run
    # resumed from a checkpoint draws what the uninterrupted run drew: the same weights at the end.
    world = accelerator.num_processes
    bar = progress_bar(total=plan["total"], initial=step, desc="dit", enabled=progress and accelerator.is_main_process)
    t0, running = time.perf_counter(), []
    model.train()
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    empty_ids, empty_mask = empty_ids.to(device), empty_mask.to(device)
    if unrestated is not None:
        unrestated = tuple(x.to(device) for x in unrestated)
    if text_slots is not None:
        text_slots = tuple(None if x is None else x.to(device) for x in text_slots)
    if regional is not None:
        regional = tuple(x.to(device) for x in regional)
    deadline = None if cfg.max_minutes is None else time.perf_counter() + 60 * cfg.max_minutes
    # fit_steps_to_time: measure the step rate over windows of FIT_WINDOW steps (after 100 warm-up
    # steps) and fit the plan to what fits before the deadline; re-measured every window, because
    # later stages (longer contexts) can be slower than the first and a window that compiled a graph
    # is slower than the ones after it. The cosine learning rate follows the fitted plan.
    window = (step + 100, None) if cfg.fit_steps_to_time and deadline else None
    # region-weighted loss: one weight per coverage layer (character, props); decided on the host once
    # (a per-step check of a device tensor would synchronise)
    region_weights = (torch.tensor([cfg.character_loss_weight, cfg.props_loss_weight], device=device)
                      if cfg.character_loss_weight > 0 or cfg.props_loss_weight > 0 else None)
    while step < plan["total"]:
        # the deadline: checked every step by one process; by all ranks together every SYNC_EVERY steps
        # (one small collective, so that every rank stops at the same step)
        if deadline is not None and (world == 1 or step % SYNC_EVERY == 0) and \
                _agree(float(time.perf_counter() > deadline), "max", accelerator) > 0:
            accelerator.print(f"max_minutes={cfg.max_minutes} reached: stopping at step {step}/{plan['total']}")
            if saves:
                save()
            break
        if window is not None and step == window[0]:
            if device.type == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            if window[1] is not None:
                rate = FIT_WINDOW / (now - window[1])
                before = plan["total"]
                fitted = _agree(step + 0.97 * rate * (deadline - now), "min", accelerator)  # the slowest rank's
                fit_schedule(plan, step, int(fitted), planned)
                plan["steps_per_second"] = round(rate, 2)
                if plan["total"] != before:
                    bar.total = plan["total"]
                    accelerator.print(f"fit_steps_to_time: {rate:.2f} it/s -> {plan['total']} steps (planned {planned})")
            window = (step + FIT_WINDOW, now)
        rng = np.random.default_rng([seed, step, accelerator.process_index])
        mode_rng = rng if world == 1 else np.random.default_rng([seed, step])
        torch.manual_seed(seed * 1_000_003 + step * 1009 + accelerator.process_index)
        stage = cfg.stages[int(np.searchsorted(plan["bounds"], step, side="right"))]
        modes, weights = zip(*stage.modes.items(), strict=True)
        mode = str(mode_rng.choice(modes, p=np.array(weights) / sum(weights)))
        k = int(mode_rng.integers(1, cfg.max_memory + 1))
        batch = store.sample(mode, cfg.batch_size, cfg.chunk_frames, history, k, rng, stage.long_takes,
                             aug.negative_sampling, aug.entity_memory, cfg.region_slots)
        b = batch.target.shape[0]
        x0 = batch.target.float()
        s = sample_timesteps(b, cfg.timestep_shift, device, within=timestep_range)
        eps = torch.randn_like(x0)
        x_t = flow_interpolate(x0, eps, s.view(-1, 1, 1, 1, 1))
        ctx = build_context(batch, schedule, _uniform(b, aug.noise_shot_cache, device) if batch.memory is not None else None,
                            _uniform(b, aug.noise_temporal_cache, device) if batch.history is not None else None,
                            memory_compression=cfg.memory_compression, entity_slots=cfg.entity_slots)
        shot_index = to_device(batch.shot_index, device)
        ids, mask = prompt_ids[shot_index], prompt_mask[shot_index]
        drop = torch.rand(b, device=device) < aug.text_dropout
        named = None
        if unrestated is not None:  # a later shot with its characters named, not described
            named = (torch.rand(b, device=device) < aug.unrestate) & unrestated[2][shot_index]
            ids = torch.where(named[:, None], unrestated[0][shot_index], ids)
            mask = torch.where(named[:, None], unrestated[1][shot_index], mask)
        ids = torch.where(drop[:, None], empty_ids, ids)
        mask = torch.where(drop[:, None], empty_mask, mask)
        text = None
        if prompts is not None:
            text = prompts.get(batch.shot_index, device)
            if named is not None and unrestated_prompts is not None:
                text = torch.where(named[:, None, None], unrestated_prompts.get(batch.shot_index, device), text)
            text = torch.where(drop[:, None, None], empty_prompt.get([0], device), text)
        tags = {}
        if text_slots is not None:  # as the prompt drawn: its own, its name-only one, or none (dropped)
            slots = text_slots[0][shot_index]
            if named is not None and text_slots[1] is not None:
                slots = torch.where(named[:, None], text_slots[1][shot_index], slots)
            tags["text_slots"] = torch.where(drop[:, None], -1, slots)
        if regional is not None:  # the drawn prompt's descriptions (a name-only or dropped one has none)
            plain = ~drop if named is None else ~(drop | named)
            slots = torch.where(plain[:, None], regional[0][shot_index], -1)
            tags["text_regions"] = TextRegions(slots, strip_regions(regional[1][shot_index], tuple(x0.shape[3:])))
        if tag_ids is not None and batch.memory_source is not None:
            src = to_device(batch.memory_source, device)
            tags.update(tag_ids=tag_ids[src], tag_mask=tag_mask[src])  # beside the text slots, not instead
        with accelerator.autocast():
            v = model(x_t, s * 1000.0, ids, mask, ctx, text=text, **tags)
        se = (v.float() - (eps - x0)).pow(2)  # [B, C, F, h, w]: the velocity's squared error
        loss = region_weighted_mean(se, batch.coverage, region_weights)
        accelerator.backward(loss)
        if cfg.grad_clip:
            clip_grad_norm(params, cfg.grad_clip) if sharded else accelerator.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        ema.update()
        step += 1
        # no .item() per step: the host runs ahead of the device. The logged loss is the plain velocity
        # MSE whatever the weighting (runs with and without it compare), plus the MSE on each coverage
        # layer's latent pixels alone where the data has them (is the model learning to draw the
        # character, the props?)
        with torch.no_grad():
            se = se.detach()
            running.append(torch.stack([se.mean(), *region_mse(se, batch.coverage, len(COVERAGE_LAYERS))]))
        bar.update(1)
        if step % log_every == 0 or step == plan["total"]:
            mean = torch.stack(running).mean(0).tolist()
            rec = {"step": step, "stage": stage.name, "loss": mean[0], "lr": sched.get_last_lr()[0],
                   "seconds": round(time.perf_counter() - t0, 1)}
            if batch.coverage is not None:
                rec.update({f"{layer}_loss": x for layer, x in zip(COVERAGE_LAYERS, mean[1:], strict=True)})
            running = []
            log.append(rec)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", stage=stage.name)
            if accelerator.is_main_process:
                with open(out_dir / "log.jsonl", "a") as f:
                    f.write(json.dumps(rec) + "\n")
            if accelerator.trackers:
                accelerator.log({f"dit/{k}": v for k, v in rec.items() if isinstance(v, float)}, step=step)
        if saves and (step % checkpoint_every == 0 or step == plan["total"]):
            save()
    bar.close()
    ema.copy_to()  # the shipped weights are the EMA weights
    in_sync = _ranks_agree(params, accelerator) if world > 1 and not sharded else None
    return {"steps": step, "processes": world, "sharded": sharded, "ranks_in_sync": in_sync, "planned_steps": planned, "scheduled_steps": plan["total"],
            "stage_ends": [int(b) for b in plan["bounds"]], "steps_per_second": plan.get("steps_per_second"),
            "final_loss": log[-1]["loss"] if log else None, "seconds": round(time.perf_counter() - t0, 1)}


def learning_rate_factor(k: int, plan: dict, warmup_steps: int) -> float:
    """The learning rate at step ``k`` as a fraction of the configured one: a linear warm-up, then a
    cosine to 10 % at ``plan["total"]``. After a resume from a compact checkpoint (no optimiser
    moments) the rate warms up again from ``plan["rewarm_from"]``: Adam's first steps on empty
    moments are sign steps of the full rate."""
    warm = min(1.0, (k + 1) / max(1, warmup_steps))
    if "rewarm_from" in plan:
        warm = min(warm, (k - plan["rewarm_from"] + 1) / max(1, warmup_steps))
    total = max(1, plan["total"])
    return max(warm, 0.0) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(k, total) / total)))


def _agree(value: float, op: str, accelerator) -> float:
    """``value`` reduced over all ranks (``"min"`` or ``"max"``); the value itself on one process.
    Every rank must call it at the same step (it is a collective)."""
    if accelerator.num_processes == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=accelerator.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.MAX)
    return float(t.item())


def _ranks_agree(params: list[nn.Parameter], accelerator) -> bool:
    """Whether every rank ended with the same weights (data parallel keeps them identical: a check
    that costs one small all-gather at the end of training)."""
    with torch.no_grad():
        fingerprint = torch.stack([p.detach().double().sum() for p in params]).sum()
        seen = accelerator.gather(fingerprint.reshape(1))
    return bool(torch.all(seen == seen[0]))


def region_weighted_mean(se: torch.Tensor, coverage: torch.Tensor | None = None,
                         region_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The flow-matching loss from the squared error ``se [B, C, F, h, w]``. With ``coverage
    [B, F, L, h, w]`` and ``region_weights [L]``, each latent pixel counts
    ``1 + sum_l region_weights[l] * coverage[l]``, normalised by the mean weight, so the loss stays on
    the plain loss's scale and the learning rate means the same. ``region_weights=None``: the plain mean."""
    if coverage is None or region_weights is None:
        return se.mean()
    w = 1.0 + torch.einsum("bflhw,l->bfhw", coverage.to(se.dtype), region_weights.to(se)).unsqueeze(1)  # [B, 1, F, h, w]
    return (se * w).mean() / w.mean()


def region_mse(se: torch.Tensor, coverage: torch.Tensor | None, layers: int) -> list[torch.Tensor]:
    """Squared error ``[B, C, F, h, w]`` averaged over each coverage layer's latent pixels
    (coverage-weighted): ``layers`` scalars, zeros without coverage."""
    if coverage is None:
        return [se.new_zeros(())] * layers
    c = coverage.to(se.dtype).unsqueeze(1)  # [B, 1, F, L, h, w]
    num = (se.unsqueeze(3) * c).sum(dim=(0, 1, 2, 4, 5))
    den = (c.sum(dim=(0, 1, 2, 4, 5)) * se.shape[1]).clamp_min(1e-6)
    return list(num / den)


def fit_schedule(plan: dict, step: int, fitted_total: int, ceiling: int) -> None:
    """Set ``plan`` (``total`` and stage ``bounds``) to ``fitted_total`` steps, the stages still ahead
    scaled in proportion, never below ``step`` (a stage already under way is not skipped) and never above
    ``ceiling`` (the configured steps). It grows back as well as shrinks: one slow window (compiling a
    new batch mode's graph, a neighbour on the host) must not cut the whole run short (a fit that only
    shrinks once cut a run to a third of its steps: reports/synth-small/device_runs.md)."""
    fitted_total = max(step + 1, min(ceiling, fitted_total))
    ratio = fitted_total / plan["total"]
    plan["bounds"] = [b if b <= step else max(step + 1, int(round(b * ratio))) for b in plan["bounds"]]
    plan["bounds"][-1] = fitted_total
    plan["total"] = fitted_total


def _save_checkpoint(d: Path, module, opt, sched, ema: EMA, step: int, plan: dict | None = None,
                     write: bool = True) -> None:
    """The trained parameters, their EMA, the optimiser (keyed by parameter name) and the schedule, whole
    whether training is sharded or not. Sharded: every rank calls it (it gathers), ``write`` on one."""
    from safetensors.torch import save_file

    from filmweaver.io import atomic_path

    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    trainable = {n: full_tensor(p.detach()).float().cpu().contiguous() for n, p in named}
    ema_state = ema.state_dict()
    optimizer = optimizer_state(module, opt, [n for n, _ in named])
    if not write:
        return
    d.mkdir(parents=True, exist_ok=True)
    with atomic_path(d / "trainable.safetensors") as tmp:
        save_file(trainable, tmp)
    with atomic_path(d / "ema.safetensors") as tmp:
        save_file(ema_state, tmp)
    with atomic_path(d / "optimizer.pt") as tmp:
        torch.save({"optimizer": optimizer, "scheduler": sched.state_dict()}, tmp)
    with atomic_path(d / "state.json") as tmp:
        Path(tmp).write_text(json.dumps({"step": step, "plan": plan}))


def _load_checkpoint(d: Path, module, opt, sched, ema: EMA, plan: dict | None = None) -> int:
    """Load a checkpoint into ``module``, ``opt``, ``sched`` and ``ema``; returns its step. A compact
    checkpoint (:func:`compact_checkpoint`: the trained parameters alone) starts the EMA from them
    and the optimiser from empty moments, with the learning rate warmed up again."""
    from safetensors.torch import load_file

    trainable = load_file(str(d / "trainable.safetensors"))
    named = dict(module.named_parameters())
    for n, t in trainable.items():
        assign_full(named[n], t)
    state = json.loads((d / "state.json").read_text())
    step = int(state["step"])
    if plan is not None and state.get("plan"):
        plan.update(state["plan"])  # a fitted schedule stays fitted across a resume
    if (d / "optimizer.pt").is_file():
        ema.load_state_dict(load_file(str(d / "ema.safetensors")))
        saved = torch.load(d / "optimizer.pt", map_location="cpu", weights_only=True)
        load_optimizer_state(module, opt, saved["optimizer"], [n for n, p in named.items() if p.requires_grad])
        sched.load_state_dict(saved["scheduler"])
        return step
    with torch.no_grad():  # compact: the EMA restarts at the weights, the moments at zero
        for s, p in zip(ema.shadow, ema.params, strict=True):
            s.copy_(p.detach().float())
    if plan is not None:
        plan["rewarm_from"] = step
    sched.last_epoch = step
    for group, base, factor in zip(opt.param_groups, sched.base_lrs, sched.lr_lambdas, strict=True):
        group["lr"] = base * factor(step)
    sched._last_lr = [g["lr"] for g in opt.param_groups]
    return step


def compact_checkpoint(src: str | Path, dest: str | Path) -> dict:
    """A DiT checkpoint small enough to travel where the full one cannot (a machine that may be lost,
    a transfer limit): ``trainable.safetensors`` in bfloat16 and ``state.json`` (the step and the
    schedule), about a quarter of the full checkpoint (no EMA, no optimiser moments). The same training
    command resumes from it at the same step, on the same data order and learning-rate schedule; what
    it cannot restore, the EMA and Adam's moments, restart (the rate warms up again over
    ``warmup_steps``). Returns ``{"step", "tensors", "bytes"}``."""
    from safetensors.torch import load_file, save_file

    from filmweaver.io import atomic_path

    src, dest = Path(src), Path(dest)
    if not (src / "state.json").is_file() or not (src / "trainable.safetensors").is_file():
        raise FileNotFoundError(f"{src}: not a DiT checkpoint (no state.json / trainable.safetensors)")
    dest.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(str(src / "trainable.safetensors")).items()}
    with atomic_path(dest / "trainable.safetensors") as tmp:
        save_file(tensors, tmp)
    for stale in ("ema.safetensors", "optimizer.pt"):  # a compact checkpoint never mixes with a full one's files
        (dest / stale).unlink(missing_ok=True)
    state = json.loads((src / "state.json").read_text())
    with atomic_path(dest / "state.json") as tmp:
        Path(tmp).write_text(json.dumps({**state, "compact": True}))
    return {"step": int(state["step"]), "tensors": len(tensors), "bytes": (dest / "trainable.safetensors").stat().st_size}
