"""End to end on CPU with the tiny preset: files, resume after a crash, regenerate, extend, references."""

import json
import os

import numpy as np
import pytest
import torch
from helpers import ST_BENCH, small_story, torchrun
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from filmweaver.cli import app
from filmweaver.engine import EngineConfig, KeyframeConfig, ShotCacheConfig, ShotRecord, StoryEngine
from filmweaver.io import read_video
from filmweaver.project import ProjectError
from filmweaver.script import load_story, parse_story


def manifest(path):
    return json.loads((path / "manifest.json").read_text())


def config(**kw):
    # dedupe off (random CLIP embeddings are all alike) so the bank holds keyframes of every shot
    return EngineConfig(keyframes=KeyframeConfig(dedupe_threshold=1.01), **kw)


def test_cli_generate_st_bench_writes_every_file(tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["generate", str(ST_BENCH / "black.json"), "-o", str(out), "--preset", "tiny"])
    assert res.exit_code == 0, res.output
    assert "UNTRAINED" in res.output
    m = manifest(out)
    story = load_story(ST_BENCH / "black.json")
    n = len(story.shots())
    assert len(m["shots"]) == n and all(r["status"] == "done" for r in m["shots"])
    assert m["model"]["trained"] is False and "UNTRAINED" in m["model"]["warning"]
    for name in ("film.mp4", "storyboard.png", "memory.png", "story.json", "memory/bank.json"):
        assert (out / name).is_file(), name
    shots = []
    for r in m["shots"]:
        frames, fps = read_video(out / r["files"]["video"]["path"])
        assert frames.shape == (r["num_frames"], 3, 64, 64) and fps == 8
        shots.append(frames)
        assert r["keyframes"] and all((out / k["file"]).is_file() for k in r["keyframes"])
        assert r["seed"] == r["index"] and r["timings"]["total_s"] > 0
        phases = ("memory_s", "denoise_s", "decode_s", "keyframes_s", "write_s")
        assert set(phases) <= set(r["timings"]) and sum(r["timings"][k] for k in phases) <= r["timings"]["total_s"] + 0.01
    film, _ = read_video(out / "film.mp4")
    assert torch.equal(film, torch.cat(shots))  # the shots' packets, copied: lossless
    # memory: shot 1 has none; every later shot holds earlier keyframes with their similarity
    assert m["shots"][0]["chunks"][0]["mode"] == "text"
    for r in m["shots"][1:]:
        assert r["shot_cache"], r["number"]
        assert all(x["source_shot"] < r["number"] and isinstance(x["similarity"], float) for x in r["shot_cache"])
        assert r["chunks"][0]["mode"] == ("shot" if r["cut"] else "both")
        assert r["continuation"] == (None if r["cut"] else "mi2v")
    assert not list(out.rglob("*.part"))
    board = Image.open(out / "storyboard.png")
    assert board.width > 400 and board.height > 64 * n


def test_crash_mid_story_resumes_without_regenerating(tiny_models, tmp_path, monkeypatch):
    story = parse_story(small_story(n_scenes=2, shots_per_scene=2))
    out = tmp_path / "p"
    engine = StoryEngine(tiny_models, out, story=story, config=config(), progress=False)
    real = StoryEngine._generate_shot

    def crash_on_third(self, plan, prior_latents=None):
        if plan.shot.index == 2:
            raise KeyboardInterrupt("killed")
        return real(self, plan, prior_latents)

    monkeypatch.setattr(StoryEngine, "_generate_shot", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        engine.generate()
    m = manifest(out)
    assert [r["index"] for r in m["shots"]] == [0, 1]
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "shots").iterdir()}
    monkeypatch.setattr(StoryEngine, "_generate_shot", real)
    engine = StoryEngine(tiny_models, out, story=story, progress=False)  # reopened: config from the manifest
    assert engine.generate() == [2, 3]
    for name, stamp in stamps.items():
        assert (out / "shots" / name).stat().st_mtime_ns == stamp, f"{name} was rewritten"
    assert engine.generate() == []  # everything done: nothing regenerated
    assert engine.generate(force=True) == [0, 1, 2, 3]


