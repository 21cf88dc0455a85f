"""``--method storymem`` is StoryMem's released pipeline: every model input, at every denoising step,
equals what StoryMem's own construction gives (``tests/storymem_reference.py``, written from its code)
on a tiny random Wan2.2-I2V-shaped transformer; keyframe and memory choices match frame by frame."""

import pytest
import torch
from helpers import small_story
from safetensors.torch import load_file
from storymem_reference import (
    reference_keyframe_indices,
    reference_mask,
    reference_memory,
    reference_sample,
    reference_y,
)

from filmweaver.engine import WAN_NEGATIVE_PROMPT, StoryEngine
from filmweaver.io import to_uint8
from filmweaver.memory.keyframes import StoryMemKeyframeSelector, storymem_frame_size
from filmweaver.methods import method_config
from filmweaver.sampler import make_scheduler
from filmweaver.script import parse_story


def tiny_m2v_models(seed=0):
    """The tiny preset with a Wan2.2-I2V-shaped transformer: 36 input channels, no image tokens."""
    from diffusers import WanTransformer3DModel

    from filmweaver.backbone.wan import ContextWanTransformer
    from filmweaver.models import FilmModels

    models = FilmModels.tiny(seed=seed)
    torch.manual_seed(seed + 1)
    models.backbone = ContextWanTransformer(WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=64).eval())
    return models


def aba_story(continuation_cut=False):
    """Shots: A (cut), B (cut), A again (cut), then a continuation of it."""
    data = small_story(n_scenes=2, shots_per_scene=2)
    a, b = "a red fox walks through a snowy forest", "a lighthouse keeper climbs the stairs at night"
    data["scenes"][0]["video_prompts"] = [a, b]
    data["scenes"][0]["cut"] = [True, True]
    data["scenes"][1]["video_prompts"] = [a, "the fox stops and looks back"]
    data["scenes"][1]["cut"] = [True, continuation_cut]
    return data


def _pm1(x):
    return x * 2 - 1


def _eight_bit(x):
    return torch.from_numpy(to_uint8(x)).permute(0, 3, 1, 2).float() / 255.0


@pytest.mark.parametrize("method,continuation", [("storymem", "mi2v"), ("storymem_corrected", "mi2v"),
                                                 ("storymem", "mm2v")])
