"""Wan2.1-I2V-type backbones: the CLIP image tokens of each shot's conditioning image (tiny random models)."""

import pytest
import torch
from helpers import small_story

from filmweaver.backbone.image_encoder import WanImageEncoder
from filmweaver.backbone.wan import ContextWanTransformer
from filmweaver.models import FilmModels, ModelLoadError, load_models

IMAGE_TOKENS, IMAGE_DIM = 17, 16  # a 32x32 CLIP with 8x8 patches: 16 patches + the class token


def tiny_i2v_models(seed: int = 0) -> FilmModels:
    """The tiny preset with a Wan2.1-I2V-shaped transformer (36 input channels, image_dim, added K/V
    projections in cross-attention), its CLIP vision tower and 512 text tokens, as the release has."""
    from diffusers import WanTransformer3DModel
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

    models = FilmModels.tiny(seed=seed)
    torch.manual_seed(seed)
    models.backbone = ContextWanTransformer(WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32, image_dim=IMAGE_DIM, added_kv_proj_dim=24).eval())
    models.prompt_encoder.max_sequence_length = 512
    vision = CLIPVisionModel(CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=IMAGE_DIM, intermediate_size=32,
                                              num_hidden_layers=2, num_attention_heads=2))
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    models.image_encoder = WanImageEncoder(vision, processor, model_id="tiny-clip-vision")
    return models


def test_each_shot_is_conditioned_on_the_image_it_continues_from(tmp_path):
    from filmweaver.engine import StoryEngine
    from filmweaver.script import parse_story

    models = tiny_i2v_models()
    seen_images, seen_tokens = [], []
    encode = models.image_encoder.encode
    models.image_encoder.encode = lambda images: (seen_images.append(images.clone()), encode(images))[1]
    models.backbone.register_forward_hook(
        lambda mod, args, kwargs, out: seen_tokens.append(kwargs.get("encoder_hidden_states_image")), with_kwargs=True)
    story = small_story(n_scenes=2, shots_per_scene=2)  # cuts: shot 1 yes, 2 no, 3 yes, 4 no
    engine = StoryEngine(models, tmp_path / "p", story=parse_story(story), progress=False)
    engine.generate()
    shots = engine.project.shots
    assert engine.project.manifest["model"]["image_encoder"] == "tiny-clip-vision"
    assert [s["image_condition"] for s in shots][0] == "none (black frame)"
    assert shots[1]["image_condition"] == "shot 1's last frame" and shots[3]["image_condition"] == "shot 3's last frame"
    assert shots[2]["image_condition"].startswith("keyframe ")
    assert len(seen_images) == 4 and seen_images[0].abs().max() == 0
    from safetensors.torch import load_file

    tail = load_file(str(engine.project.shot_state(0)))["tail_frames"][-1]
    assert torch.equal(seen_images[1][0], tail.float())
    kf = next(e for e in engine.bank.before(2).entries if shots[2]["image_condition"] == f"keyframe {e.name}")
    assert torch.equal(seen_images[2][0], kf.image.float())
    # every forward got the shot's image tokens, and they change what the model predicts
    assert seen_tokens and all(t is not None and t.shape == (1, IMAGE_TOKENS, IMAGE_DIM) for t in seen_tokens)
    x, tt = torch.randn(1, 36, 2, 8, 8), torch.tensor([500.0])
    text = torch.randn(1, 512, 32)
    with torch.no_grad():
        a = models.backbone(x, tt, text, encoder_hidden_states_image=seen_tokens[0])
        other = encode(torch.rand(1, 3, 64, 64))  # (the tiny VAE's frames may all be black)
        b = models.backbone(x, tt, text, encoder_hidden_states_image=other)
    assert (a - b).abs().max() > 1e-4