def test_regenerate_rebuilds_memory_from_earlier_shots_only(tiny_models, tmp_path):
    story = parse_story(small_story(n_scenes=3, shots_per_scene=2))
    out = tmp_path / "p"
    engine = StoryEngine(tiny_models, out, story=story, config=config(), progress=False)
    engine.generate()
    before = manifest(out)
    original = load_file(str(out / "shots" / "shot_003.safetensors"))["latents"]
    assert {e["source_shot"] for e in json.loads((out / "memory" / "bank.json").read_text())["entries"]} >= {4, 5}

    engine.regenerate_shot(2)  # shot 3, same prompt and seed
    m = manifest(out)
    r3 = m["shots"][2]
    assert all(x["source_shot"] in (1, 2) for x in r3["shot_cache"])
    assert r3["shot_cache"] == before["shots"][2]["shot_cache"]
    # same memory, same seed -> the same shot: memory was rebuilt exactly as it stood before shot 3
    assert torch.allclose(load_file(str(out / "shots" / "shot_003.safetensors"))["latents"], original, atol=1e-6)
    assert [r["status"] for r in m["shots"]] == ["done"] * 3 + ["stale"] * 3
    bank_shots = {e["source_shot"] for e in json.loads((out / "memory" / "bank.json").read_text())["entries"]}
    assert bank_shots == {0, 1, 2}  # keyframes of the stale shots left the bank

    engine.regenerate_shot(2, prompt="the fox sleeps in a cave", seed=99)
    r3 = manifest(out)["shots"][2]
    assert r3["prompt"] == "the fox sleeps in a cave" and r3["seed"] == 99
    # the bank's pictures follow the regenerated shot, and stale shots' keyframes are gone from it
    from PIL import ImageChops

    name = r3["keyframes"][0]["name"]
    assert ImageChops.difference(Image.open(out / "memory" / f"{name}.png").convert("RGB"),
                                 Image.open(out / r3["keyframes"][0]["file"]).convert("RGB")).getbbox() is None
    assert not list((out / "memory").glob("shot004_*.png"))
    assert not torch.allclose(load_file(str(out / "shots" / "shot_003.safetensors"))["latents"], original)
    # a later generate brings the stale shots back, keeping the override
    assert engine.generate() == [3, 4, 5]
    assert manifest(out)["shots"][2]["prompt"] == "the fox sleeps in a cave"


def test_extend_shot_keeps_frames_and_uses_temporal_cache(tiny_models, tmp_path):
    story = parse_story(small_story(n_scenes=1, shots_per_scene=2))
    out = tmp_path / "p"
    engine = StoryEngine(tiny_models, out, story=story, config=config(), progress=False)
    engine.generate()
    old = load_file(str(out / "shots" / "shot_001.safetensors"))["latents"]
    engine.extend_shot(0, chunks=2)
    new = load_file(str(out / "shots" / "shot_001.safetensors"))["latents"]
    assert new.shape[2] == old.shape[2] + 2 * engine.config.chunk_frames
    assert torch.equal(new[:, :, : old.shape[2]], old)
    r = manifest(out)["shots"][0]
    assert r["num_chunks"] == 3 and [c["mode"] for c in r["chunks"]] == ["text", "temporal", "temporal"]
    assert r["num_frames"] == 1 + 4 * (new.shape[2] - 1)
    assert manifest(out)["shots"][1]["status"] == "stale"
    # the extension survives a resume (the fingerprint is of the base shot)
    assert engine.generate() == [1]
    assert manifest(out)["shots"][0]["num_chunks"] == 3
    # the typed record reads back what the engine wrote, and writes the same dict again
    for rec in manifest(out)["shots"]:
        typed = ShotRecord.from_manifest(rec)
        assert typed.to_manifest() == rec and typed.timings.total_s == rec["timings"]["total_s"]
    typed = ShotRecord.from_manifest(manifest(out)["shots"][0])
    assert typed.modes == ["text", "temporal", "temporal"] and typed.done
    # a record an older version wrote (no entities, no CPU time, keyframes without boxes) still reads
    old_rec = json.loads(json.dumps(manifest(out)["shots"][0]))
    del old_rec["entities"], old_rec["timings"]["cpu_s"]
    for k in old_rec["keyframes"]:
        k.pop("boxes"), k.pop("entities")
    typed = ShotRecord.from_manifest(old_rec)
    assert typed.entities is None and typed.timings.cpu_s is None and typed.keyframes[0].boxes == {}


def test_durations_make_multi_chunk_shots(tiny_models, tmp_path):
    data = small_story(n_scenes=1, shots_per_scene=2)
    data["scenes"][0]["shots"] = [{"num_frames": 40}, {"duration_s": 1.0}]
    engine = StoryEngine(tiny_models, tmp_path / "p", story=parse_story(data), config=config(), progress=False)
    engine.generate()
    r1, r2 = manifest(tmp_path / "p")["shots"]
    assert r1["num_chunks"] == 4 and r1["num_frames"] == 45 >= 40  # 9 + 12 + 12 + 12 frames
    assert [c["mode"] for c in r1["chunks"]] == ["text", "temporal", "temporal", "temporal"]
    assert r2["num_chunks"] == 1 and r2["chunks"][0]["mode"] == "both"  # cut: false continues shot 1
    # the temporal cache is bounded: every continued chunk carries the same context token count
    tokens = [c["context_tokens"] for c in r1["chunks"]]
    assert tokens[0] == 0 and 0 < tokens[1] == tokens[2] == tokens[3]


