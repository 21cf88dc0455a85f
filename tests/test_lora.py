"""StoryMem-layout LoRA (original Wan module names) onto diffusers' Wan transformer."""

import pytest
import torch
from diffusers import WanTransformer3DModel

from filmweaver.backbone.lora import WAN_TO_DIFFUSERS, LoraConversionError, attach_wan_lora, load_state_dict

STORYMEM_TARGETS = ["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                    "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2"]


def tiny_wan(layers=2):
    torch.manual_seed(0)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                 out_channels=4, text_dim=12, freq_dim=16, ffn_dim=24, num_layers=layers,
                                 cross_attn_norm=True, qk_norm="rms_norm_across_heads").eval()


def storymem_state_dict(model, rank=4, layers=2):
    """Exactly StoryMem's layout: blocks.N.<wan module>.lora_A/B.weight, every target of every block."""
    sd, named = {}, dict(model.named_modules())
    g = torch.Generator().manual_seed(1)
    for n in range(layers):
        for wan in STORYMEM_TARGETS:
            layer = named[f"blocks.{n}.{WAN_TO_DIFFUSERS[wan]}"]
            sd[f"blocks.{n}.{wan}.lora_A.weight"] = torch.randn(rank, layer.in_features, generator=g) * 0.1
            sd[f"blocks.{n}.{wan}.lora_B.weight"] = torch.randn(layer.out_features, rank, generator=g) * 0.1
    return sd


def test_every_storymem_tensor_lands_on_its_module(tmp_path):
    model = tiny_wan()
    sd = storymem_state_dict(model)
    torch.save(sd, tmp_path / "backbone_high_noise.pth")
    loaded = load_state_dict(tmp_path / "backbone_high_noise.pth")
    info = attach_wan_lora(model, loaded, alpha=8.0)
    assert info["modules"] == 2 * len(STORYMEM_TARGETS) and info["rank"] == 4
    assert info["scale"] == pytest.approx(8.0 / 2.0)  # rsLoRA: alpha / sqrt(r)
    # each adapter weight equals its source tensor, and the layer computes W x + scale * B A x
    named = dict(model.named_modules())
    for n in range(2):
        for wan in STORYMEM_TARGETS:
            layer = named[f"blocks.{n}.{WAN_TO_DIFFUSERS[wan]}"]
            a, b = sd[f"blocks.{n}.{wan}.lora_A.weight"], sd[f"blocks.{n}.{wan}.lora_B.weight"]
            assert torch.equal(layer.lora_A["memory"].weight, a) and torch.equal(layer.lora_B["memory"].weight, b)
            x = torch.randn(3, layer.in_features)
            expected = layer.base_layer(x) + info["scale"] * (x @ a.T @ b.T)
            assert torch.allclose(layer(x), expected, atol=1e-5)
    lora_params = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
    assert lora_params == sum(t.numel() for t in sd.values())  # nothing dropped, nothing extra


def test_unknown_or_misfit_keys_are_refused(tmp_path):
    model = tiny_wan()
    sd = storymem_state_dict(model)
    bad = dict(sd, **{"blocks.0.norm3.lora_A.weight": torch.zeros(4, 8)})
    with pytest.raises(LoraConversionError, match="norm3"):
        attach_wan_lora(tiny_wan(), bad)
    wrong = dict(sd)
    wrong["blocks.1.ffn.0.lora_A.weight"] = torch.zeros(4, 5)
    with pytest.raises(LoraConversionError, match="blocks.1.ffn.net.0.proj"):
        attach_wan_lora(tiny_wan(), wrong)
    half = {k: v for k, v in sd.items() if k != "blocks.0.self_attn.q.lora_B.weight"}
    with pytest.raises(LoraConversionError, match="both lora_A and lora_B"):
        attach_wan_lora(tiny_wan(), half)
    deeper = storymem_state_dict(tiny_wan(3), layers=3)
    with pytest.raises(LoraConversionError, match="not modules of this transformer"):
        attach_wan_lora(tiny_wan(2), deeper)
    torch.save({"weights": sd, "hook": print}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match="(?i)weights_only|unpickl"):
        load_state_dict(tmp_path / "evil.pth")