def test_an_extension_is_conditioned_on_the_shots_own_last_frame_and_memory_guidance_keeps_the_image(tmp_path):
    from safetensors.torch import load_file

    from filmweaver.engine import EngineConfig, StoryEngine
    from filmweaver.script import parse_story

    models = tiny_i2v_models(seed=3)
    seen_images, seen_tokens = [], []
    encode = models.image_encoder.encode
    models.image_encoder.encode = lambda images: (seen_images.append(images.clone()), encode(images))[1]
    models.backbone.register_forward_hook(
        lambda mod, args, kwargs, out: seen_tokens.append(kwargs.get("encoder_hidden_states_image")), with_kwargs=True)
    story = small_story(n_scenes=2, shots_per_scene=1)  # two cuts: shot 2 has shot 1's keyframes in memory
    config = EngineConfig(sampler={"memory_guidance_scale": 2.0})
    engine = StoryEngine(models, tmp_path / "p", story=parse_story(story), config=config, progress=False)
    engine.generate()
    assert engine.project.shots[1]["image_condition"].startswith("keyframe ")
    # shot 2 ran the forwards with and without its keyframes (memory guidance): all saw its image tokens
    assert engine.config.sampler.memory_guidance_scale == 2.0
    assert all(t is not None and t.shape == (1, IMAGE_TOKENS, IMAGE_DIM) for t in seen_tokens)
    last_before = load_file(str(engine.project.shot_state(1)))["tail_frames"][-1]
    seen_images.clear()
    seen_tokens.clear()
    engine.extend_shot(1)
    assert engine.project.shots[1]["image_condition"] == "its own last frame"
    assert len(seen_images) == 1 and torch.equal(seen_images[0][0], last_before.float())
    assert seen_tokens and all(t is not None for t in seen_tokens)


def test_i2v_directory_loads_its_image_encoder_and_names_what_is_missing(tmp_path):
    models = tiny_i2v_models(seed=1)
    models.save_pretrained(tmp_path / "m")
    loaded = load_models(preset="wan2.1-i2v-14b-480p", model=str(tmp_path / "m"))
    assert loaded.defaults["height"] == 480 and loaded.image_encoder is not None
    img = torch.rand(2, 3, 40, 48)
    torch.testing.assert_close(loaded.image_encoder.encode(img), models.image_encoder.encode(img), atol=1e-5, rtol=1e-5)
    for sub in ("image_encoder", "image_processor"):
        moved = tmp_path / "m" / f"{sub}.away"
        (tmp_path / "m" / sub).rename(moved)
        with pytest.raises(ModelLoadError, match=f"{sub}/"):
            load_models(model=str(tmp_path / "m"))
        moved.rename(tmp_path / "m" / sub)


def test_i2v_backbone_without_its_image_encoder_or_512_text_tokens_is_refused(tmp_path):
    from filmweaver.engine import StoryEngine
    from filmweaver.script import parse_story

    story = parse_story(small_story(n_scenes=1, shots_per_scene=1))
    models = tiny_i2v_models(seed=2)
    models.image_encoder = None
    with pytest.raises(ValueError, match="CLIP vision tower"):
        StoryEngine(models, tmp_path / "a", story=story, progress=False)
    models = tiny_i2v_models(seed=2)
    models.prompt_encoder.max_sequence_length = 64
    with pytest.raises(ValueError, match="512 text tokens"):
        StoryEngine(models, tmp_path / "b", story=story, progress=False)


@torch.no_grad()
def test_fused_projections_keep_the_i2v_forward_with_its_image_keys_and_values():
    from filmweaver.backbone.wan import FusedAway

    bb = tiny_i2v_models(seed=4).backbone
    x, tt, text = torch.randn(1, 36, 2, 8, 8), torch.tensor([500.0]), torch.randn(1, 512, 32)
    image = torch.randn(1, IMAGE_TOKENS, IMAGE_DIM)
    ref = bb(x, tt, text, encoder_hidden_states_image=image)
    bb.fuse_qkv()
    bb.fuse_ffn_gelu()
    attn2 = bb.transformer.blocks[0].attn2
    assert isinstance(attn2.add_k_proj, FusedAway) and attn2.to_added_kv.out_features == 2 * attn2.to_q.out_features
    torch.testing.assert_close(bb(x, tt, text, encoder_hidden_states_image=image), ref, atol=1e-5, rtol=1e-4)