def test_reference_images_seed_memory(tiny_models, tmp_path):
    Image.new("RGB", (64, 64), (200, 40, 40)).save(tmp_path / "fox.png")
    Image.new("RGB", (64, 64), (40, 200, 40)).save(tmp_path / "forest.png")
    data = small_story(n_scenes=1, shots_per_scene=2,
                       characters=[{"name": "Fox", "reference_images": ["fox.png"]}],
                       locations=[{"name": "Forest", "reference_images": ["forest.png"]}])
    data["scenes"][0]["shots"] = [{"characters": ["Fox"]}, {"location": "Forest"}]
    story = parse_story(data, base_dir=tmp_path)
    engine = StoryEngine(tiny_models, tmp_path / "p", story=story,
                         config=config(shot_cache=ShotCacheConfig(k=1)), progress=False)
    engine.generate()
    r1, r2 = manifest(tmp_path / "p")["shots"]
    assert [(x["kind"], x["label"], x["role"]) for x in r1["shot_cache"]] == [("reference", "Fox", "required")]
    assert r1["chunks"][0]["mode"] == "shot"  # MR2V: memory before the first shot
    assert [(x["label"], x["role"]) for x in r2["shot_cache"]] == [("Forest", "required")]


def test_policies_and_modes(tiny_models, tmp_path):
    story = parse_story(small_story(n_scenes=3, shots_per_scene=1))
    for policy in ("sink_window", "none"):
        out = tmp_path / policy
        cfg = config(shot_cache=ShotCacheConfig(policy=policy, sink=1, max_size=2))
        StoryEngine(tiny_models, out, story=story, config=cfg, progress=False).generate()
        m = manifest(out)
        if policy == "none":
            assert [r["chunks"][0]["mode"] for r in m["shots"]] == ["text"] * 3
        else:
            assert [x["role"] for x in m["shots"][2]["shot_cache"]][:1] == ["sink"]
            assert len(m["shots"][2]["shot_cache"]) == 2


def test_quality_threshold_reaches_selection(tiny_models, tmp_path):
    story = parse_story(small_story(n_scenes=1, shots_per_scene=1))
    kcfg = KeyframeConfig(quality_scorer="contrast", quality_threshold=1e9)  # no frame passes: best one kept
    engine = StoryEngine(tiny_models, tmp_path / "p", story=story, config=EngineConfig(keyframes=kcfg), progress=False)
    engine.generate()
    from filmweaver.memory.keyframes import ContrastScorer

    latents = load_file(str(tmp_path / "p" / "shots" / "shot_001.safetensors"))["latents"]
    frames = tiny_models.codec.decode(latents)[0].permute(1, 0, 2, 3)

    best = int(ContrastScorer().score(frames).argmax())
    assert [k["frame_index"] for k in manifest(tmp_path / "p")["shots"][0]["keyframes"]] == [best]


def test_project_guards(tiny_models, tmp_path):
    story = parse_story(small_story(n_scenes=1, shots_per_scene=2))
    engine = StoryEngine(tiny_models, tmp_path / "p", story=story, config=config(), progress=False)
    with pytest.raises(ProjectError, match="not finished"):
        engine.extend_shot(0)
    with pytest.raises(IndexError, match="the story has 2 shots"):
        engine.regenerate_shot(5)
    engine.generate(max_shots=1)
    assert engine.generate_next_shot() == 1 and engine.generate_next_shot() is None
    tiny_models_other_id = tiny_models.model_id
    try:
        tiny_models.model_id = "something-else"
        with pytest.raises(ProjectError, match="was generated with model"):
            StoryEngine(tiny_models, tmp_path / "p", progress=False)
    finally:
        tiny_models.model_id = tiny_models_other_id