def test_every_model_input_matches_storymems_construction(tmp_path, method, continuation):
    models = tiny_m2v_models()
    seen, capturing = [], [True]

    def capture(mod, args, kwargs):
        if capturing[0]:
            x, t = args[0], args[1]
            seen.append((x[0].clone(), t.reshape(-1)[0].clone()))

    # what the engine gives the backbone; the reference runs diffusers' stock transformer forward
    models.backbone.register_forward_pre_hook(capture, with_kwargs=True)
    cfg = method_config(method, {"sampler": {"num_inference_steps": 3}, "continuation": continuation, "seed": 7})
    engine = StoryEngine(models, tmp_path / "p", story=parse_story(aba_story()), config=cfg, progress=False)
    assert engine.storymem_layout and engine.sampler.cfg.shift == 4.0
    engine.generate()
    capturing[0] = False
    codec, shots = models.codec, engine.project.shots
    c = engine.config
    h, w = engine.latent_hw
    frame_num = codec.num_pixel_frames(c.chunk_frames)
    text_null = models.prompt_encoder.encode([WAN_NEGATIVE_PROMPT])
    transformer = models.backbone.transformer

    def vae_encode(x):  # StoryMem's convention: [C, T, H, W] in [-1, 1] -> normalised latents
        return codec.encode(((x + 1) / 2)[None])[0]

    calls = iter(seen)
    bank_names = []
    for n, rec in enumerate(shots):
        # memory: every earlier keyframe, sink 3 + latest; nothing but keyframes of earlier shots
        memory_names = [m["keyframe"] for m in rec["shot_cache"]]
        assert memory_names == reference_memory(bank_names)
        assert [m["position"] for m in rec["shot_cache"]] == list(range(-len(memory_names), 0))
        bank = engine.bank.before(n)
        memory = [_pm1(next(e.image for e in bank if e.name == name)) for name in memory_names]
        first = motion = None
        if not rec["cut"]:
            tail = _pm1(_eight_bit(load_file(str(engine.project.shot_state(n - 1)))["tail_frames"]))
            first, motion = (tail[-1], None) if continuation == "mi2v" else (None, tail[-5:])
        if method == "storymem_corrected" and first is not None:  # the released bug, fixed
            u = vae_encode(torch.cat([first[:, None], torch.zeros(3, frame_num - 1, c.height, c.width)], dim=1))
            y_ref = torch.cat([reference_y(vae_encode, memory, frame_num, c.height, c.width)[:, :len(memory)], u], 1)
        else:
            y_ref = reference_y(vae_encode, memory, frame_num, c.height, c.width, first, motion)
        msk = reference_mask(len(memory), frame_num, h, w, first is not None, motion is not None)
        y_ref = torch.cat([msk, y_ref], dim=0)
        seed = 7 + (0 if n in (0, 2) else 1)  # seed + index within the scene
        assert rec["seed"] == seed
        noise = torch.randn(16, len(memory) + c.chunk_frames, h, w, generator=torch.Generator().manual_seed(seed))
        scheduler = make_scheduler(engine.sampler.cfg, models.scheduler_config)
        scheduler.set_timesteps(c.sampler.num_inference_steps)
        context = models.prompt_encoder.encode([rec["prompt"]])
        ref_latent, ref_inputs = reference_sample(transformer, scheduler, noise, y_ref, context, text_null,
                                                  c.sampler.guidance_scale)
        for step, ref_x in enumerate(ref_inputs):
            x, t = next(calls)
            assert x.shape == ref_x.shape == (36, len(memory) + c.chunk_frames, h, w)
            assert torch.equal(x[16:20], ref_x[16:20]), f"shot {n + 1} step {step}: mask"
            assert (x[20:] - ref_x[20:]).abs().max() < 1e-5, f"shot {n + 1} step {step}: condition"
            assert (x[:16] - ref_x[:16]).abs().max() < 1e-4, f"shot {n + 1} step {step}: noisy memory + video"
            assert t == scheduler.timesteps[step]
        ours = load_file(str(engine.project.shot_state(n)))["latents"][0]
        assert (ours - ref_latent[:, len(memory):]).abs().max() < 1e-4
        # the continuation's fixed frames are dropped from the shot, as StoryMem saves it
        assert rec["num_frames"] == frame_num - (0 if rec["cut"] else 1 if continuation == "mi2v" else 5)
        bank_names += [k["name"] for k in rec["keyframes"] if k["added_to_bank"]]
    assert next(calls, None) is None
    if continuation == "mi2v" and method == "storymem":
        # as released, MI2V fixes frame 0 in the mask but conditions it on grey: the same condition as a cut's
        grey = vae_encode(torch.zeros(3, frame_num, c.height, c.width))
        assert (seen[-1][0][20:, -c.chunk_frames:] - grey).abs().max() < 1e-5


def test_the_first_shot_is_the_t2v_release_with_its_own_settings(tmp_path):
    models = tiny_m2v_models()
    from diffusers import WanTransformer3DModel

    from filmweaver.backbone.wan import ContextWanTransformer

    t2v = ContextWanTransformer(WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=64).eval())
    models.first_shot_backbone = t2v
    calls = {"t2v": 0, "m2v": 0}
    t2v.register_forward_pre_hook(lambda *a: calls.__setitem__("t2v", calls["t2v"] + 1))
    models.backbone.register_forward_pre_hook(lambda *a: calls.__setitem__("m2v", calls["m2v"] + 1))
    cfg = method_config("storymem", {"sampler": {"num_inference_steps": 2}})
    engine = StoryEngine(models, tmp_path / "p", story=parse_story(aba_story()), config=cfg, progress=False)
    assert engine.first_shot_sampler.cfg.shift == 12.0 and engine.first_shot_sampler.cfg.guidance_scale == 3.5
    engine.generate(max_shots=1)
    assert calls == {"t2v": 2, "m2v": 0}
    engine.generate(max_shots=2)
    assert calls["m2v"] == 2


