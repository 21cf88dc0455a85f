"""``filmweaver bench``: time the context-injected Wan forward at real sizes with random weights.

Timing does not depend on the weights' values, so the transformer is built from the release config
(:data:`SHAPES`, from :data:`filmweaver.models.TRANSFORMER_SHAPES`) on the device and filled with random numbers; nothing is downloaded. One case is one
forward of ``ContextWanTransformer`` on a chunk of ``frames`` video frames at ``height x width``
(Wan's VAE: 4x in time, 8x in space, patch 1x2x2) with ``memory`` shot-cache keyframes (one latent
frame each) and, optionally, the temporal cache (default schedule). Reported per case: seconds per
forward (CUDA events, median of ``repeats`` after ``warmup``), tokens, the ratio to the no-context
case, and achieved TFLOP/s from the analytic count (:func:`forward_flops`).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field, fields

import torch

from filmweaver.backbone.causal_kv import ContextKVCache
from filmweaver.backbone.vae import LatentCodec, latent_frame_count
from filmweaver.backbone.wan import ContextWanTransformer
from filmweaver.context import ContextFrames
from filmweaver.engine import StoryEngine
from filmweaver.engine.records import ShotRecord
from filmweaver.memory.shot_cache import memory_positions
from filmweaver.memory.temporal_cache import TemporalCache
from filmweaver.methods import method_config
from filmweaver.models import TRANSFORMER_SHAPES, WAN_PRESETS, FilmModels, transformer_shape
from filmweaver.runtime import DTYPES, RuntimeOptions, prepare_experts
from filmweaver.script import parse_story
from filmweaver.text import BYTE_VOCAB_SIZE, WanPromptEncoder, byte_level_tokenizer

# Shapes a bench can build: the release transformers and the tiny preset's (one table, in models), by
# shape or by preset name
SHAPES: dict[str, dict] = {name: transformer_shape(name) for name in [*TRANSFORMER_SHAPES, *WAN_PRESETS]}
TEXT_TOKENS = 512  # UMT5 sequence length Wan uses


def _flag(flag: str, help: str, text=None, parse=None, switch: bool = False) -> dict:
    """Field metadata: the ``filmweaver bench`` option, its help, and for values that are not plain
    text on the command line, how to write (``text``) and read (``parse``) them."""
    return {"flag": flag, "help": help, "text": text or str, "parse": parse, "switch": switch}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(m) for m in text.split(","))


def _yes_no(text: str) -> tuple[bool, ...]:
    return tuple(v.strip() == "yes" for v in text.split(","))


@dataclass(frozen=True)
class BenchOptions:
    """Every ``filmweaver bench`` option with its default, written once: the CLI builds its options from
    these fields, :func:`run` takes them, and :meth:`command` writes the command line a table quotes
    (the options that differ from their defaults, in field order). ``story`` > 0 times a whole story
    (:func:`run_story_bench`) instead of single forwards (:func:`run_bench`)."""

    shape: str = field(default="1.3b", metadata=_flag("--shape", "transformer shape: 1.3b | 14b | 5b | tiny, or a "
                                                      "preset's (wan2.1-t2v-1.3b...); random weights"))
    story: int = field(default=0, metadata=_flag("--story", "instead: generate an N-shot story end to end and time "
                                                 "every shot"))
    steps: int = field(default=4, metadata=_flag("--steps", "--story: denoising steps per chunk"))
    memory: tuple[int, ...] = field(default=(0, 3, 10), metadata=_flag(
        "--memory", "shot-cache keyframe counts to time", lambda v: ",".join(map(str, v)), _ints))
    temporal: tuple[bool, ...] = field(default=(False, True), metadata=_flag(
        "--temporal", "with the temporal cache: no | yes | no,yes",
        lambda v: ",".join("yes" if t else "no" for t in v), _yes_no))
    batch: int = field(default=1, metadata=_flag("--batch", "batch per forward (2 = conditional + unconditional, "
                                                 "batched CFG)"))
    context_timestep: float | None = field(default=0.0, metadata=_flag(
        "--context-timestep", "noise level of context frames; 'shared' = the generated frames' timestep",
        lambda v: "shared" if v is None else f"{v:g}", lambda t: None if t == "shared" else float(t)))
    context_attention: str = field(default="full", metadata=_flag(
        "--context-attention", "full | causal (context attends only to context; its keys/values are computed "
        "once per chunk and reused at every step)"))
    memory_compression: int = field(default=1, metadata=_flag(
        "--memory-compression", "keyframes pooled into 2x2 or 4x4 patches (shot_cache.compression)"))
    attention_backend: str | None = field(default=None, metadata=_flag(
        "--attention", "attention backend: a diffusers one (flash, _native_cudnn, native, sage...) or flash4 "
        "(the installed flash-attn-4 package; Hopper/Blackwell)"))
    compile_blocks: bool = field(default=False, metadata=_flag(
        "--compile", "torch.compile the repeated transformer blocks", switch=True))
    compile_mode: str | None = field(default=None, metadata=_flag(
        "--compile-mode", "--compile: torch.compile mode (e.g. max-autotune-no-cudagraphs)"))
    fuse_qkv: bool = field(default=False, metadata=_flag("--fuse-qkv", "one q/k/v matrix product per attention "
                                                         "layer", switch=True))
    fuse_ffn: bool = field(default=False, metadata=_flag("--fuse-ffn", "CUDA: each FFN's up-projection and GELU in "
                                                         "one cuBLASLt call", switch=True))
    context_parallel: str | None = field(default=None, metadata=_flag(
        "--context-parallel", "ulysses | ring: split every forward over the GPUs of `torchrun --nproc_per_node N` "
        "(rank 0 reports)"))
    cfg_parallel: bool = field(default=False, metadata=_flag(
        "--cfg-parallel", "two ranks under torchrun, half the batch each plus the all-gather (a guided step of one "
        "story: --batch 2; compare with --batch 2 on one GPU)", switch=True))
    offload: str = field(default="none", metadata=_flag("--offload", "--story: none | model | block (as generate "
                                                        "--offload)"))
    warmup: int = field(default=2, metadata=_flag("--warmup", "unmeasured forwards before timing"))
    repeats: int = field(default=5, metadata=_flag("--repeats", "timed forwards (the median is reported)"))
    height: int = field(default=480, metadata=_flag("--height", "frame height"))
    width: int = field(default=832, metadata=_flag("--width", "frame width"))
    frames: int = field(default=81, metadata=_flag("--frames", "video frames per chunk"))
    method: str = field(default="filmweaver", metadata=_flag("--method", "--story: the method (memory settings) "
                                                             "to time"))
    story_warmup: bool | None = field(default=None, metadata=_flag(
        "--story-warmup", "--story: generate the story once unmeasured first (default: with --compile)"))
    train: bool = field(default=False, metadata=_flag(
        "--train", "instead: time a memory-LoRA training step (forward, backward with gradient checkpointing, "
        "optimizer step) and its peak memory", switch=True))
    fsdp: bool = field(default=False, metadata=_flag(
        "--fsdp", "--train under torchrun: the transformer sharded over the ranks (dit.fsdp); rank 0 reports its "
        "own GPU's peak memory", switch=True))
    lora_rank: int = field(default=128, metadata=_flag("--lora-rank", "--train: the LoRA's rank (StoryMem's: 128)"))
    optimizer: str = field(default="adamw", metadata=_flag("--optimizer", "--train: adamw | adamw8bit (bitsandbytes)"))
    device: str = field(default="cuda", metadata=_flag("--device", "torch device"))
    dtype: str = field(default="bfloat16", metadata=_flag("--dtype", "bfloat16 | float16 | float32"))

    def command(self) -> str:
        """The ``filmweaver bench`` command line of these options (under ``torchrun`` when parallel)."""
        parallel = self.context_parallel or self.cfg_parallel or self.fsdp
        ranks = os.environ.get("WORLD_SIZE", "2") if self.fsdp else "2"
        out = [f"torchrun --nproc_per_node {ranks} -m filmweaver.cli bench" if parallel else "filmweaver bench"]
        for f in fields(self):
            value = getattr(self, f.name)
            if value == f.default and f.name != "shape":  # the shape is always named
                continue
            meta = f.metadata
            if meta["switch"]:
                out.append(meta["flag"])
            elif isinstance(value, bool):  # a tri-state switch (story_warmup)
                out.append(meta["flag"] if value else "--no-" + meta["flag"][2:])
            else:
                out.append(f"{meta['flag']} {meta['text'](value)}")
        return " ".join(out)

    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, DTYPES[self.dtype])


@dataclass
class BenchCase:
    shape: str
    height: int
    width: int
    frames: int
    memory: int  # shot-cache keyframes
    temporal: bool  # temporal cache (default schedule) in context
    batch: int = 1  # 2 = batched classifier-free guidance
    tokens: int = 0
    context_tokens: int = 0
    seconds: float = 0.0
    tflops: float = 0.0
    vs_no_context: float | None = None
    context_attention: str = "full"
    # causal context: a chunk's first forward (context pass + generated pass); ``seconds`` is then
    # every later step's, with the context keys/values reused
    first_forward_seconds: float | None = None


def build_transformer(shape: str, device, dtype):
    """A random-weight ``ContextWanTransformer`` of a release shape, built directly on ``device``."""
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        tr = WanTransformer3DModel(**SHAPES[shape])
    tr = tr.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for p in tr.parameters():
            p.normal_(0.0, 0.02, generator=gen)
        for b in tr.buffers():
            if b.is_floating_point():
                b.normal_(0.0, 0.02, generator=gen)
    bb = ContextWanTransformer(tr.to(dtype).eval())
    return bb.to(device=device, dtype=dtype)


def forward_flops(cfg: dict, n_tokens: int, n_gen: int, batch: int, text_tokens: int = TEXT_TOKENS,
                  n_query: int | None = None) -> float:
    """Matmul FLOPs of one forward (2 per multiply-add): per block, self-attention projections and
    scores, cross-attention to the text, the FFN; plus the output head on the generated tokens. Norms,
    RoPE and modulation are left out (small). ``n_query``: tokens that run through the blocks (all
    ``n_tokens`` by default; only the generated ones when cached context keys/values are reused,
    which still attend over all ``n_tokens`` keys)."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    n, lt, f = n_tokens, text_tokens, cfg["ffn_dim"]
    q = n if n_query is None else n_query
    per_block = (8 * q * d * d + 4 * q * n * d  # self-attention: q,k,v,o and QK^T, PV
                 + 4 * q * d * d + 4 * lt * d * d + 4 * q * lt * d  # cross-attention
                 + 4 * q * d * f)  # FFN
    head = 2 * n_gen * d * cfg["out_channels"] * 4
    return batch * (cfg["num_layers"] * per_block + head)


