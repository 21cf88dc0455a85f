"""Attention backend selection: the local FlashAttention-4 route (a stand-in kernel on the CPU)."""

import sys
import types

import diffusers.models.attention_dispatch  # noqa: F401 - imported before the stand-in module exists
import pytest
import torch
import torch.nn.functional as F
from test_backbone import inputs, make_transformer

from filmweaver.backbone import attention
from filmweaver.backbone.wan import ContextKVCache
from filmweaver.context import ContextFrames


def install_fake_flash4(monkeypatch):
    """A ``flash_attn.cute`` module whose ``flash_attn_func`` is exact attention that counts its calls
    (the real kernel needs a Hopper GPU); ``flash4_available`` says yes. Installed after diffusers and
    the model are loaded (their import-time package checks would trip over a module without a spec)."""
    calls = []

    def flash_attn_func(q, k, v, softmax_scale=None, causal=False):  # [B, S, H, D], like the real one
        calls.append((tuple(q.shape), tuple(k.shape), softmax_scale))
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             scale=softmax_scale).transpose(1, 2)
        return out, None  # the real kernel returns (out, lse)

    cute = types.ModuleType("flash_attn.cute")
    cute.flash_attn_func = flash_attn_func
    pkg = types.ModuleType("flash_attn")
    pkg.cute = cute
    monkeypatch.setitem(sys.modules, "flash_attn", pkg)
    monkeypatch.setitem(sys.modules, "flash_attn.cute", cute)
    monkeypatch.setattr(attention, "flash4_available", lambda: None)
    return calls