def test_prefixed_and_kohya_style_keys_convert():
    model = tiny_wan(1)
    sd = storymem_state_dict(model, layers=1)
    renamed = {}
    for k, v in sd.items():
        k = "diffusion_model." + k.replace("lora_A", "lora_down").replace("lora_B", "lora_up")
        renamed[k] = v
    renamed["diffusion_model.blocks.0.self_attn.q.alpha"] = torch.tensor(2.0)
    for wan in STORYMEM_TARGETS[1:]:
        renamed[f"diffusion_model.blocks.0.{wan}.alpha"] = torch.tensor(2.0)
    info = attach_wan_lora(model, renamed)
    assert info["alpha"] == 2.0 and info["modules"] == len(STORYMEM_TARGETS)


def test_storymem_lora_streams_with_block_offload():
    """StoryMem's LoRA on a model whose blocks stream from CPU memory (`--offload block`, the way a
    small GPU runs the A14B experts): peft's adapter layers are hooked like the base layers, the
    forward is unchanged, and the blocks (base and adapter weights) are meta tensors between calls."""
    from filmweaver.models import FilmModels

    models = FilmModels.tiny(seed=0)
    tr = models.backbone.transformer
    attach_wan_lora(tr, storymem_state_dict(tr, layers=len(tr.blocks)), alpha=8.0)
    x = torch.randn(1, models.backbone.config.in_channels, 3, 16, 16)
    t, text = torch.tensor([500.0]), models.prompt_encoder.encode(["a lighthouse at dusk"])
    with torch.no_grad():
        reference = models.backbone(x, t, text)
    models.enable_model_offload("cpu", stream_blocks=True)
    assert all(p.device.type == "meta" for p in tr.blocks.parameters())
    assert any("lora_" in n for n, _ in tr.blocks.named_parameters())
    with torch.no_grad():
        streamed = models.backbone(x, t, text)
    assert torch.equal(streamed, reference)
    assert all(p.device.type == "meta" for p in tr.blocks.parameters())


def _perturbed_adapter(model, rank=4, use_rslora=True, alpha=None):
    """A trainable adapter as `filmweaver train` adds it, its lora_B moved off zero (a trained one)."""
    from filmweaver.backbone.lora import add_memory_lora

    n = add_memory_lora(model, rank, alpha=alpha, use_rslora=use_rslora)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return n


def _forward(model):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 2, 4, 4, generator=g)
    text = torch.randn(1, 5, 12, generator=g)
    with torch.no_grad():
        return model(x, torch.tensor([500.0]), text, return_dict=False)[0]


@pytest.mark.parametrize("use_rslora,alpha", [(True, None), (False, 8)])
def test_a_trained_lora_file_loads_at_the_scale_it_was_trained_with(tmp_path, use_rslora, alpha):
    """The file `filmweaver train` writes records its adapter settings; loading it (generate --lora) must
    give the trained transformer, whatever the scale convention (a file without them: StoryMem's)."""
    from filmweaver.backbone.lora import lora_file_settings

    trained = tiny_wan()
    assert _perturbed_adapter(trained, use_rslora=use_rslora, alpha=alpha) > 0
    assert all(p.dtype == torch.float32 for n, p in trained.named_parameters() if "lora_" in n)
    trained.save_lora_adapter(str(tmp_path))
    path = tmp_path / "pytorch_lora_weights.safetensors"
    assert lora_file_settings(path) == {"alpha": float(alpha or 4), "use_rslora": use_rslora}
    base = tiny_wan()
    delta = _forward(trained) - _forward(base)
    assert delta.abs().max() > 1e-2  # the adapter changes the output: a wrong scale would show
    attach_wan_lora(base, load_state_dict(path), **lora_file_settings(path))
    torch.testing.assert_close(_forward(base), _forward(trained), rtol=1e-5, atol=1e-5)


