"""CPU cost of one denoising step of the synthetic model's transformer, for candidate sizes (planning
the built-in model within the README job's 60 s on 2 cores; reports/synth-small/device_runs.md).

Random weights (timing does not depend on them): a chunk of 4 latent frames at 64x64 (256 tokens),
3 keyframes, a full temporal cache, classifier-free guidance as a batch of 2 plus the memory-guidance
forward (batch 1, no keyframes), with full and with causal context (keys/values reused)::

    python tools/synth_cpu_step_cost.py
"""

import time

import torch
from diffusers import WanTransformer3DModel

from filmweaver.backbone.wan import ContextKVCache, ContextWanTransformer
from filmweaver.context import ContextFrames
from filmweaver.memory.temporal_cache import TemporalCache

SIZES = {"256 x 6 (shipped)": (4, 6, 768), "256 x 8": (4, 8, 768), "320 x 6": (5, 6, 960), "320 x 8": (5, 8, 960),
         "384 x 8": (6, 8, 1152)}  # width x layers: (heads of 64, layers, FFN width)


def build(heads: int, layers: int, ffn: int) -> ContextWanTransformer:
    torch.manual_seed(0)
    return ContextWanTransformer(WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=64, in_channels=16, out_channels=16,
        text_dim=128, freq_dim=256, ffn_dim=ffn, num_layers=layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=64).eval())


@torch.no_grad()
def step_seconds(model: ContextWanTransformer, repeats: int = 6) -> float:
    tc = TemporalCache([(1, 2), (2, 2), (4, 4)])
    tc.push(torch.randn(1, 16, 8, 16, 16))
    ctx = [ContextFrames(torch.randn(1, 16, 3, 16, 16), torch.tensor([-11.0, -10.0, -9.0]), 100.0, 1, "shot")]
    ctx += tc.context(0.0)
    x, text, t = torch.randn(2, 16, 4, 16, 16), torch.randn(2, 40, 128), torch.tensor([500.0, 500.0])
    cache, cache_no_memory = ContextKVCache(), ContextKVCache()

    def step():
        model(x, t, text, ctx, kv_cache=cache)  # CFG: conditional + unconditional
        model(x[:1], t[:1], text[:1], ctx[1:], kv_cache=cache_no_memory)  # memory guidance: no keyframes

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


if __name__ == "__main__":
    torch.set_num_threads(2)
    print("| width x layers | parameters | full context attention | causal context (K/V reused) |")
    print("|---|---|---|---|")
    for name, dims in SIZES.items():
        ms = {}
        for attention in ("full", "causal"):
            model = build(*dims)
            model.context_attention = attention
            ms[attention] = 1000 * step_seconds(model)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"| {name} | {params:.1f}M | {ms['full']:.0f} ms | {ms['causal']:.0f} ms |")
