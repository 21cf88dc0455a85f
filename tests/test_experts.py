"""Real-model presets: Wan2.2 A14B's two experts (switch at the boundary, per-expert guidance and LoRA),
loading errors that name the missing piece."""

import json

import pytest
import torch
from test_lora import STORYMEM_TARGETS, WAN_TO_DIFFUSERS

from filmweaver.backbone.experts import ExpertSwitch
from filmweaver.backbone.wan import ContextWanTransformer
from filmweaver.models import FilmModels, ModelLoadError, load_models
from filmweaver.sampler import FlowMatchSampler, SamplerConfig


@pytest.fixture(scope="module")
def a14b_dir(tmp_path_factory):
    """A tiny two-expert model saved in diffusers' Wan2.2 A14B layout."""
    models = FilmModels.tiny(seed=0)
    second = FilmModels.tiny(seed=1).backbone
    models.backbone = ExpertSwitch(models.backbone, second, boundary_ratio=0.875)
    d = tmp_path_factory.mktemp("a14b")
    models.save_pretrained(d)
    return d


def test_two_experts_round_trip_and_switch_at_the_boundary(a14b_dir):
    index = json.loads((a14b_dir / "model_index.json").read_text())
    assert index["boundary_ratio"] == 0.875 and index["transformer_2"][1] == "WanTransformer3DModel"
    models = FilmModels.from_pretrained(str(a14b_dir))
    bb = models.backbone
    assert isinstance(bb, ExpertSwitch) and bb.boundary == pytest.approx(875.0)
    assert bb.expert_for(torch.tensor([900.0])) is bb.high_noise and bb.expert_for(874.9) is bb.low_noise
    x = torch.randn(1, 16, 2, 8, 8)
    text = torch.randn(1, 5, 32)
    for t, expert in ((950.0, bb.high_noise), (300.0, bb.low_noise)):
        tt = torch.tensor([t])
        assert torch.equal(bb(x, tt, text), expert(x, tt, text))
    assert not torch.allclose(bb.high_noise(x, torch.tensor([300.0]), text), bb.low_noise(x, torch.tensor([300.0]), text))


def test_low_noise_guidance_applies_below_the_boundary():
    s = FlowMatchSampler(SamplerConfig(guidance_scale=4.0, guidance_scale_2=3.0), boundary=875.0)
    assert s.guidance_at(999.0) == 4.0 and s.guidance_at(875.0) == 4.0 and s.guidance_at(500.0) == 3.0
    assert FlowMatchSampler(SamplerConfig(guidance_scale=4.0, guidance_scale_2=3.0)).guidance_at(10.0) == 4.0


def test_engine_generates_with_two_experts(a14b_dir, tmp_path):
    from helpers import small_story

    from filmweaver.engine import EngineConfig, StoryEngine
    from filmweaver.script import parse_story

    models = FilmModels.from_pretrained(str(a14b_dir))
    calls = {"high": 0, "low": 0}
    for name, expert in (("high", models.backbone.high_noise), ("low", models.backbone.low_noise)):
        expert.register_forward_hook(lambda *a, n=name: calls.__setitem__(n, calls[n] + 1))
    cfg = EngineConfig(sampler=SamplerConfig(num_inference_steps=4, guidance_scale=2.0, guidance_scale_2=1.0))
    StoryEngine(models, tmp_path / "p", story=parse_story(small_story(1, 2)), config=cfg, progress=False).generate()
    assert calls["high"] > 0 and calls["low"] > 0