def test_keyframes_are_chosen_as_storymem_chooses_them():
    """On constructed embeddings: frame 1 is never a keyframe, the threshold adapts to at most 3, a
    shot whose frames all fail the quality filter adds none (filmweaver's own selector keeps one)."""
    g = torch.Generator().manual_seed(0)

    class Scores:
        name = "fixed"

        def __init__(self, values):
            self.values = torch.tensor(values, dtype=torch.float32)

        def score(self, images):
            return self.values

    cases = []
    for t in (6, 9, 17):
        for _ in range(10):
            emb = torch.nn.functional.normalize(torch.randn(t, 8, generator=g) + 2.0 * torch.randn(1, 8, generator=g), dim=-1)
            quality = (torch.rand(t, generator=g) * 5).tolist()
            cases.append((emb, quality))
    # drifting frames (frame 1 the most different from 0), and every frame below the filter
    drift = torch.nn.functional.normalize(torch.stack([torch.tensor([1.0, 0.0 + 0.4 * i, 0.0]) for i in range(8)]), dim=-1)
    drift[1] = torch.tensor([0.0, 0.0, 1.0])
    cases += [(drift, [5.0] * 8), (drift, [1.0] * 8), (drift, [1.0, 1.0] + [5.0] * 6)]
    for emb, quality in cases:
        sel = StoryMemKeyframeSelector(quality_scorer=Scores(quality)).select(emb, torch.zeros(len(quality), 3, 4, 4))
        low = [q < 3.0 for q in quality]
        ref = reference_keyframe_indices(lambda a, b, e=emb: float(e[a] @ e[b]), len(quality), low)
        assert sel.frame_indices == ref
        assert 1 not in sel.frame_indices or low[0]
    assert StoryMemKeyframeSelector(quality_scorer=Scores([1.0] * 8)).select(drift, torch.zeros(8, 3, 4, 4)).frame_indices == []
    assert storymem_frame_size(480, 832) == (336, 588)


def test_storymem_dedupes_only_against_earlier_shots(tmp_path):
    """New keyframes are compared with earlier shots' keyframes only (at 0.9), never with each other;
    filmweaver's own selection compares them with the whole bank, this shot's new ones included."""
    from filmweaver.engine.finish import select_keyframes
    from filmweaver.memory.keyframes import Keyframe, KeyframeBank

    models = tiny_m2v_models()
    frames = torch.rand(9, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    bank = KeyframeBank([Keyframe(frames[0], torch.ones(32) / 32 ** 0.5, None, source_shot=0),
                         Keyframe(frames[1], torch.ones(32) / 32 ** 0.5, None, source_shot=1)])
    story = parse_story(aba_story())
    sm = StoryEngine(models, tmp_path / "a", story=story, config=method_config("storymem"), progress=False)
    sel, embs, earlier, source = select_keyframes(models.embedder, sm.selector, frames, bank, 1)
    assert [e.source_shot for e in earlier] == [0] and earlier.dedupe_threshold == 0.9
    assert torch.equal(source, _eight_bit(frames))  # keyframes come from the 8-bit frames, as read back
    assert sel.frame_indices and all(embs[i].norm() > 0.99 for i in sel.frame_indices)
    fw = StoryEngine(models, tmp_path / "b", story=story, config=method_config("filmweaver"), progress=False)
    assert select_keyframes(models.embedder, fw.selector, frames, bank, 1)[2] is bank