def median_seconds(fn, device, warmup: int, repeats: int) -> float:
    """``fn()``'s median time over ``repeats`` calls after ``warmup`` unmeasured ones (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


@torch.no_grad()
def latent_grid(shape: str, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """The latents of a chunk for a shape's VAE: (channels, frames, h, w). Wan's VAE: 4x in time
    (causal), 8x in space; Wan2.2 TI2V-5B's (48 channels): 16x in space."""
    c = SHAPES[shape]["in_channels"]
    down = 16 if c == 48 else 8
    return c, latent_frame_count(frames), height // down, width // down


def run_bench(options: BenchOptions, progress: bool = False) -> dict:
    """Time every (memory, temporal) case; returns ``{"cases": [...], "env": {...}}``.

    ``context_timestep``: the noise level context frames are shown at. A number (the engine's default,
    0 = clean) gives context tokens their own timestep (Wan2.2-style per-token modulation); ``None``
    shows them at the generated frames' timestep (the stock scalar path, as StoryMem's M2V does).

    ``context_attention="causal"``: context tokens attend only to context (a model trained for it);
    with a numeric ``context_timestep`` their keys/values are computed on a chunk's first forward and
    reused, so ``seconds`` is a later step's forward and ``first_forward_seconds`` the first one's.

    ``context_parallel`` (``"ulysses"`` / ``"ring"``, under ``torchrun``): every forward's tokens are
    split over the ranks; each rank times the same forward (rank 0 reports). ``memory_compression``:
    each keyframe spatially pooled into 2x2 / 4x4 base patches (``shot_cache.compression``).
    ``fuse_qkv``: one q/k/v matrix product per block (:meth:`ContextWanTransformer.fuse_qkv`);
    ``fuse_ffn``: the FFN's up-projection and GELU in one cuBLASLt call (:meth:`~ContextWanTransformer.fuse_ffn_gelu`);
    ``compile_mode``: torch.compile's mode for the compiled blocks.

    ``cfg_parallel`` (two ranks under ``torchrun``; ``batch`` even, 2 = one guided step of one story):
    each rank runs half the batch (one branch of classifier-free guidance) and the outputs are
    all-gathered, as :meth:`~filmweaver.sampler.FlowMatchSampler.enable_cfg_parallel` samples; compare
    with ``batch`` 2 on one GPU (batched CFG)."""
    o = options
    shape, height, width, frames, memory, temporal, batch = (o.shape, o.height, o.width, o.frames, o.memory,
                                                              o.temporal, o.batch)
    device, dtype, context_timestep, context_attention = o.device, o.torch_dtype(), o.context_timestep, o.context_attention
    context_parallel, cfg_parallel, warmup, repeats = o.context_parallel, o.cfg_parallel, o.warmup, o.repeats
    dev = torch.device(device)
    world = 1
    if cfg_parallel and batch % 2:
        raise ValueError(f"CFG parallelism splits the batch in two branches: batch {batch} is odd")
    if context_parallel or cfg_parallel:
        import torch.distributed as dist

        from filmweaver.parallel import gather_cfg_branches, init_distributed

        device, _ = init_distributed(device, context_parallel, cfg_parallel)
        dev, world = torch.device(device), dist.get_world_size()
    bb = build_transformer(shape, dev, dtype)
    bb.context_attention = context_attention
    # the commands' own set-up of the transformer, in its one order
    prepare_experts([bb], RuntimeOptions(device=device, attention=o.attention_backend, compile_blocks=o.compile_blocks,
                                         compile_mode=o.compile_mode, fuse_qkv=o.fuse_qkv, fuse_ffn=o.fuse_ffn,
                                         context_parallel=context_parallel))
    cfg = SHAPES[shape]
    c, lf, lh, lw = latent_grid(shape, frames, height, width)
    g = torch.Generator(device=dev).manual_seed(0)
    local = batch // 2 if cfg_parallel else batch  # this rank's share: one guidance branch under CFG parallelism
    x = torch.randn(local, c, lf, lh, lw, generator=g, device=dev, dtype=dtype)
    text = torch.randn(local, TEXT_TOKENS, cfg["text_dim"], generator=g, device=dev, dtype=dtype)
    t = torch.full((local,), 500.0, device=dev)

    def step(ctx, cache):
        out = bb(x, t, text, context=ctx, kv_cache=cache)
        if cfg_parallel:  # the other branch's velocities, as the sampler gathers them every step
            gather_cfg_branches(out)
        return out
    cases = []
    base_seconds = None
    for tc in temporal:
        for m in memory:
            ctx = random_context(o, m, tc, (c, lh, lw), g, dev, dtype)
            n_ctx = bb.count_tokens(ctx, (lh, lw))
            n_gen = lf * (lh // 2) * (lw // 2)
            reuse = context_attention == "causal" and n_ctx > 0 and context_timestep is not None
            cache = ContextKVCache()  # filled by the first (warm-up) call when reused
            seconds = median_seconds(lambda ctx=ctx, cache=cache: step(ctx, cache), dev, warmup, repeats)
            flops = forward_flops(cfg, n_gen + n_ctx, n_gen, batch, n_query=n_gen if reuse else None)
            case = BenchCase(shape, height, width, frames, m, tc, batch, n_gen + n_ctx, n_ctx, round(seconds, 4),
                             float(f"{flops / seconds / 1e12:.4g}"), context_attention=context_attention)
            if reuse:
                first = median_seconds(lambda ctx=ctx: step(ctx, ContextKVCache()), dev, 0, repeats)
                case.first_forward_seconds = round(first, 4)
            if not m and not tc:
                base_seconds = seconds
            if base_seconds:
                case.vs_no_context = round(seconds / base_seconds, 3)
            cases.append(case)
            if progress:
                print(json.dumps(asdict(case)), flush=True)
    return {"cases": [asdict(c) for c in cases], "env": _bench_env(o, dev, dtype, world)}


def random_context(o: BenchOptions, memory: int, temporal: bool, latent_shape: tuple[int, int, int], g, dev,
                    dtype) -> list[ContextFrames]:
    """Random context of one case: ``memory`` shot-cache keyframes (one latent frame each) and, with
    ``temporal``, a full temporal cache (default schedule); ``latent_shape`` = (channels, h, w)."""
    c, lh, lw = latent_shape
    ctx = []
    cache = TemporalCache() if temporal else TemporalCache([])
    if temporal:
        cache.push(torch.randn(1, c, cache.capacity, lh, lw, generator=g, device=dev, dtype=dtype))
    if memory:
        mem = torch.randn(1, c, memory, lh, lw, generator=g, device=dev, dtype=dtype)
        ctx.append(ContextFrames(mem, memory_positions(memory, cache.capacity), o.context_timestep, 1, kind="shot",
                                 spatial=o.memory_compression))
    return ctx + cache.context(o.context_timestep)


def _bench_env(o: BenchOptions, dev: torch.device, dtype: torch.dtype, world: int) -> dict:
    """What a row's numbers depend on besides the case: device, versions, the transformer's set-up."""
    return {**machine_env(dev, dtype, o.attention_backend),
           "compile_repeated_blocks": o.compile_blocks, "compile_mode": o.compile_mode if o.compile_blocks else None,
           "fused_qkv": o.fuse_qkv, "fused_ffn_gelu": o.fuse_ffn, "context_timestep": o.context_timestep,
           "context_attention": o.context_attention, "context_parallel": o.context_parallel, "world_size": world,
           "cfg_parallel": o.cfg_parallel, "memory_compression": o.memory_compression, "warmup": o.warmup,
           "repeats": o.repeats}


def machine_env(dev: torch.device, dtype: torch.dtype, attention_backend: str | None) -> dict:
    """The device, the versions and the attention backend a timing ran with (every bench's rows quote them)."""
    env = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "torch": torch.__version__,
           "dtype": str(dtype).removeprefix("torch."), "attention_backend": attention_backend or "default"}
    try:
        import diffusers

        env["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    return env


def markdown_rows(result: dict, command: str) -> str:
    env = result["env"]
    world = env.get("world_size", 1)
    # under context parallelism the FLOPs are one forward's, done by all GPUs together
    flops_col = "TFLOP/s" if world == 1 else f"TFLOP/s, {world} GPUs together (per GPU)"
    lines = ["| shape | res x frames | memory | temporal | context attention | tokens | s / forward | vs none "
             f"| first forward of a chunk | {flops_col} |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in result["cases"]:
        first = c.get("first_forward_seconds")
        flops = c["tflops"] if world == 1 else f"{c['tflops']} ({c['tflops'] / world:.1f})"
        lines.append(f"| {c['shape']} | {c['height']}x{c['width']}x{c['frames']} | {c['memory']} | "
                     f"{'yes' if c['temporal'] else 'no'} | {c.get('context_attention', 'full')} | {c['tokens']:,} | "
                     f"{c['seconds']:.3f} | {c['vs_no_context'] if c['vs_no_context'] is not None else '-'} | "
                     f"{'-' if first is None else f'{first:.3f}'} | {flops} |")
    lines += ["", f"{env['device']}, torch {env['torch']}, diffusers {env.get('diffusers')}, {env['dtype']}, "
              f"attention {env['attention_backend']}, compiled blocks: {env['compile_repeated_blocks']}"
              f"{' (' + env['compile_mode'] + ')' if env.get('compile_mode') else ''}, "
              f"fused q/k/v: {env.get('fused_qkv', False)}, fused FFN GELU: {env.get('fused_ffn_gelu', False)}, "
              f"{'CFG' if env.get('cfg_parallel') else 'context'} parallel: "
              f"{'yes' if env.get('cfg_parallel') else env.get('context_parallel') or 'no'} x {env.get('world_size', 1)}, batch "
              f"{result['cases'][0]['batch']}, median of {env['repeats']}. Command: `{command}`"]
    return "\n".join(lines) + "\n"


def random_film_models(shape: str, device, dtype, frames: int, height: int, width: int, steps: int):
    """A :class:`~filmweaver.models.FilmModels` for timing whole shots: the release-shape transformer
    (random), Wan2.1's VAE config (random), a one-layer random UMT5 of the release text width (the
    prompt embedding is computed once per prompt, so its size does not matter) and a tiny random CLIP."""
    from diffusers import AutoencoderKLWan
    from transformers import UMT5Config, UMT5EncoderModel


    cfg = SHAPES[shape]
    if cfg["in_channels"] != 16:
        raise ValueError(f"story timing needs a 16-channel (Wan2.1 VAE) shape, not {shape}")
    tiny = FilmModels.tiny(device=str(device))
    torch.manual_seed(0)
    vae = AutoencoderKLWan() if shape != "tiny" else tiny.codec.vae
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=BYTE_VOCAB_SIZE, d_model=cfg["text_dim"], d_kv=64,
                                               d_ff=256, num_layers=1, num_heads=4, pad_token_id=0, eos_token_id=1,
                                               decoder_start_token_id=0))
    return FilmModels(
        backbone=build_transformer(shape, device, dtype),
        codec=LatentCodec(vae.to(device).eval()),
        prompt_encoder=WanPromptEncoder(byte_level_tokenizer(model_max_length=TEXT_TOKENS),
                                        text_encoder.to(device=device, dtype=dtype).eval(), max_sequence_length=TEXT_TOKENS),
        embedder=tiny.embedder, scheduler_config=None, model_id=f"random-wan-{shape}", trained=False,
        defaults=dict(height=height, width=width, fps=16, chunk_frames=latent_frame_count(frames),
                      num_inference_steps=steps, guidance_scale=5.0),
    )


