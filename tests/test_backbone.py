"""The context-injecting forward against diffusers' stock WanTransformer3DModel."""

import pytest
import torch
import torch.nn.functional as F

from filmweaver.backbone.m2v import MASK_FIXED, MASK_SLIDING, m2v_inputs
from filmweaver.backbone.wan import ContextWanTransformer, compressed_patch_embedding, rope_from_positions
from filmweaver.context import ContextFrames


def make_transformer(in_channels=16, seed=0):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    tr = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                               in_channels=in_channels, out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32,
                               num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    return ContextWanTransformer(tr.eval())


@pytest.fixture(scope="module")
def model():
    return make_transformer()


def inputs(b=1, f=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 16, f, 8, 8, generator=g), torch.full((b,), 637.0), torch.randn(b, 12, 32, generator=g))


@torch.no_grad()
def test_no_context_matches_stock_forward(model):
    x, t, e = inputs(b=2)
    stock = model.transformer(x, t, e, return_dict=False)[0]
    ours = model(x, t, e)
    assert torch.equal(stock, ours)


@torch.no_grad()
def test_explicit_positions_reproduce_stock_rope(model):
    x, t, e = inputs(f=4)
    stock = model.transformer(x, t, e, return_dict=False)[0]
    ours = model(x, t, e, frame_positions=torch.arange(4, dtype=torch.float64))
    assert (stock - ours).abs().max() < 1e-6
    # the tables themselves match diffusers' WanRotaryPosEmbed for integer positions
    cos_ref, sin_ref = model.transformer.rope(x)
    grid = torch.stack(torch.meshgrid(torch.arange(4.0), torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1)
    cos, sin = rope_from_positions(grid.reshape(-1, 3).double(), 12)
    assert torch.equal(cos, cos_ref) and torch.equal(sin, sin_ref)
    # shifting every position (context and video) by the same amount leaves the output unchanged: RoPE is relative
    ctx = [ContextFrames(torch.randn(1, 16, 2, 8, 8), torch.tensor([-3.0, -2.0]), 0.0)]
    a = model(x, t, e, ctx)
    shifted = [ContextFrames(ctx[0].latents, ctx[0].positions + 5, 0.0)]
    b = model(x, t, e, shifted, frame_positions=torch.arange(4, dtype=torch.float64) + 5)
    assert (a - b).abs().max() < 1e-4


@torch.no_grad()
def test_memory_gap_changes_output(model):
    x, t, e = inputs()
    mem = torch.randn(1, 16, 2, 8, 8)
    near = model(x, t, e, [ContextFrames(mem, torch.tensor([-2.0, -1.0]), 0.0, kind="shot")])
    far = model(x, t, e, [ContextFrames(mem, torch.tensor([-7.0, -6.0]), 0.0, kind="shot")])
    none = model(x, t, e)
    assert (near - far).abs().max() > 1e-4
    assert (near - none).abs().max() > 1e-4  # context is actually attended to


@torch.no_grad()
def test_per_token_timesteps_equal_to_t_reproduce_scalar(model):
    x, t, e = inputs()
    ctx = torch.randn(1, 16, 2, 8, 8)
    shared = model(x, t, e, [ContextFrames(ctx, torch.tensor([-2.0, -1.0]), None)])  # scalar path
    per_token = model(x, t, e, [ContextFrames(ctx, torch.tensor([-2.0, -1.0]), float(t[0]))])  # per-token path
    assert (shared - per_token).abs().max() < 1e-5
    clean = model(x, t, e, [ContextFrames(ctx, torch.tensor([-2.0, -1.0]), 0.0)])
    assert (clean - shared).abs().max() > 1e-4  # a different context noise level is a different condition


@torch.no_grad()
def test_compressed_projection_is_pool_then_base(model):
    base = model.transformer.patch_embedding
    for c in (2, 4):
        conv = compressed_patch_embedding(base, c)
        z = torch.randn(1, 16, c, 16, 16)
        pooled = F.avg_pool3d(z, kernel_size=c)
        assert (conv(z) - base(pooled)).abs().max() < 1e-5
        assert torch.equal(model.context_proj[str(c)].weight, conv.weight)


@torch.no_grad()
def test_layout_and_token_counts(model):
    x, t, e = inputs(f=3)
    ctx = [ContextFrames(torch.randn(1, 16, 1, 8, 8), torch.tensor([-9.0]), 0.0, 1, "shot"),
           ContextFrames(torch.randn(1, 16, 2, 8, 8), torch.tensor([-4.0, -3.0]), 0.0, 2, "temporal"),
           ContextFrames(torch.randn(1, 16, 4, 8, 8), torch.tensor([-8.0, -7, -6, -5]), 0.0, 4, "temporal")]
    out, layout = model(x, t, e, ctx, return_layout=True)
    assert out.shape == x.shape  # only the generated frames come back
    assert [s[2] - s[1] for s in layout.spans] == [16, 4, 1, 48]
    assert model.count_tokens(ctx, (8, 8)) == layout.num_context == 21


def test_context_batch_is_shared_across_cfg_batch(model):
    x, t, e = inputs(b=2)
    ctx = [ContextFrames(torch.randn(1, 16, 1, 8, 8), torch.tensor([-1.0]), 0.0)]
    with torch.no_grad():
        both = model(x, t, e, ctx)
        one = model(x[:1], t[:1], e[:1], ctx)
    assert (both[:1] - one).abs().max() < 1e-5


def test_m2v_layout():
    noisy = torch.randn(1, 16, 3, 8, 8)
    memory = torch.randn(1, 16, 2, 8, 8)
    first = torch.randn(1, 16, 1, 8, 8)
    x, ctx = m2v_inputs(noisy, memory, [True, False], first_frame=first)
    assert x.shape == (1, 36, 3, 8, 8)
    assert torch.equal(x[:, :16], noisy)
    assert torch.all(x[:, 16:20, 0] == MASK_FIXED) and torch.all(x[:, 16:20, 1:] == 0)
    assert torch.equal(x[:, 20:, :1], first) and torch.all(x[:, 20:, 1:] == 0)
    (mem,) = ctx
    assert mem.latents.shape == (1, 36, 2, 8, 8) and mem.timestep is None
    assert torch.all(mem.latents[:, 16:20, 0] == MASK_FIXED) and torch.all(mem.latents[:, 16:20, 1] == MASK_SLIDING)
    assert torch.equal(mem.latents[:, 20:], memory) and mem.positions.tolist() == [-2.0, -1.0]
    # and it runs through a 36-channel (I2V-type) transformer
    model = make_transformer(in_channels=36)
    with torch.no_grad():
        out = model(x, torch.tensor([500.0]), torch.randn(1, 12, 32), ctx)
    assert out.shape == (1, 16, 3, 8, 8)


class _MaskedJointProcessor:
    """Reference for causal context: the stock self-attention over the whole sequence, with a boolean
    mask that hides the generated tokens from the context tokens."""

    def __init__(self, n_ctx):
        self.n_ctx = n_ctx

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        from diffusers.models.transformers.transformer_wan import WanAttnProcessor

        n = hidden_states.shape[1]
        mask = torch.ones(n, n, dtype=torch.bool)
        mask[: self.n_ctx, self.n_ctx :] = False  # context rows never see generated columns
        return WanAttnProcessor()(attn, hidden_states, None, mask, rotary_emb)


@torch.no_grad()
def test_causal_context_equals_masked_joint_attention_and_ignores_the_generated_frames():
    from filmweaver.backbone.wan import ContextKVAttnProcessor

    full = make_transformer(seed=3)
    causal = make_transformer(seed=3)
    causal.context_attention = "causal"
    assert all(isinstance(b.attn1.processor, ContextKVAttnProcessor) for b in causal.transformer.blocks)
    x, t, e = inputs(f=3)
    ctx = [ContextFrames(torch.randn(1, 16, 2, 8, 8), torch.tensor([-5.0, -4.0]), 100.0, 1, "shot"),
           ContextFrames(torch.randn(1, 16, 2, 8, 8), torch.tensor([-2.0, -1.0]), 0.0, 2, "temporal")]
    n_ctx = full.count_tokens(ctx, (8, 8))
    for blk in full.transformer.blocks:
        blk.attn1.set_processor(_MaskedJointProcessor(n_ctx))
    ref = full(x, t, e, ctx)
    out = causal(x, t, e, ctx)
    assert (out - ref).abs().max() < 1e-5
    # the context matters, and without context the causal model is the stock model
    assert (out - causal(x, t, e)).abs().max() > 1e-4
    assert torch.equal(causal(x, t, e), causal.transformer(x, t, e, return_dict=False)[0])
    causal.context_attention = "full"  # and back: stock processors again
    assert torch.equal(causal(x, t, e, ctx), make_transformer(seed=3)(x, t, e, ctx))


@torch.no_grad()
def test_kv_cache_reuses_context_across_steps_and_prompts():
    from filmweaver.backbone.wan import ContextKVCache

    model = make_transformer(seed=4)
    model.context_attention = "causal"
    ctx = [ContextFrames(torch.randn(1, 16, 2, 8, 8), torch.tensor([-3.0, -2.0]), 100.0, 1, "shot")]
    x, _, e = inputs(b=2, f=3)
    e_neg = torch.zeros_like(e)
    cache = ContextKVCache()
    for step, tv in enumerate([900.0, 500.0, 100.0]):  # a denoising loop: new x and t every step
        xs = x + step
        t = torch.full((2,), tv)
        for text in (e, e_neg):  # two-pass CFG: one entry per prompt tensor
            cached = model(xs, t, text, ctx, kv_cache=cache)
            fresh = model(xs, t, text, ctx)
            assert (cached - fresh).abs().max() < 1e-5
    assert (cache.misses, cache.hits) == (2, 4)
    # a context block at the generated frames' timestep changes every step: never cached
    shared = [ContextFrames(ctx[0].latents, ctx[0].positions, None, 1, "shot")]
    cache2 = ContextKVCache()
    model(x, torch.full((2,), 500.0), e, shared, kv_cache=cache2)
    model(x, torch.full((2,), 400.0), e, shared, kv_cache=cache2)
    assert cache2.hits == 0


def test_causal_context_trains_through_the_context_pass():
    model = make_transformer(seed=5)
    model.context_attention = "causal"
    mem = torch.randn(1, 16, 1, 8, 8, requires_grad=True)
    x, t, e = inputs(f=2)
    out = model(x, t, e, [ContextFrames(mem, torch.tensor([-2.0]), 100.0, 1, "shot")])
    out.square().mean().backward()
    assert mem.grad is not None and mem.grad.abs().sum() > 0  # gradients reach the context through its K/V
    blk0 = model.transformer.blocks[0]
    assert blk0.attn1.to_k.weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_context_parallel_ulysses_matches_one_process(tmp_path):
    """Two CPU ranks (gloo) split one forward's tokens (uneven shards) with diffusers' Ulysses
    attention; each rank's output equals the single-process forward, full and causal context."""
    import json
    import os

    from helpers import torchrun

    out = tmp_path / "cp.json"
    worker = os.path.join(os.path.dirname(__file__), "cp_worker.py")
    r = torchrun(2, worker, str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["full"]["max_diff"] < 1e-5
    assert res["causal"]["max_diff"] < 1e-5 and res["causal"]["cache_hits"] == 1


@torch.no_grad()
def test_spatially_pooled_keyframes_are_pool_then_base_embedding(model):
    x, t, e = inputs(f=3)
    mem = torch.randn(1, 16, 2, 8, 8)
    pooled_block = ContextFrames(mem, torch.tensor([-3.0, -2.0]), 0.0, kind="shot", spatial=2)
    out, layout = model(x, t, e, [pooled_block], return_layout=True)
    # 8x8 latents, patch 2 -> 4x4 base tokens per frame -> 2x2 after pooling: 4 tokens a keyframe
    assert [s[2] - s[1] for s in layout.spans] == [8, 48] and model.count_tokens([pooled_block], (8, 8)) == 8
    tokens, h, w = model._embed(mem, 1, spatial=2)
    ref = model.transformer.patch_embedding(F.avg_pool3d(mem, (1, 2, 2))).flatten(2).transpose(1, 2)
    assert (h, w) == (4, 4) and torch.equal(tokens, ref)
    # each pooled token sits at the centre of the 2x2 base tokens it covers
    from filmweaver.backbone.wan import grid_positions

    pos = grid_positions(torch.tensor([-3.0]), 4, 4, spatial=2)
    assert pos.tolist() == [[-3.0, 0.5, 0.5], [-3.0, 0.5, 2.5], [-3.0, 2.5, 0.5], [-3.0, 2.5, 2.5]]
    assert (out - model(x, t, e, [ContextFrames(mem, torch.tensor([-3.0, -2.0]), 0.0, kind="shot")])).abs().max() > 1e-5
    with pytest.raises(ValueError, match="spatial"):
        ContextFrames(mem, torch.tensor([-3.0, -2.0]), 0.0, compression=2, spatial=2)
