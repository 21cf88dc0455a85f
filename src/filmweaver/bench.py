"""``filmweaver bench``: time the context-injected Wan forward at real sizes with random weights.

Timing does not depend on the weights' values, so the transformer is built from the release config
(:data:`SHAPES`) on the device and filled with random numbers; nothing is downloaded. One case is one
forward of ``ContextWanTransformer`` on a chunk of ``frames`` video frames at ``height x width``
(Wan's VAE: 4x in time, 8x in space, patch 1x2x2) with ``memory`` shot-cache keyframes (one latent
frame each) and, optionally, the temporal cache (default schedule). Reported per case: seconds per
forward (CUDA events, median of ``repeats`` after ``warmup``), tokens, the ratio to the no-context
case, and achieved TFLOP/s from the analytic count (:func:`forward_flops`).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from filmweaver.runtime import RuntimeOptions, prepare_experts

# WanTransformer3DModel configs of the releases (diffusers' transformer/config.json)
SHAPES: dict[str, dict] = {
    "1.3b": dict(num_attention_heads=12, attention_head_dim=128, num_layers=30, ffn_dim=8960, text_dim=4096,
                 in_channels=16, out_channels=16, freq_dim=256),
    "14b": dict(num_attention_heads=40, attention_head_dim=128, num_layers=40, ffn_dim=13824, text_dim=4096,
                in_channels=16, out_channels=16, freq_dim=256),
    "5b": dict(num_attention_heads=24, attention_head_dim=128, num_layers=30, ffn_dim=14336, text_dim=4096,
               in_channels=48, out_channels=48, freq_dim=256),
    "tiny": dict(num_attention_heads=2, attention_head_dim=16, num_layers=2, ffn_dim=64, text_dim=32,
                 in_channels=16, out_channels=16, freq_dim=32),
}
TEXT_TOKENS = 512  # UMT5 sequence length Wan uses


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

    from filmweaver.backbone.wan import ContextWanTransformer

    cfg = dict(SHAPES[shape])
    with torch.device("meta"):
        tr = WanTransformer3DModel(patch_size=(1, 2, 2), cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                   eps=1e-6, **cfg)
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


def _time(fn, device, warmup: int, repeats: int) -> float:
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
def run_bench(shape: str = "1.3b", height: int = 480, width: int = 832, frames: int = 81,
              memory: tuple[int, ...] = (0, 3, 10), temporal: tuple[bool, ...] = (False, True), batch: int = 1,
              device: str = "cuda", dtype: torch.dtype = torch.bfloat16, attention_backend: str | None = None,
              compile_blocks: bool = False, context_timestep: float | None = 0.0, warmup: int = 2, repeats: int = 5,
              progress: bool = True, context_attention: str = "full", context_parallel: str | None = None,
              memory_compression: int = 1, fuse_qkv: bool = False, compile_mode: str | None = None,
              fuse_ffn: bool = False, cfg_parallel: bool = False) -> dict:
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
    from filmweaver.context import ContextFrames
    from filmweaver.memory.shot_cache import memory_positions
    from filmweaver.memory.temporal_cache import TemporalCache

    dev = torch.device(device)
    from filmweaver.backbone.wan import ContextKVCache

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
    prepare_experts([bb], RuntimeOptions(device=device, attention=attention_backend, compile_blocks=compile_blocks,
                                         compile_mode=compile_mode, fuse_qkv=fuse_qkv, fuse_ffn=fuse_ffn,
                                         context_parallel=context_parallel))
    cfg = SHAPES[shape]
    c = cfg["in_channels"]
    lf, lh, lw = 1 + (frames - 1) // 4, height // 8, width // 8  # Wan VAE: 4x time (causal), 8x space
    if cfg["in_channels"] == 48:  # Wan2.2 TI2V-5B VAE: 16x space
        lh, lw = height // 16, width // 16
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
            ctx = []
            cache = TemporalCache() if tc else TemporalCache([])
            if tc:
                cache.push(torch.randn(1, c, cache.capacity, lh, lw, generator=g, device=dev, dtype=dtype))
            if m:
                mem = torch.randn(1, c, m, lh, lw, generator=g, device=dev, dtype=dtype)
                ctx.append(ContextFrames(mem, memory_positions(m, cache.capacity), context_timestep, 1, kind="shot",
                                         spatial=memory_compression))
            ctx += cache.context(context_timestep)
            n_ctx = bb.count_tokens(ctx, (lh, lw))
            n_gen = lf * (lh // 2) * (lw // 2)
            reuse = context_attention == "causal" and n_ctx > 0 and context_timestep is not None
            cache = ContextKVCache()  # filled by the first (warm-up) call when reused
            seconds = _time(lambda ctx=ctx, cache=cache: step(ctx, cache), dev, warmup, repeats)
            flops = forward_flops(cfg, n_gen + n_ctx, n_gen, batch, n_query=n_gen if reuse else None)
            case = BenchCase(shape, height, width, frames, m, tc, batch, n_gen + n_ctx, n_ctx, round(seconds, 4),
                             float(f"{flops / seconds / 1e12:.4g}"), context_attention=context_attention)
            if reuse:
                first = _time(lambda ctx=ctx: step(ctx, ContextKVCache()), dev, 0, repeats)
                case.first_forward_seconds = round(first, 4)
            if not m and not tc:
                base_seconds = seconds
            if base_seconds:
                case.vs_no_context = round(seconds / base_seconds, 3)
            cases.append(case)
            if progress:
                print(json.dumps(asdict(case)), flush=True)
    env = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "torch": torch.__version__,
           "dtype": str(dtype).removeprefix("torch."), "attention_backend": attention_backend or "default",
           "compile_repeated_blocks": compile_blocks, "compile_mode": compile_mode if compile_blocks else None,
           "fused_qkv": fuse_qkv, "fused_ffn_gelu": fuse_ffn, "context_timestep": context_timestep,
           "context_attention": context_attention, "context_parallel": context_parallel, "world_size": world,
           "cfg_parallel": cfg_parallel,
           "memory_compression": memory_compression,
           "warmup": warmup,
           "repeats": repeats}
    try:
        import diffusers

        env["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    return {"cases": [asdict(c) for c in cases], "env": env}


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

    from filmweaver.backbone.vae import LatentCodec
    from filmweaver.models import FilmModels
    from filmweaver.text import BYTE_VOCAB_SIZE, WanPromptEncoder, byte_level_tokenizer

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
        defaults=dict(height=height, width=width, fps=16, chunk_frames=1 + (frames - 1) // 4,
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


def run_story_bench(shape: str = "1.3b", height: int = 480, width: int = 832, frames: int = 81, shots: int = 10,
                    steps: int = 4, method: str = "filmweaver", device: str = "cuda",
                    dtype: torch.dtype = torch.bfloat16, out_dir: str | None = None, context_attention: str = "full",
                    memory_compression: int = 1, compile_blocks: bool = False, warmup: bool | None = None,
                    offload: str = "none", attention_backend: str | None = None) -> dict:
    """Generate a ``shots``-shot story with random real-size weights and the engine as users run it;
    report each shot's denoising seconds, context tokens and memory size, shot N / shot 2, and the peak
    GPU memory. ``context_attention`` / ``memory_compression`` / ``compile_blocks``: as in :func:`run_bench`.

    ``warmup`` (default: with ``compile_blocks``) generates the story once first, unmeasured: every
    context length the story meets (0, 1, 2, 3... keyframes) is a new shape to compile, and timing that
    would measure the compiler, not the shot. ``offload="model"`` keeps the modules in CPU memory and
    moves each to the GPU when it runs (``--offload model``); ``"block"`` streams the transformer blocks too."""
    import tempfile

    from filmweaver.engine import StoryEngine
    from filmweaver.methods import method_config
    from filmweaver.script import parse_story

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
    for rec in engine.project.shots:
        t = rec["timings"]
        # wall_s: from the previous shot's end to this one's (everything, the manifest writes included)
        wall = t["total_s"] if previous is None else rec["finished_at"] - previous
        previous = rec["finished_at"]
        rows.append({"shot": rec["number"], "denoise_s": t["denoise_s"], "total_s": t["total_s"],
                     "wall_s": round(wall, 3), **{k: t[k] for k in ("memory_s", "decode_s", "keyframes_s", "write_s", "cpu_s")},
                     "context_tokens": rec["chunks"][0]["context_tokens"], "memory": len(rec["shot_cache"])})
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
