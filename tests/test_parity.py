"""Engine with both caches empty == diffusers WanPipeline (same seed, prompt embeddings, scheduler)."""

import json

import numpy as np
import pytest
import torch
from helpers import small_story
from safetensors.torch import load_file

from filmweaver.engine import EngineConfig, StoryEngine
from filmweaver.sampler import SamplerConfig, make_scheduler
from filmweaver.script import parse_story


@pytest.mark.parametrize("scheduler", ["unipc", "euler"])
@pytest.mark.parametrize("batch_cfg", [False, True])
def test_first_shot_equals_wan_pipeline(tiny_models, tmp_path, scheduler, batch_cfg):
    from diffusers import WanPipeline

    m = tiny_models
    story = parse_story(small_story(n_scenes=1, shots_per_scene=1, seed=123))
    sampler = SamplerConfig(scheduler=scheduler, num_inference_steps=5, guidance_scale=4.0, batch_cfg=batch_cfg)
    cfg = EngineConfig(sampler=sampler, chunk_frames=3, height=64, width=64)
    engine = StoryEngine(m, tmp_path / "p", story=story, config=cfg, progress=False,
                         explicit={"num_inference_steps", "guidance_scale"})
    engine.generate()
    ours = load_file(str(tmp_path / "p" / "shots" / "shot_001.safetensors"))["latents"]
    record = json.loads((tmp_path / "p" / "manifest.json").read_text())["shots"][0]
    assert record["chunks"][0]["mode"] == "text" and record["shot_cache"] == []

    pipe = WanPipeline(tokenizer=m.prompt_encoder.tokenizer, text_encoder=m.prompt_encoder.text_encoder,
                       vae=m.codec.vae, transformer=m.backbone.transformer,
                       scheduler=make_scheduler(sampler, m.scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    prompt = story.shots()[0].prompt
    kwargs = dict(prompt_embeds=m.prompt_encoder.encode([prompt]), negative_prompt_embeds=m.prompt_encoder.encode([""]),
                  height=64, width=64, num_frames=9, num_inference_steps=5, guidance_scale=4.0)
    ref = pipe(**kwargs, generator=torch.Generator().manual_seed(123), output_type="latent").frames
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() < 1e-5
    # decoded frames too
    video = pipe(**kwargs, generator=torch.Generator().manual_seed(123), output_type="pt").frames[0]  # [T, 3, H, W]
    decoded = m.codec.decode(ours)[0].permute(1, 0, 2, 3)
    assert (decoded - video).abs().max() < 1e-5
    assert np.isfinite(decoded.numpy()).all()