@torch.no_grad()
def test_flash4_routes_every_attention_layer_and_matches_native(monkeypatch):
    model = make_transformer(seed=7)
    model.context_attention = "causal"
    ctx = [ContextFrames(torch.randn(1, 16, 2, 8, 8), torch.tensor([-3.0, -2.0]), 100.0, 1, "shot")]
    x, t, e = inputs(b=1, f=3)
    ref = model(x, t, e, ctx, kv_cache=ContextKVCache())
    fake_flash4 = install_fake_flash4(monkeypatch)
    attention.set_attention_backend(model.transformer, "flash4")
    out = model(x, t, e, ctx, kv_cache=ContextKVCache())
    # 2 blocks x (self-attention of the context pass + of the generated pass + cross-attention of each)
    assert len(fake_flash4) == 8
    gen_tokens, ctx_tokens = 3 * 16, 2 * 16
    assert {c[0][1] for c in fake_flash4} == {gen_tokens, ctx_tokens}
    assert any(c[1][1] == gen_tokens + ctx_tokens for c in fake_flash4)  # generated queries see the cached keys
    assert all(c[2] == pytest.approx(12 ** -0.5) for c in fake_flash4)  # the scale is passed, never None
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_flash4_is_refused_with_the_reason_when_it_cannot_run(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import fails as if not installed
    model = make_transformer(seed=8)
    with pytest.raises(RuntimeError, match="pip install flash-attn-4"):
        attention.set_attention_backend(model.transformer, "flash4")
    with pytest.raises(ValueError, match="must be one of"):
        attention.set_attention_backend(model.transformer, "no_such_backend")


def test_flash4_custom_op_traces_with_its_fake_shape(monkeypatch):
    install_fake_flash4(monkeypatch)
    q = torch.randn(1, 5, 2, 8)
    k = v = torch.randn(1, 7, 2, 8)
    out = torch.compile(lambda a, b, c: attention._flash4_kernel(a, b, c) * 2, fullgraph=True, backend="eager")(q, k, v)
    ref = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(out, 2 * ref)


@torch.no_grad()
@pytest.mark.parametrize("context_attention", ["full", "causal"])
def test_fused_qkv_gives_the_same_forward_with_context(context_attention):
    model = make_transformer(seed=9)
    model.context_attention = context_attention
    ctx = [ContextFrames(torch.randn(1, 16, 2, 8, 8), torch.tensor([-3.0, -2.0]), 100.0, 1, "shot")]
    x, t, e = inputs(b=2, f=3)
    ref = model(x, t, e, ctx, kv_cache=ContextKVCache())
    model.fuse_qkv()
    attn1, attn2 = model.transformer.blocks[0].attn1, model.transformer.blocks[0].attn2
    inner = attn2.to_q.out_features  # cross-attention keeps its query projection
    assert attn1.fused_projections and attn1.to_qkv.out_features == 3 * inner
    assert attn2.fused_projections and attn2.to_kv.out_features == 2 * inner
    # the fused product is what runs, and the separate projections are gone (their weights freed);
    # cross-attention keeps its own query projection
    from filmweaver.backbone.wan import FusedAway

    for blk in model.transformer.blocks:
        assert all(isinstance(m, FusedAway) for m in (blk.attn1.to_q, blk.attn1.to_k, blk.attn1.to_v,
                                                       blk.attn2.to_k, blk.attn2.to_v))
        assert isinstance(blk.attn2.to_q, torch.nn.Linear)
    assert not any(".to_k." in n or ".attn1.to_q." in n for n, _ in model.named_parameters())
    torch.testing.assert_close(model(x, t, e, ctx, kv_cache=ContextKVCache()), ref, atol=1e-5, rtol=1e-4)
    model.fuse_qkv()  # idempotent
    torch.testing.assert_close(model(x, t, e, ctx, kv_cache=ContextKVCache()), ref, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_fused_qkv_merges_a_lora_adapter_first():
    from peft import LoraConfig

    model = make_transformer(seed=10)
    model.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                             target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    x, t, e = inputs(b=1, f=2)
    with_lora = model(x, t, e)
    model.transformer.disable_adapters()
    without = model(x, t, e)
    model.transformer.enable_adapters()
    assert (with_lora - without).abs().max() > 1e-3  # the adapter matters
    model.fuse_qkv()
    torch.testing.assert_close(model(x, t, e), with_lora, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_fused_ffn_gelu_keeps_the_forward_the_weights_and_a_lora():
    from peft import LoraConfig

    from filmweaver.backbone.wan import BiasGELUProjection

    model = make_transformer(seed=11)
    model.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["ffn.net.0.proj"]))
    keys = set(model.state_dict())
    x, t, e = inputs(b=2, f=2)
    ref = model(x, t, e)
    model.fuse_ffn_gelu()
    acts = [blk.ffn.net[0] for blk in model.transformer.blocks]
    assert all(isinstance(a, BiasGELUProjection) for a in acts)
    # the adapter was merged into the projection the fused call reads; the weights keep their names
    assert {k for k in model.state_dict() if "lora" not in k} == {k.replace("base_layer.", "") for k in keys if "lora" not in k}
    torch.testing.assert_close(model(x, t, e), ref, atol=1e-5, rtol=1e-4)
    # the single call itself (on the CPU the op applies the exact GELU; cuBLASLt's epilogue on CUDA the
    # tanh one Wan uses): bias, transposition and the [B, N, in] -> [B, N, out] reshape are right
    h = torch.randn(2, 5, acts[0].proj.in_features)
    torch.testing.assert_close(acts[0].fused(h), F.gelu(F.linear(h, acts[0].proj.weight, acts[0].proj.bias)),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fuse", ["fuse_qkv", "fuse_ffn_gelu"])
def test_a_model_fused_for_inference_is_not_saved(tmp_path, fuse):
    """Fused weights (joint q/k/v, merged adapters) are a layout ``from_pretrained`` does not read:
    saving one is refused with the reason, before anything is written."""
    from filmweaver.models import FilmModels

    tiny_models = FilmModels.tiny(seed=0)  # its own: fusing changes the model (the fixture is shared)
    tiny_models.save_pretrained(tmp_path / "before")  # an unfused model saves
    assert (tmp_path / "before" / "transformer" / "config.json").is_file()
    assert not tiny_models.backbone.fused_for_inference
    getattr(tiny_models.backbone, fuse)()
    assert tiny_models.backbone.fused_for_inference
    with pytest.raises(ValueError, match="fused for inference"):
        tiny_models.save_pretrained(tmp_path / "after")
    assert not (tmp_path / "after").exists()