def test_cli_regenerate_extend_and_next(story_file, tmp_path):
    out = tmp_path / "out"
    r = CliRunner()
    res = r.invoke(app, ["generate", str(story_file), "-o", str(out), "--max-shots", "2", "--preset", "tiny"])
    assert res.exit_code == 0, res.output
    assert r.invoke(app, ["next", str(out)]).exit_code == 0
    assert len(manifest(out)["shots"]) == 3
    res = r.invoke(app, ["regenerate", str(out), "--shot", "2", "--seed", "5"])
    assert res.exit_code == 0, res.output
    assert manifest(out)["shots"][1]["seed"] == 5 and manifest(out)["shots"][2]["status"] == "stale"
    res = r.invoke(app, ["extend", str(out), "--shot", "1", "--chunks", "1"])
    assert res.exit_code == 0, res.output
    assert manifest(out)["shots"][0]["num_chunks"] == 2
    res = r.invoke(app, ["regenerate", str(out), "--shot", "9"])
    assert res.exit_code == 2 and "--shot 9: the story has" in res.output
    info = r.invoke(app, ["info", str(out)])
    assert info.exit_code == 0 and "shot  1 done" in info.output and "shot  2 stale" in info.output
    assert os.path.isfile(out / "film.mp4")


def test_first_block_step_cache_skips_blocks_and_resets_per_chunk(tiny_models, story_file, tmp_path):
    from filmweaver.engine import EngineConfig, StoryEngine
    from filmweaver.sampler import SamplerConfig
    from filmweaver.script import load_story

    story = load_story(story_file)
    tr = tiny_models.backbone.transformer
    runs = {"n": 0}
    handle = tr.blocks[-1].ffn.register_forward_pre_hook(lambda *a: runs.__setitem__("n", runs["n"] + 1))
    try:
        counts = {}
        for mode, threshold in (("none", 0.0), ("first_block", 10.0)):
            runs["n"] = 0
            cfg = EngineConfig(shot_chunks=2, step_cache=mode, step_cache_threshold=threshold,
                               sampler=SamplerConfig(num_inference_steps=4))
            StoryEngine(tiny_models, tmp_path / mode, story=story, config=cfg, progress=False).generate()
            counts[mode] = runs["n"]
        # a huge threshold reuses every step after the first of each chunk: 1 of 4 steps per chunk runs
        # the last block (the state is reset per chunk: chunks with different context sizes mix fine)
        assert counts["none"] == 4 * counts["first_block"]
    finally:
        handle.remove()
        for t in (tr,):
            if t.is_cache_enabled:
                t.disable_cache()


def test_mag_step_cache_calibrates_then_skips_blocks(tiny_models, tmp_path):
    """MagCache (diffusers' hook): --step-cache mag_calibrate changes nothing in the film and writes the
    per-step magnitude ratios to the project; --step-cache mag with those ratios and a loose threshold
    skips the later steps of every chunk; without ratios it is refused with the way to get them."""
    import numpy as np

    story = parse_story(small_story(n_scenes=1, shots_per_scene=2))
    tr = tiny_models.backbone.transformer
    runs = {"n": 0}
    handle = tr.blocks[-1].ffn.register_forward_pre_hook(lambda *a: runs.__setitem__("n", runs["n"] + 1))
    counts = {}
    try:
        for mode in ("none", "mag_calibrate"):
            runs["n"] = 0
            StoryEngine(tiny_models, tmp_path / mode, story=story, progress=False,
                        config=config(step_cache=mode, sampler={"num_inference_steps": 5})).generate()
            counts[mode] = runs["n"]
        ratios = json.loads((tmp_path / "mag_calibrate" / "mag_ratios.json").read_text())
        assert ratios["num_inference_steps"] == 5 and len(ratios["mag_ratios"]) == 5
        assert ratios["mag_ratios"][0] == 1.0 and ratios["trajectories"] >= 2
        assert counts["mag_calibrate"] == counts["none"]  # calibration skips nothing
        a, b = (np.asarray(Image.open(tmp_path / m / "storyboard.png")) for m in ("none", "mag_calibrate"))
        assert np.array_equal(a, b)
        # a loose threshold: the first step (retention 20 % of 5) runs, then up to 3 are skipped, then one runs
        runs["n"] = 0
        StoryEngine(tiny_models, tmp_path / "mag", story=story, progress=False,
                    config=config(step_cache="mag", step_cache_threshold=10.0, step_cache_mag_ratios=ratios["mag_ratios"],
                                  sampler={"num_inference_steps": 5})).generate()
        assert counts["none"] == 5 * runs["n"] / 2
        with pytest.raises(ValueError, match="mag_calibrate"):
            StoryEngine(tiny_models, tmp_path / "x", story=story, config=config(step_cache="mag"), progress=False)
    finally:
        handle.remove()
        if tr.is_cache_enabled:
            tr.disable_cache()
    # the CLI round trip: calibrate, then pass the file; a file that is not one is refused by name
    base = ["generate", "examples/lighthouse.json", "--preset", "tiny", "--steps", "3", "--max-shots", "1"]
    r = CliRunner().invoke(app, [*base, "-o", str(tmp_path / "c1"), "--step-cache", "mag_calibrate"])
    assert r.exit_code == 0 and (tmp_path / "c1" / "mag_ratios.json").is_file(), r.output
    r = CliRunner().invoke(app, [*base, "-o", str(tmp_path / "c2"), "--step-cache", "mag", "--mag-ratios",
                                 str(tmp_path / "c1" / "mag_ratios.json")])
    assert r.exit_code == 0, r.output
    (tmp_path / "bad.json").write_text("[1, 2]")
    r = CliRunner().invoke(app, [*base, "-o", str(tmp_path / "c3"), "--step-cache", "mag", "--mag-ratios",
                                 str(tmp_path / "bad.json")])
    assert r.exit_code == 2 and "bad.json" in r.output