def _fitted_last_over_second(rows: list[dict], key: str) -> float | None:
    """The growth of ``key`` along the story: a straight line fitted to shots 2..N (shot 1 has no
    memory), its value at shot N over its value at shot 2. A fit over every shot, not two single
    shots, where a shot takes a fraction of a second and a virtual machine's speed drifts by more
    than the growth being measured. None below three shots."""
    import numpy as np

    if len(rows) < 3:
        return None
    x = np.array([r["shot"] for r in rows[1:]], dtype=float)
    slope, intercept = np.polyfit(x, np.array([r[key] for r in rows[1:]], dtype=float), 1)
    first = intercept + slope * x[0]
    return round(float((intercept + slope * x[-1]) / first), 3) if first > 0 else None


BENCH_PLACES = ("a lighthouse on a cliff", "a night market", "a snowy forest", "a desert road", "a library")


def bench_script(shots: int) -> dict:
    """A story of ``shots`` cuts, one chunk each (no durations): a shot's time depends on its memory
    alone. The prompts vary (each is encoded once) and their words do not matter to random weights."""
    prompts = [f"Shot {k + 1}: a traveller in a red coat walks through {BENCH_PLACES[k % len(BENCH_PLACES)]}, "
               f"the camera follows at a distance" for k in range(shots)]
    return {"story_name": f"bench-{shots}-shots", "story_overview": "timing only",
            "scenes": [{"scene_num": 1, "video_prompts": prompts, "cut": [True] * shots}]}


