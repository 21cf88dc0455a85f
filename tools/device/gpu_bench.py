"""The GPU measurements behind BENCHMARKS.md's Wan-shape rows (issue 4), in groups, in priority order.

Run on the device machine (no typer/rich needed there)::

    python3 tools/device/gpu_bench.py OUT_DIR [GROUP or CASE ...]        # groups: wan, causal, flash4, tflops
    torchrun --nproc_per_node 2 tools/device/gpu_bench.py OUT_DIR cp      # one story on two GPUs
    python3 tools/device/gpu_bench.py OUT_DIR 13b_cfg2 14b_cfg2          # the CFG-parallel rows' one-GPU baselines

Each case writes ``OUT_DIR/<name>.json`` and ``.md`` as soon as it ends (a lease can end at any time;
under torchrun rank 0 writes); a failing case is logged and the next one runs. Every row's command is
the equivalent ``filmweaver bench`` invocation (:func:`bench_command`), which is what the tables quote.
"""

import json
import sys
import time
import traceback
from pathlib import Path

import torch

from filmweaver.bench import BenchOptions, run


def bench_command(kw: dict) -> str:
    """The command line equivalent to one case (what BENCHMARKS.md quotes for its rows)."""
    if kw.get("kernels"):
        return "python3 tools/device/gpu_bench.py OUT attn_kernels"
    return BenchOptions(**kw).command()


# one 14B forward without context, FlashAttention-4, compiled blocks: the base of the TFLOP/s cases
_14B_FLASH4_COMPILED = dict(shape="14b", memory=(0,), temporal=(False,), attention_backend="flash4",
                            compile_blocks=True, warmup=2, repeats=3)