def test_causal_context_model_reuses_context_keys_per_chunk(tmp_path, monkeypatch):
    """A model saved with causal context loads as one, and the engine computes each chunk's context
    keys/values once: every later denoising step of the chunk is a cache hit."""
    from filmweaver.backbone.wan import ContextKVCache
    from filmweaver.models import FilmModels

    models = FilmModels.tiny(seed=0)
    models.backbone.context_attention = "causal"
    models.save_pretrained(tmp_path / "m")
    loaded = FilmModels.from_pretrained(str(tmp_path / "m"))
    assert loaded.backbone.context_attention == "causal"
    calls = {"hit": 0, "miss": 0}
    get = ContextKVCache.get

    def counting_get(self, backbone, text):
        kv = get(self, backbone, text)
        calls["hit" if kv is not None else "miss"] += 1
        return kv

    monkeypatch.setattr(ContextKVCache, "get", counting_get)
    steps = 3
    cfg = config(sampler={"num_inference_steps": steps})
    engine = StoryEngine(loaded, tmp_path / "film", story=parse_story(small_story()), config=cfg, progress=False,
                         explicit={"num_inference_steps"})
    engine.generate()
    chunks_with_context = sum(1 for r in engine.project.shots for c in r["chunks"] if c["context_tokens"])
    assert chunks_with_context > 0
    assert calls["miss"] == chunks_with_context and calls["hit"] == (steps - 1) * chunks_with_context
    # FirstBlockCache would compare the context pass's residuals with the generated tokens': refused
    with pytest.raises(ValueError, match="causal-context"):
        StoryEngine(loaded, tmp_path / "fbc", story=parse_story(small_story()), config=config(step_cache="first_block"),
                    progress=False)