def run_story_bench(options: BenchOptions, out_dir: str | None = None) -> dict:
    """Generate an ``options.story``-shot story with random real-size weights and the engine as users run it;
    report each shot's denoising seconds, context tokens and memory size, shot N / shot 2, and the peak
    GPU memory. ``context_attention`` / ``memory_compression`` / ``compile_blocks``: as in :func:`run_bench`.

    ``warmup`` (default: with ``compile_blocks``) generates the story once first, unmeasured: every
    context length the story meets (0, 1, 2, 3... keyframes) is a new shape to compile, and timing that
    would measure the compiler, not the shot. ``offload="model"`` keeps the modules in CPU memory and
    moves each to the GPU when it runs (``--offload model``); ``"block"`` streams the transformer blocks too."""
    import tempfile


    o = options
    shape, height, width, frames, shots, steps, method = o.shape, o.height, o.width, o.frames, o.story, o.steps, o.method
    device, dtype, offload, context_attention, memory_compression = (o.device, o.torch_dtype(), o.offload,
                                                                     o.context_attention, o.memory_compression)
    compile_blocks, attention_backend, warmup = o.compile_blocks, o.attention_backend, o.story_warmup
    dev = torch.device(device)
    models = random_film_models(shape, torch.device("cpu") if offload != "none" else dev, dtype, frames, height,
                                width, steps)
    script = bench_script(shots)
    project = out_dir or tempfile.mkdtemp(prefix="filmweaver-bench-")
    models.backbone.context_attention = context_attention
    runtime = RuntimeOptions(device=device, offload=offload, attention=attention_backend, compile_blocks=compile_blocks)
    prepare_experts(models.experts(), runtime.check(),
                    offload=(lambda: models.enable_model_offload(device, stream_blocks=offload == "block"))
                    if offload != "none" else None)
    # random weights rate all frames alike: without dedupe the bank grows as it does with real weights
    cfg = method_config(method, {"keyframes": {"dedupe_threshold": 1.01},
                                 "shot_cache": {"compression": memory_compression}})
    warmup = compile_blocks if warmup is None else warmup
    if warmup:
        StoryEngine(models, tempfile.mkdtemp(prefix="filmweaver-bench-warmup-"), story=parse_story(script), config=cfg,
                    progress=False).generate()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    engine = StoryEngine(models, project, story=parse_story(script), config=cfg, progress=False)
    engine.generate()
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    rows, previous = [], None
    for rec in map(ShotRecord.from_manifest, engine.project.shots):
        t = rec.timings
        # wall_s: from the previous shot's end to this one's (everything, the manifest writes included)
        wall = t.total_s if previous is None else rec.finished_at - previous
        previous = rec.finished_at
        rows.append({"shot": rec.number, "denoise_s": t.denoise_s, "total_s": t.total_s, "wall_s": round(wall, 3),
                     "memory_s": t.memory_s, "decode_s": t.decode_s, "keyframes_s": t.keyframes_s,
                     "write_s": t.write_s, "cpu_s": t.cpu_s, "context_tokens": rec.chunks[0].context_tokens,
                     "memory": len(rec.shot_cache)})
    ratio = rows[-1]["denoise_s"] / rows[1]["denoise_s"] if len(rows) > 1 and rows[1]["denoise_s"] else None
    return {"shape": shape, "height": height, "width": width, "frames": frames, "steps": steps, "method": method,
            "context_attention": context_attention, "memory_compression": memory_compression,
            "compile_blocks": compile_blocks, "warmed_up": bool(warmup), "attention_backend": attention_backend or "default",
            "offload": offload, "peak_gpu_gib": None if peak is None else round(peak, 2),
            "shots": rows, "last_over_second": None if ratio is None else round(ratio, 3),
            "wall_last_over_second": _fitted_last_over_second(rows, "wall_s"),
            "total_last_over_second": _fitted_last_over_second(rows, "total_s"),
            "cpu_last_over_second": _fitted_last_over_second(rows, "cpu_s"),
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "torch": torch.__version__}


def run(options: BenchOptions, progress: bool = False, out_dir: str | None = None) -> tuple[dict, str]:
    """One bench as the CLI runs it: the result (with its ``command``) and its markdown rows."""
    command = options.command()
    if options.train:
        raise ValueError("--train benches the trainer: filmweaver.train.bench.run_train_bench")
    if options.fsdp:
        raise ValueError("--fsdp shards a training step: with --train")
    if options.story:
        result = run_story_bench(options, out_dir)
        result["command"] = command
        return result, story_markdown(result, command)
    result = run_bench(options, progress)
    result["command"] = command
    return result, markdown_rows(result, command)


def story_markdown(result: dict, command: str) -> str:
    rows = "\n".join(f"| {r['shot']} | {r['memory']} | {r['context_tokens']} | {r['denoise_s']} |"
                     for r in result["shots"])
    return (f"{result['device']}: shot {len(result['shots'])} / shot 2 = {result['last_over_second']}; peak GPU "
            f"memory {result.get('peak_gpu_gib')} GiB; warmed up: {result.get('warmed_up')}; offload: "
            f"{result.get('offload')}\n\n| shot | memory | context tokens | denoise s |\n|---|---|---|---|\n{rows}\n\n"
            f"Command: `{command}`\n")