GROUPS = {  # name -> BenchOptions fields (story=N: a story) or attention_kernels (kernels=True)
    "wan": [  # measured 2026-11-21 (reports/bench-h200/)
        ("13b_native", dict(shape="1.3b", memory=(0, 3, 10), temporal=(False, True))),
        ("13b_cudnn", dict(shape="1.3b", attention_backend="_native_cudnn", memory=(0, 10))),
        ("13b_shared_t", dict(shape="1.3b", context_timestep=None, memory=(0, 10))),
        ("13b_cfg2", dict(shape="1.3b", batch=2, memory=(0, 10), temporal=(False, True))),
        ("13b_story", dict(story=10, shape="1.3b", steps=2)),
        ("13b_compile", dict(shape="1.3b", compile_blocks=True, memory=(0, 10), warmup=3)),
        ("14b_native", dict(shape="14b", memory=(0, 10), warmup=1, repeats=3)),
        # batched CFG at 14B: the one-GPU baseline of 14b_cfg_parallel (2026-11-30, lease G)
        ("14b_cfg2", dict(shape="14b", batch=2, memory=(0, 10), temporal=(False, True), warmup=1, repeats=3)),
    ],
    "causal": [  # causal context with reused keys/values (2026-11-21; the block-offload story is not measured yet)
        ("13b_causal_compile_pool2", dict(shape="1.3b", memory=(0, 10), context_attention="causal",
                                     compile_blocks=True, memory_compression=2, warmup=3)),
        ("13b_story_causal", dict(story=10, shape="1.3b", steps=2, context_attention="causal",
                             compile_blocks=True)),
        ("13b_story_offload", dict(story=4, shape="1.3b", steps=2, offload="model")),
        ("13b_story_block_offload", dict(story=4, shape="1.3b", steps=2, offload="block")),
        ("13b_causal", dict(shape="1.3b", memory=(0, 10), context_attention="causal")),
        ("13b_causal_compile", dict(shape="1.3b", memory=(0, 10), context_attention="causal",
                               compile_blocks=True, warmup=3)),
        ("14b_causal_compile", dict(shape="14b", memory=(0, 10), context_attention="causal",
                               compile_blocks=True, attention_backend="_native_cudnn", warmup=2, repeats=3)),
    ],
    "flash4": [  # FlashAttention-4 from the installed flash-attn-4 package (--attention flash4); 2026-11-30
        ("attn_kernels", dict(kernels=True)),
        ("13b_flash4_compile", dict(shape="1.3b", attention_backend="flash4", compile_blocks=True,
                               memory=(0, 10), warmup=3)),
        ("13b_flash4_causal_compile_pool2", dict(shape="1.3b", memory=(0, 10), context_attention="causal",
                                            attention_backend="flash4", compile_blocks=True,
                                            memory_compression=2, warmup=3)),
        ("13b_story_causal_pool2_flash4", dict(story=10, shape="1.3b", steps=2, context_attention="causal",
                                          memory_compression=2, attention_backend="flash4",
                                          compile_blocks=True)),
        ("13b_story_causal_pool4_flash4", dict(story=10, shape="1.3b", steps=2, context_attention="causal",
                                          memory_compression=4, attention_backend="flash4",
                                          compile_blocks=True)),
        ("14b_flash4_causal_compile", dict(shape="14b", memory=(0, 10), context_attention="causal",
                                      attention_backend="flash4", compile_blocks=True, warmup=2, repeats=3)),
        ("13b_flash4_causal_compile_pool4", dict(shape="1.3b", memory=(0, 10), context_attention="causal",
                                            attention_backend="flash4", compile_blocks=True,
                                            memory_compression=4, warmup=3)),
        ("14b_flash4_compile", dict(shape="14b", memory=(0,), temporal=(False,), attention_backend="flash4",
                               compile_blocks=True, warmup=2, repeats=3)),
        ("13b_flash4", dict(shape="1.3b", attention_backend="flash4", memory=(0, 10))),
    ],
    "tflops": [  # the >= 700 TFLOP/s target (14B, one H200): fused q/k/v products, autotuned GEMMs; 2026-11-30
        # the FFN's bias + GELU as a cuBLASLt epilogue (--fuse-ffn), against the plain row again (third lease)
        ("14b_flash4_compile_fuse_ffn", dict(_14B_FLASH4_COMPILED, fuse_ffn=True, repeats=5)),
        ("14b_flash4_compile_plain", dict(_14B_FLASH4_COMPILED, repeats=5)),
        ("14b_flash4_compile_fused", dict(_14B_FLASH4_COMPILED, fuse_qkv=True)),
        ("14b_flash4_compile_again", dict(_14B_FLASH4_COMPILED)),
        ("14b_flash4_autotune_fused", dict(_14B_FLASH4_COMPILED, compile_mode="max-autotune-no-cudagraphs",
                                           fuse_qkv=True)),
        ("14b_flash4_compile_fused_cfg2", dict(_14B_FLASH4_COMPILED, batch=2, fuse_qkv=True)),
        ("13b_flash4_compile_fused", dict(shape="1.3b", memory=(0,), temporal=(False,), attention_backend="flash4",
                                     compile_blocks=True, fuse_qkv=True, warmup=3)),
    ],
    "cp": [  # under torchrun on two GPUs; compare with the one-GPU rows
        ("13b_ulysses", dict(shape="1.3b", memory=(0, 10), context_parallel="ulysses")),
        ("13b_ring_cudnn", dict(shape="1.3b", memory=(0, 10), context_parallel="ring",
                           attention_backend="_native_cudnn")),
        ("14b_ulysses", dict(shape="14b", memory=(0, 10), context_parallel="ulysses", warmup=1, repeats=3)),
        # ring + cuDNN (the 1.3B configuration that reaches 1.8x) at the 14B shape (lease G: 1.76-1.89x)
        ("14b_ring_cudnn", dict(shape="14b", memory=(0, 10), context_parallel="ring",
                           attention_backend="_native_cudnn", warmup=1, repeats=3)),
        # CFG parallelism: one guided step of one story (batch 2) split into its two branches, one a GPU;
        # compare with the one-GPU batch-2 rows (13b_cfg2, 14b_cfg2); lease G: 1.99-2.02x
        ("13b_cfg_parallel", dict(shape="1.3b", batch=2, memory=(0, 10), temporal=(False, True), cfg_parallel=True)),
        ("14b_cfg_parallel", dict(shape="14b", batch=2, memory=(0, 10), temporal=(False, True), cfg_parallel=True,
                                  warmup=1, repeats=3)),
    ],
}