def _storyboards_one_and_two_ranks(tmp_path, flags: list[str]):
    """The tiny preset's lighthouse story generated by one process and by `torchrun --nproc_per_node 2 ...
    generate FLAGS`: both storyboards ``[H, W, 3]`` float32, after checking rank 0 finished the project and
    no rank's scratch directory is left behind."""
    import numpy as np

    single, parallel = tmp_path / "one", tmp_path / "two"
    r = CliRunner().invoke(app, ["generate", "examples/lighthouse.json", "-o", str(single), "--preset", "tiny"])
    assert r.exit_code == 0, r.output
    p = torchrun(2, "-m", "filmweaver.cli", "generate", "examples/lighthouse.json", "-o", str(parallel), "--preset",
                 "tiny", *flags, tmp_dir=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((parallel / "manifest.json").read_text())["shots"][-1]["status"] == "done"
    assert not [d for d in os.listdir(tmp_path) if d.startswith("filmweaver-rank")]
    return tuple(np.asarray(Image.open(d / "storyboard.png"), dtype=np.float32) for d in (single, parallel))


@pytest.mark.slow
def test_generate_with_context_parallelism_on_two_cpu_ranks(tmp_path):
    """`torchrun --nproc_per_node 2 ... generate --context-parallel ulysses`: rank 0 writes the project,
    the film matches the single-process one up to float reordering, and no scratch is left behind."""
    a, b = _storyboards_one_and_two_ranks(tmp_path, ["--context-parallel", "ulysses"])
    assert a.shape == b.shape and abs(a - b).mean() < 0.5  # 8-bit frames of near-identical latents
    # outside torchrun the flag is a clear error
    r = CliRunner().invoke(app, ["generate", "examples/lighthouse.json", "-o", str(tmp_path / "x"), "--preset", "tiny",
                                 "--context-parallel", "ulysses"])
    assert r.exit_code != 0 and "torchrun" in r.output


@pytest.mark.slow
def test_cfg_parallel_sampling_splits_the_branches_and_matches_one_process(tmp_path):
    """Two CPU ranks (gloo): rank 0 runs only the conditional forward, rank 1 only the unconditional one,
    and both end with the single-process (batched CFG) latents, with and without memory guidance."""
    out = tmp_path / "cfg.json"
    p = torchrun(2, os.path.join(os.path.dirname(__file__), "cfg_worker.py"), str(out), timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(out.read_text())
    # a batch-1 and a batch-2 forward may take different vector kernels (AVX-512 / AVX2 paths): the
    # same math to float32 rounding, not the same bits
    assert r["cfg"]["max_diff"] < 1e-5 and r["cfg"]["branches"] == [["text"], ["negative"]]
    assert r["cfg"]["forwards"] == [4, 4]  # one batch-1 forward a step on each rank (4 steps)
    # memory guidance: its extra forward (empty prompt, no keyframes) runs on both ranks
    assert r["memory_guidance"]["max_diff"] < 1e-5 and r["memory_guidance"]["branches"] == [["negative", "text"], ["negative"]]


@pytest.mark.slow
def test_generate_with_cfg_parallelism_on_two_cpu_ranks(tmp_path):
    """`torchrun --nproc_per_node 2 ... generate --cfg-parallel`: the same film as one process, rank 0 writes it."""
    a, b = _storyboards_one_and_two_ranks(tmp_path, ["--cfg-parallel"])
    assert a.shape == b.shape and abs(a - b).mean() < 0.5  # batch-1 and batch-2 forwards: float reordering at most
    for flags, message in ((["--cfg-parallel"], "torchrun"),
                           (["--cfg-parallel", "--context-parallel", "ulysses"], "do not combine")):
        r = CliRunner().invoke(app, ["generate", "examples/lighthouse.json", "-o", str(tmp_path / "x"), "--preset",
                                     "tiny", *flags])
        assert r.exit_code != 0 and message in r.output


def _two_cut_shots(models, out, **settings) -> StoryEngine:
    """Generate two cut shots (the second with the first's keyframes in memory, no temporal cache)."""
    story = parse_story(small_story(n_scenes=2, shots_per_scene=1))
    engine = StoryEngine(models, out, story=story, config=config(temporal_cache={"enabled": False}, **settings),
                         progress=False)
    engine.generate()
    return engine


def test_shot_cache_compression_cuts_memory_tokens(tiny_models, tmp_path):
    counts = {c: _two_cut_shots(tiny_models, tmp_path / f"c{c}", shot_cache={"compression": c}).project.shots[1]
              ["chunks"][0]["context_tokens"] for c in (1, 2)}
    assert counts[1] > 0 and counts[2] * 4 == counts[1]


def test_model_offload_runs_one_module_at_a_time_and_keeps_the_film(tmp_path, monkeypatch):
    """Model CPU offload (exercised on CPU, where the execution device is the CPU too): the engine's
    calls go through the offload hooks, one large module is resident at a time, the text encoder,
    transformer and VAE take turns, and the film is the same as without offload."""
    import numpy as np

    from filmweaver.models import FilmModels
    from filmweaver.offload import ModelOffload

    story = parse_story(small_story(n_scenes=1, shots_per_scene=2))
    plain = StoryEngine(FilmModels.tiny(seed=0), tmp_path / "plain", story=story, config=config(), progress=False)
    plain.generate()
    models = FilmModels.tiny(seed=0)
    models.enable_model_offload("cpu")
    order = []
    bring = ModelOffload.bring

    def spy(self, module):
        if self.resident is not module:
            order.append(type(module).__name__)
        bring(self, module)

    monkeypatch.setattr(ModelOffload, "bring", spy)
    engine = StoryEngine(models, tmp_path / "off", story=story, config=config(), progress=False)
    engine.generate()
    assert {"UMT5EncoderModel", "ContextWanTransformer", "AutoencoderKLWan"} <= set(order)
    assert all(a != b for a, b in zip(order, order[1:], strict=False))  # every load evicts the one before
    assert models.offload.loads == len(order)
    a = np.asarray(Image.open(tmp_path / "plain" / "storyboard.png"), dtype=np.float32)
    b = np.asarray(Image.open(tmp_path / "off" / "storyboard.png"), dtype=np.float32)
    assert np.array_equal(a, b)


def test_block_offload_streams_the_blocks_and_keeps_the_film(tmp_path):
    """--offload block (on CPU, where the execution device is the CPU too): between forwards every
    transformer block's weights wait in accelerate's CPU state dict (the parameters are meta tensors),
    the rest of the transformer is resident, the hooks bring each block in when it runs, and the film
    is the same as without offload."""
    import numpy as np

    from filmweaver.models import FilmModels

    story = parse_story(small_story(n_scenes=1, shots_per_scene=2))
    plain = StoryEngine(FilmModels.tiny(seed=0), tmp_path / "plain", story=story, config=config(), progress=False)
    plain.generate()
    models = FilmModels.tiny(seed=0)
    models.enable_model_offload("cpu", stream_blocks=True)
    expert = models.experts()[0]
    blocks = expert.transformer.blocks
    assert all(p.device.type == "meta" for p in blocks.parameters())
    assert all(p.device.type == "cpu" for n, p in expert.named_parameters() if ".blocks." not in n)
    assert expert.device == torch.device("cpu")
    engine = StoryEngine(models, tmp_path / "off", story=story, config=config(), progress=False)
    engine.generate()
    assert all(p.device.type == "meta" for p in blocks.parameters())  # back out after every forward
    a = np.asarray(Image.open(tmp_path / "plain" / "storyboard.png"), dtype=np.float32)
    b = np.asarray(Image.open(tmp_path / "off" / "storyboard.png"), dtype=np.float32)
    assert np.array_equal(a, b)
    r = CliRunner().invoke(app, ["generate", "examples/lighthouse.json", "-o", str(tmp_path / "cli"), "--preset", "tiny",
                                 "--offload", "block", "--compile"])
    assert r.exit_code == 2 and "does not combine" in r.output


def test_resolve_keeps_what_the_caller_set_and_fills_the_rest_from_the_model(tiny_models, tmp_path):
    """Model defaults fill only unset fields: API settings, `--method`/benchmark settings and a
    reopened project's config are kept (regression: `filmweaver next` on a project made with
    `--steps 2` switched to the model's 4 steps and marked finished shots stale)."""
    from filmweaver.methods import method_config

    models = tiny_models
    models_defaults = dict(models.defaults)
    try:
        models.defaults = {**models_defaults, "num_inference_steps": 4, "sampler.shift": 3.0, "shot_cache.timestep": 100.0}
        assert EngineConfig().resolve(models).sampler.num_inference_steps == 4
        cfg = EngineConfig(sampler={"num_inference_steps": 2}).resolve(models)
        assert cfg.sampler.num_inference_steps == 2 and cfg.sampler.shift == 3.0  # the unset shift still filled
        assert method_config("storymem", {"sampler": {"num_inference_steps": 2}}).resolve(models).sampler.num_inference_steps == 2
        reopened = EngineConfig.model_validate(EngineConfig(shot_cache={"timestep": 0.0}).resolve(models).model_dump())
        assert reopened.resolve(models).shot_cache.timestep == 0.0
    finally:
        models.defaults = models_defaults
    out = tmp_path / "p"
    r = CliRunner().invoke(app, ["generate", "examples/lighthouse.json", "-o", str(out), "--preset", "tiny",
                                 "--steps", "2", "--max-shots", "2"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["next", str(out), "--preset", "tiny"])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["config"]["sampler"]["num_inference_steps"] == 2
    assert [s["status"] for s in m["shots"]][:3] == ["done", "done", "done"]


def test_memory_guidance_combines_three_branches_and_only_acts_with_keyframes(tiny_models, tmp_path):
    from filmweaver.sampler import guided_velocity

    c, u, n = torch.full((1,), 3.0), torch.full((1,), 2.0), torch.full((1,), 1.0)
    assert guided_velocity(c, u, 4.0).item() == 2.0 + 4.0 * 1.0  # plain CFG
    assert guided_velocity(c, u, 4.0, n, 1.0).item() == guided_velocity(c, u, 4.0).item()  # m = 1: off
    assert guided_velocity(c, u, 4.0, n, 2.5).item() == 1.0 + 2.5 * 1.0 + 4.0 * 1.0
    films = {}
    for m in (1.0, 2.0):
        engine = _two_cut_shots(tiny_models, tmp_path / f"m{m}", sampler={"memory_guidance_scale": m})
        films[m] = [load_file(str(engine.project.shot_state(i)))["latents"] for i in range(2)]
    assert torch.equal(films[1.0][0], films[2.0][0])  # shot 1 has no keyframes: nothing to guide on
    assert not torch.allclose(films[1.0][1], films[2.0][1])  # shot 2 does


def test_cli_fused_projections_combine_with_block_offload_and_keep_the_film(tmp_path):
    """--fuse-qkv / --fuse-ffn add or replace modules, so they happen before --offload block snapshots
    the block weights (after it, the new q/k/v module would hold weights the hooks never bring in)."""
    import numpy as np

    story = str(ST_BENCH / "black.json")
    base = ["generate", story, "--preset", "tiny", "--max-shots", "2"]
    plain = CliRunner().invoke(app, [*base, "-o", str(tmp_path / "plain")])
    fused = CliRunner().invoke(app, [*base, "-o", str(tmp_path / "fused"), "--fuse-qkv", "--fuse-ffn", "--offload", "block"])
    assert plain.exit_code == 0 and fused.exit_code == 0, fused.output
    a, b = (np.asarray(read_video(tmp_path / d / "shots" / "shot_002.mp4")[0], dtype=np.float32) for d in ("plain", "fused"))
    assert a.shape == b.shape and np.abs(a - b).mean() < 1.0  # the same film up to float rounding (of 255)


def test_per_shot_cap_reaches_the_engine_retrieval(tiny_models, tmp_path):
    """``shot_cache.per_shot``: the engine's retrieval takes at most that many keyframes of one earlier
    shot while other shots have some (what each shot retrieved is in the manifest)."""
    story = parse_story(small_story(n_scenes=1, shots_per_scene=4))
    sources = {}
    for cap in (None, 1):  # None: the default, no cap
        # every frame a keyframe, none deduplicated: each shot leaves several in the bank
        cfg = EngineConfig(shot_cache=ShotCacheConfig(k=3, per_shot=cap),
                           keyframes=KeyframeConfig(start_threshold=1.01, max_per_shot=50, dedupe_threshold=1.01))
        engine = StoryEngine(tiny_models, tmp_path / f"cap{cap}", story=story, config=cfg, progress=False)
        assert engine.memory.policy.per_shot == cap
        engine.generate()
        m = manifest(tmp_path / f"cap{cap}")
        assert max(len(r["keyframes"]) for r in m["shots"][:3]) > 1  # shots left several keyframes
        sources[cap] = [[x["source_shot"] for x in r["shot_cache"]] for r in m["shots"]]
    # (source shots are 1-based) one earlier shot: every slot from it; two: one each and the third slot
    # filled; three: one each. Which retrieval crowds without the cap is test_memory's (constructed
    # embeddings; the tiny model's random CLIP does not crowd)
    assert sources[1][1] == [1, 1, 1] and sorted(set(sources[1][2])) == [1, 2] and len(sources[1][2]) == 3
    assert sources[1][3] == [1, 2, 3]


def test_character_anchors_keep_the_shot_that_introduced_a_character(tiny_models, tmp_path):
    """``shot_cache.anchor_characters``: a later shot naming a sheet character (in its prompt or its
    ``characters``) always has the first keyframe of the earliest shot naming it; shots that do not
    name it, and runs without the option, retrieve by similarity alone."""
    prompts = ["a dog runs on the beach", "Fox, a red fox, walks in the snow", "the dog digs a hole",
               "Fox sleeps under a tree", "a storm over the sea"]
    data = {"story_name": "anchors", "story_overview": "a fox and a dog",
            "characters": [{"name": "Fox", "description": "a red fox"}],
            "scenes": [{"scene_num": 1, "video_prompts": prompts, "cut": [True] * 5}]}
    data["scenes"][0]["shots"] = [{}, {}, {}, {}, {"characters": ["Fox"]}]  # shot 5 names Fox by option
    story = parse_story(data)
    roles = {}
    for anchor in (False, True):
        out = tmp_path / f"anchor{anchor}"
        cfg = config(shot_cache=ShotCacheConfig(k=1, anchor_characters=anchor))
        StoryEngine(tiny_models, out, story=story, config=cfg, progress=False).generate()
        roles[anchor] = [[(x["source_shot"], x["role"]) for x in r["shot_cache"]] for r in manifest(out)["shots"]]
    assert all(role == "retrieved" for shot in roles[False] for _, role in shot)
    on = roles[True]
    assert on[3] == [(2, "required")] and on[4] == [(2, "required")]  # shot 2 (1-based) introduced Fox
    assert [role for _, role in on[2]] == ["retrieved"]  # the dog's shot: similarity alone
    assert on[1] == roles[False][1]  # Fox's first shot has no earlier shot of Fox


def test_summaries_never_decode_the_shots_again(tiny_models, tmp_path, monkeypatch):
    """The storyboard comes from thumbnails kept at shot time and the film from the shots' packets, so
    the cost of an operation's summaries does not grow with the shots already made."""
    from filmweaver.engine import summaries

    out = tmp_path / "p"
    engine = StoryEngine(tiny_models, out, story=parse_story(small_story()), config=config(), progress=False)
    engine.generate(max_shots=2)
    board = np.asarray(Image.open(out / "storyboard.png"))

    def no_decoding(*_):
        raise AssertionError("a shot was decoded for the summaries")

    monkeypatch.setattr(summaries, "read_video", no_decoding)
    engine.generate()
    assert manifest(out)["shots"][-1]["status"] == "done"
    again = np.asarray(Image.open(out / "storyboard.png"))
    assert again.shape[0] > board.shape[0] and np.array_equal(again[:60], board[:60])  # title and shot 1 kept