def test_storymem_loras_land_on_both_experts(a14b_dir, tmp_path):
    models = FilmModels.from_pretrained(str(a14b_dir))
    files = {}
    for name, expert in (("backbone_high_noise.pth", models.backbone.high_noise),
                         ("backbone_low_noise.pth", models.backbone.low_noise)):
        named = dict(expert.transformer.named_modules())
        sd = {}
        for n in range(2):
            for wan in STORYMEM_TARGETS:
                layer = named[f"blocks.{n}.{WAN_TO_DIFFUSERS[wan]}"]
                sd[f"blocks.{n}.{wan}.lora_A.weight"] = torch.randn(8, layer.in_features)
                sd[f"blocks.{n}.{wan}.lora_B.weight"] = torch.randn(layer.out_features, 8)
        torch.save(sd, tmp_path / name)
        files[name] = sd
    loaded = FilmModels.from_pretrained(str(a14b_dir), lora=str(tmp_path / "backbone_high_noise.pth"),
                                        lora_2=str(tmp_path / "backbone_low_noise.pth"))
    for expert, name in ((loaded.backbone.high_noise, "backbone_high_noise.pth"),
                         (loaded.backbone.low_noise, "backbone_low_noise.pth")):
        q = dict(expert.transformer.named_modules())["blocks.1.attn2.to_q"]
        assert torch.equal(q.lora_A["memory"].weight, files[name]["blocks.1.cross_attn.q.lora_A.weight"])
    with pytest.raises(ModelLoadError, match="transformer_2"):
        FilmModels.from_pretrained(str(_single_expert_dir(tmp_path)), lora_2=str(tmp_path / "backbone_low_noise.pth"))


def _single_expert_dir(tmp_path):
    d = tmp_path / "single"
    FilmModels.tiny().save_pretrained(d)
    return d


def test_incomplete_directories_and_unsupported_presets_are_named(a14b_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(a14b_dir, broken)
    for f in (broken / "transformer_2").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ModelLoadError, match=r"transformer_2/\*\.safetensors"):
        FilmModels.from_pretrained(str(broken))
    with pytest.raises(ModelLoadError, match="wan2.2-t2v-a14b"):
        load_models(preset="wan3")
    # a preset applies its release settings to a local copy of its layout
    m = load_models(preset="wan2.2-t2v-a14b", model=str(a14b_dir))
    assert m.defaults["sampler.guidance_scale_2"] == 3.0 and m.defaults["num_inference_steps"] == 40
    assert isinstance(m.backbone.low_noise, ContextWanTransformer)


def test_storymem_first_shot_runs_on_the_t2v_model(tmp_path):
    """StoryMem: shot 1 (nothing in memory) by a T2V model, later shots by the M2V (36-channel) model."""
    from diffusers import WanTransformer3DModel
    from helpers import small_story

    from filmweaver.engine import StoryEngine
    from filmweaver.methods import method_config
    from filmweaver.script import parse_story

    t2v_dir = tmp_path / "t2v"
    FilmModels.tiny(seed=3).save_pretrained(t2v_dir)
    models = FilmModels.tiny(seed=0)
    torch.manual_seed(0)
    models.backbone = ContextWanTransformer(WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32).eval())
    models.load_first_shot_model(str(t2v_dir))
    assert models.model_id.endswith(f"+first-shot:{t2v_dir}")
    calls = {"t2v": 0, "m2v": 0}
    models.first_shot_backbone.register_forward_hook(lambda *a: calls.__setitem__("t2v", calls["t2v"] + 1))
    models.backbone.register_forward_hook(lambda *a: calls.__setitem__("m2v", calls["m2v"] + 1))
    story = small_story(1, 2)
    story["scenes"][0]["cut"] = [True, True]
    cfg = method_config("storymem", {"keyframes": {"dedupe_threshold": 1.01}})
    engine = StoryEngine(models, tmp_path / "p", story=parse_story(story), config=cfg, progress=False)
    engine.generate()
    steps = engine.config.sampler.num_inference_steps  # one forward a step (batched CFG), one chunk a shot
    assert engine.m2v and calls["t2v"] == steps and calls["m2v"] == steps
    shots = engine.project.shots
    assert shots[0]["chunks"][0]["mode"] == "text" and shots[1]["chunks"][0]["mode"] == "shot"
    with pytest.raises(ModelLoadError, match="input channels"):
        m2v_dir = tmp_path / "m2v"
        models.first_shot_backbone = None
        FilmModels(models.backbone, models.codec, models.prompt_encoder, None, None, "x", False).save_pretrained(m2v_dir)
        models.load_first_shot_model(str(m2v_dir))