def attention_kernels(tokens: int = 32760, heads: int = 12, head_dim: int = 128, repeats: int = 20) -> dict:
    """Each attention backend alone at the 1.3B shape's self-attention (one 480x832x81 chunk): its error
    against float32 attention on fresh random inputs, and its TFLOP/s (4 * S^2 * H * D per call)."""
    import torch.nn.functional as F
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    from filmweaver.backbone.attention import LOCAL_BACKENDS, set_attention_backend

    class _Probe(torch.nn.Module):  # a stand-in module so set_attention_backend can point one processor
        def __init__(self):
            super().__init__()
            self.processor = type("P", (), {"_attention_backend": None})()

    rows = []
    g = torch.Generator(device="cuda").manual_seed(0)
    for name in ("native", "_native_cudnn", "_native_flash", "flash4"):
        try:
            m = _Probe()
            if name in LOCAL_BACKENDS:
                set_attention_backend(m, name)
            backend = m.processor._attention_backend or name
            q, k, v = (torch.randn(1, tokens, heads, head_dim, device="cuda", dtype=torch.bfloat16, generator=g)
                       for _ in range(3))
            out = dispatch_attention_fn(q, k, v, backend=backend)
            ref = F.scaled_dot_product_attention(*(t.float().transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
            err = float((out.float() - ref).norm() / ref.norm())
            for _ in range(3):
                dispatch_attention_fn(q, k, v, backend=backend)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            times = []
            for _ in range(repeats):
                start.record()
                dispatch_attention_fn(q, k, v, backend=backend)
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1000)
            sec = sorted(times)[len(times) // 2]
            rows.append({"backend": name, "rel_error": err, "ms": round(sec * 1000, 3),
                         "tflops": round(4 * tokens * tokens * heads * head_dim / sec / 1e12, 1)})
        except Exception as e:  # noqa: BLE001 - a backend missing here is a row that says why
            rows.append({"backend": name, "error": f"{type(e).__name__}: {e}"[:300]})
    return {"tokens": tokens, "heads": heads, "head_dim": head_dim, "rows": rows,
            "device": torch.cuda.get_device_name(), "torch": torch.__version__}


def _kernels_markdown(res: dict, command: str) -> str:
    lines = [f"{res['device']}, self-attention {res['tokens']} tokens x {res['heads']} heads x {res['head_dim']}, bf16",
             "", "| backend | error vs fp32 | ms | TFLOP/s |", "|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['backend']} | {r.get('rel_error', '-'):.2e} | {r['ms']} | {r['tflops']} |" if "ms" in r
                     else f"| {r['backend']} | {r['error']} | - | - |")
    return "\n".join(lines) + f"\n\nCommand: `{command}`\n"


def _writes() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def main(out: str, only: list[str]) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = set(only)
    cases = [c for group, cs in GROUPS.items() for c in cs
             if (not names and group != "cp") or group in names or c[0] in names]
    for name, kw in cases:
        t = time.perf_counter()
        command = bench_command(kw)
        try:
            if kw.get("kernels"):
                res = attention_kernels()
                md = _kernels_markdown(res, command)
            else:
                res, md = run(BenchOptions(**kw))
            res["command"], res["wall_s"] = command, round(time.perf_counter() - t, 1)
            if _writes():
                (out_dir / f"{name}.json").write_text(json.dumps(res, indent=1))
                (out_dir / f"{name}.md").write_text(md)
                print(md, flush=True)
        except Exception:  # noqa: BLE001 - log, go on with the next measurement
            (out_dir / f"{name}.error.txt").write_text(traceback.format_exc())
            print(f"{name} FAILED:\n{traceback.format_exc()}", flush=True)
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        print(f"== {name}: {time.perf_counter() - t:.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