def test_export_in_storymem_layout_loads_in_storymem_convention(tmp_path):
    """`filmweaver export-lora`: original Wan keys under peft's prefix, a torch file of tensors
    (weights_only), lora_B rescaled so StoryMem's loader (r = alpha, rsLoRA) applies the trained update."""
    from filmweaver.backbone.lora import STORYMEM_TARGETS as TARGETS
    from filmweaver.backbone.lora import export_storymem_lora

    trained = tiny_wan()
    _perturbed_adapter(trained, use_rslora=False, alpha=2)  # scale 0.5, StoryMem's would be 2
    trained.save_lora_adapter(str(tmp_path / "lora"))
    out = tmp_path / "backbone_high_noise.pth"
    summary = export_storymem_lora(tmp_path / "lora" / "pytorch_lora_weights.safetensors", out)
    assert summary["rank"] == 4 and summary["modules"] == 2 * len(TARGETS) and summary["scale"] == 0.5
    state = torch.load(out, weights_only=True)
    assert f"base_model.model.blocks.1.{TARGETS[0]}.lora_A.weight" in state and len(state) == 4 * len(TARGETS)
    base = tiny_wan()
    attach_wan_lora(base, state)  # the StoryMem convention: no settings given
    torch.testing.assert_close(_forward(base), _forward(trained), rtol=1e-5, atol=1e-5)


def test_export_refuses_targets_storymem_has_no_adapter_on(tmp_path):
    from filmweaver.backbone.lora import add_memory_lora, export_storymem_lora

    model = tiny_wan()
    add_memory_lora(model, 4, target_modules=["to_q", "proj_out"])
    model.save_lora_adapter(str(tmp_path))
    with pytest.raises(LoraConversionError):
        export_storymem_lora(tmp_path / "pytorch_lora_weights.safetensors", tmp_path / "x.pth")


def test_gradient_checkpointing_gives_the_same_lora_gradients_with_memory_in_context():
    """dit.gradient_checkpointing recomputes each block in the backward pass: same loss, same gradients
    on the adapter (memory keyframes in context), with full and with causal context."""
    from filmweaver.backbone.lora import add_memory_lora
    from filmweaver.backbone.wan import ContextWanTransformer
    from filmweaver.context import ContextFrames
    from filmweaver.memory.shot_cache import memory_positions

    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 4, 2, 4, 4, generator=g)
    text = torch.randn(1, 5, 12, generator=g)
    memory = ContextFrames(torch.randn(1, 4, 2, 4, 4, generator=g), memory_positions(2, 0), 0.0, 1, kind="shot")
    for mode in ("full", "causal"):
        grads = []
        for checkpointing in (False, True):
            tr = tiny_wan()
            add_memory_lora(tr, 4)
            with torch.no_grad():
                for n, p in tr.named_parameters():
                    if "lora_B" in n:
                        p.fill_(0.05)
            if checkpointing:
                tr.enable_gradient_checkpointing()
            bb = ContextWanTransformer(tr, context_attention=mode).train()
            loss = bb(x, torch.tensor([500.0]), text, context=[memory]).pow(2).mean()
            loss.backward()
            grads.append((loss.detach(), {n: p.grad.clone() for n, p in tr.named_parameters() if p.requires_grad}))
        (l0, g0), (l1, g1) = grads
        torch.testing.assert_close(l0, l1)
        assert g0.keys() == g1.keys() and len(g0) > 0
        for n in g0:
            torch.testing.assert_close(g0[n], g1[n], rtol=1e-4, atol=1e-6)


def test_prompt_table_gives_exactly_the_frozen_encoders_embeddings():
    """A frozen text encoder's prompts are embedded once and kept trimmed on the host: the rows the
    trainer gets back are the encoder's own output, zeros after the real tokens included."""
    from filmweaver.models import FilmModels
    from filmweaver.text import embed_token_ids
    from filmweaver.train.dit import PromptTable

    enc = FilmModels.tiny().prompt_encoder
    ids, mask = enc.tokenize(["a red fox", "", "two travellers cross a long bridge at dawn"])
    table = PromptTable(enc.text_encoder, ids, mask, "cpu", batch=2)
    assert [len(r) for r in table.rows] == mask.sum(1).tolist()
    with torch.no_grad():
        full = embed_token_ids(enc.text_encoder, ids, mask)
    assert torch.equal(table.get([2, 0], "cpu"), full[[2, 0]])
