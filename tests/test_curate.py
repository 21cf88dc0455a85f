"""`filmweaver curate`: real detectors (TransNetV2 from its wheel, PySceneDetect) on a synthetic feature
film with known shots and scenes; the probe captioner against the film's truth; bad input; resume."""

import itertools
import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from filmweaver.cli import app
from filmweaver.curate import CurateConfig, curate, read_samples
from filmweaver.curate.config import Scenes
from filmweaver.curate.scenes import group_scenes
from filmweaver.curate.shots import SceneDetectDetector, ShotSpan, TransNetV2Detector, boundaries
from filmweaver.curate.video import FrameStream
from filmweaver.eval.metrics import adjusted_rand_index, boundary_f1
from filmweaver.io import read_video, write_video
from filmweaver.script import parse_story
from filmweaver.synth.feature_film import write_film

SYNTH = {"captions": {"captioner": "filmweaver.synth.captioner:probe_captioner"},
         "filters": {"people_detector": "none"},
         "scenes": {"embedder": "filmweaver.synth.captioner:probe_embedder", "similarity": 0.66}}


@pytest.fixture(scope="module")
def film(tmp_path_factory):
    path = tmp_path_factory.mktemp("films") / "film-7.mp4"
    truth = write_film(path, seed=7, scenes=4)
    return path, truth


@pytest.fixture(scope="module")
def curated_film(film, tmp_path_factory):
    """The film curated with PySceneDetect, each shot's latents precomputed by the built-in model (read
    only: the tests that use it write elsewhere)."""
    ds = tmp_path_factory.mktemp("curated") / "ds"
    cfg = CurateConfig.model_validate({**SYNTH, "shots": {"detector": "pyscenedetect"}, "latents": {"model": "synth"}})
    curate([film[0]], ds, cfg, progress=False)
    return ds


def test_boundary_f1_and_adjusted_rand_index():
    r = boundary_f1([10.5, 30.0, 52.0], [10.5, 31.5, 70.5], tolerance=2)
    assert (r["matched"], r["precision"], r["recall"]) == (2, 2 / 3, 2 / 3)
    assert boundary_f1([], [], 2)["f1"] == 1.0 and boundary_f1([5.0], [], 2)["f1"] == 0.0
    # one prediction between two boundaries is spent on the nearer one only
    assert boundary_f1([10.0], [9.0, 10.5], tolerance=2)["matched"] == 1
    assert adjusted_rand_index([0, 0, 1, 1], [5, 5, 9, 9]) == 1.0
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) < 0
    assert abs(adjusted_rand_index([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]) - 0.2424) < 1e-3


def test_the_synthetic_film_matches_its_truth(film):
    path, truth = film
    frames, fps = read_video(path)
    assert len(frames) == truth["frames"] and fps == truth["fps"]
    shots = truth["shots"]
    assert all(a["end"] <= b["start"] for a, b in zip(shots, shots[1:], strict=False))
    scenes = [s["scene"] for s in shots]
    assert all(2 <= scenes.count(k) <= 5 for k in set(scenes))
    for t in truth["transitions"]:  # a fade goes through black; a dissolve does not
        mid = frames[(t["start"] + t["end"]) // 2].mean()
        assert (mid < 0.25) if t["kind"] == "fade" else (mid > 0.05)


def test_both_shot_detectors_find_the_cuts(film):
    path, truth = film
    for detector in (TransNetV2Detector(), SceneDetectDetector()):
        spans, info = detector.detect(path)
        r = boundary_f1(boundaries(spans), truth["boundaries"], tolerance=2)
        assert r["precision"] >= 0.9 and r["f1"] >= 0.75, (detector.name, r)
        assert info["frames_decoded"] == truth["frames"]


def test_transnetv2_streams_its_input():
    """Windows are made while frames arrive: the first is ready after 75 frames of an endless video."""
    taken = []

    def endless():
        for t in itertools.count():
            taken.append(t)
            yield np.zeros((27, 48, 3), np.uint8)

    first = next(TransNetV2Detector._windows(TransNetV2Detector.__new__(TransNetV2Detector), endless()))
    assert first.shape == (100, 27, 48, 3) and len(taken) == 75


def test_scene_grouping_follows_the_window_and_the_size_limits():
    e = torch.eye(3)[[0, 0, 0, 1, 1, 2, 0]]
    assert group_scenes(e, Scenes(similarity=0.9)) == [[0, 1, 2], [3, 4], [5], [6]]
    assert group_scenes(e, Scenes(similarity=0.9, max_shots=2)) == [[0, 1], [2], [3, 4], [5], [6]]


def test_curate_a_film_into_samples_checked_against_its_truth(film, tmp_path):
    path, truth = film
    out = tmp_path / "ds"
    [rec] = curate([path], out, CurateConfig.model_validate(SYNTH), progress=False)
    assert rec["status"] == "done" and rec["samples"]
    spans = [ShotSpan(s["start"], s["end"]) for s in rec["shots"]]
    assert boundary_f1(boundaries(spans), truth["boundaries"], 2)["f1"] >= 0.75
    # every shot under a second was dropped, with the reason
    for s in rec["shots"]:
        if (s["end"] - s["start"]) / truth["fps"] < 1:
            assert s["dropped"].startswith("shorter than 1 s")
    # scenes against the truth (each detected shot given the true scene of its middle frame)
    def true_scene(s):
        mid = (s["start"] + s["end"]) // 2
        return next((t["scene"] for t in truth["shots"] if t["start"] <= mid < t["end"]), None)
    grouped = [(s["scene"], true_scene(s)) for s in rec["shots"] if s["scene"] is not None and true_scene(s) is not None]
    assert adjusted_rand_index(*zip(*grouped, strict=True)) >= 0.75
    samples = list(read_samples(out))
    assert [s["key"] for s in samples] == [x["key"] for x in rec["samples"]]
    words_right = total = 0
    for sample in samples:
        story = parse_story(sample["script"])  # an ST-Bench script that filmweaver loads
        shots = story.shots()
        assert len(shots) == len(sample["clips"]) >= 2 and story.entities()
        descriptions = set()
        for shot, prov, clip in zip(shots, sample["provenance"]["shots"], sample["clips"], strict=True):
            assert prov["caption"] == shot.prompt and prov["validation"].startswith("ok")
            assert clip[4:8] == b"ftyp"  # an mp4
            # the true shot it overlaps most (a detected shot may start or end inside a dissolve)
            t = max(truth["shots"], key=lambda x: min(x["end"], prov["end"]) - max(x["start"], prov["start"]))
            character = t["spec"]["character"]
            words = shot.prompt.replace(",", " ").split()
            words_right += sum(character[k] in words for k in ("shape", "colour"))
            total += 2
            descriptions.add(shot.prompt.split(" in a ")[0])
        assert len(descriptions) == 1  # captioned as a group: one description of the character a scene
    assert words_right / total >= 0.9
    assert (out / "report.html").is_file() and (out / "report" / "film-7.png").is_file()
    from helpers import chromium, dump_dom

    if chromium() is not None:  # the report's contact sheet loads in a browser
        assert 'data-images-ok="1"' in dump_dom(out / "report.html", tmp_path / "chrome")
    # a second run keeps the finished video as it is
    before = (out / "videos" / "film-7.json").stat().st_mtime_ns
    curate([path], out, CurateConfig.model_validate(SYNTH), progress=False)
    assert (out / "videos" / "film-7.json").stat().st_mtime_ns == before


def test_bad_videos_are_reported_and_the_good_one_is_curated(film, tmp_path):
    path, _ = film
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(path, src / "good.mp4")
    (src / "empty.mp4").write_bytes(b"")
    (src / "notes.mp4").write_text("not a video at all\n")
    data = path.read_bytes()
    (src / "truncated.mp4").write_bytes(data[: len(data) // 2])
    # one long shot: no cut, so no multi-shot sample (and a clear reason)
    frames = torch.linspace(0, 1, 40).view(40, 1, 1, 1).expand(40, 3, 32, 32)
    write_video(src / "onecut.mp4", frames, fps=12)
    r = CliRunner().invoke(app, ["curate", str(src), "-o", str(tmp_path / "ds"), "--quiet", "--workers", "1",
                                 "--set", "captions.captioner=none", "--set", "filters.people_detector=none",
                                 "--set", "shots.detector=pyscenedetect"])
    assert r.exit_code == 0, r.output
    recs = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "ds" / "videos").glob("*.json")}
    assert recs["good"]["status"] == "done" and recs["good"]["samples"]
    assert "empty file" in recs["empty"]["error"]
    assert "not a readable video" in recs["notes"]["error"] and "not a readable video" in recs["truncated"]["error"]
    assert recs["onecut"]["status"] == "done" and not recs["onecut"]["samples"]
    assert recs["onecut"]["shots"][0]["dropped"].startswith("a scene of 1 shot")
    assert "skipped:" in r.output and "empty file" in r.output
    html = (tmp_path / "ds" / "report.html").read_text()
    assert "empty file" in html and "good" in html
    # a second run tries none of them again, the unusable ones included
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ds" / "videos").glob("*.json")}
    r = CliRunner().invoke(app, ["curate", str(src), "-o", str(tmp_path / "ds"), "--quiet", "--workers", "1",
                                 "--set", "captions.captioner=none", "--set", "filters.people_detector=none",
                                 "--set", "shots.detector=pyscenedetect"])
    assert r.exit_code == 0 and stamps == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ds" / "videos").glob("*.json")}
    # a damaged record is redone; so is a video curated with other settings
    (tmp_path / "ds" / "videos" / "good.json").write_text("{not json")
    r = CliRunner().invoke(app, ["curate", str(src / "good.mp4"), "-o", str(tmp_path / "ds"), "--quiet",
                                 "--set", "captions.captioner=none", "--set", "filters.people_detector=none",
                                 "--set", "shots.detector=pyscenedetect"])
    assert r.exit_code == 0 and json.loads((tmp_path / "ds" / "videos" / "good.json").read_text())["status"] == "done"
    r = CliRunner().invoke(app, ["curate", str(src / "good.mp4"), "-o", str(tmp_path / "ds"), "--quiet",
                                 "--set", "captions.captioner=none", "--set", "filters.people_detector=none",
                                 "--set", "shots.detector=pyscenedetect", "--set", "filters.min_shot_seconds=0.5"])
    redone = json.loads((tmp_path / "ds" / "videos" / "good.json").read_text())
    assert r.exit_code == 0 and redone["config"]["filters"]["min_shot_seconds"] == 0.5


def test_crowded_shots_are_dropped_by_a_plugged_in_people_detector(tmp_path):
    """Two shots of one scene, the second with four white squares: with max_people 3 it is dropped."""
    rng = np.random.default_rng(0)
    base = torch.from_numpy(rng.uniform(0.2, 0.6, (3, 64, 64))).float()
    first = base.expand(24, 3, 64, 64).clone()
    second = torch.from_numpy(rng.uniform(0.0, 0.5, (3, 64, 64))).float().expand(24, 3, 64, 64).clone()
    for x in (0, 16, 32, 48):
        second[:, :, 8:16, x:x + 8] = 1.0
    write_video(tmp_path / "crowd.mp4", torch.cat([first, second]), fps=12)
    cfg = CurateConfig.model_validate({"filters": {"people_detector": "helpers:bright_blob_counter", "max_people": 3},
                                       "shots": {"detector": "pyscenedetect"}})
    [rec] = curate([tmp_path / "crowd.mp4"], tmp_path / "ds", cfg, progress=False)
    people = [s["people"] for s in rec["shots"]]
    assert people == [0, 4] and rec["shots"][1]["dropped"] == "4 people (more than 3)"


def test_frame_stream_reports_where_decoding_stopped(film, tmp_path):
    path, truth = film
    data = path.read_bytes()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(data[:200] + bytes(len(data) - 200))  # the header kept, the rest zeroed
    stream = FrameStream(bad)
    n = sum(1 for _ in stream)
    assert n < truth["frames"] and (stream.error is None or "decoding stopped" in stream.error)


def test_group_answers_are_parsed_or_rejected_with_the_reason():
    from filmweaver.curate.captions import CaptionError, parse_group_answer

    answer = ('Here you are: {"characters": [{"name": "Mara", "description": "a woman in a red coat"}], '
              '"shots": ["Mara walks in.", "A street at night.", "Mara looks up at Mara\'s window."]} done')
    caps = parse_group_answer(answer, 3)
    assert caps.characters == [{"name": "Mara", "description": "a woman in a red coat"}]
    assert caps.shot_characters == [["Mara"], [], ["Mara"]]
    assert caps.entity_schedule() == {"1:1": {"characters": ["Mara"]}, "1:3": {"characters": ["Mara"]}}
    with pytest.raises(CaptionError, match="described 1 shots, not 3"):
        parse_group_answer('{"shots": ["one"]}', 3)
    with pytest.raises(CaptionError, match="not the JSON asked for"):
        parse_group_answer("three people walk", 3)


def test_a_transformers_vlm_captions_and_validates_through_the_pipeline(film, tmp_path):
    """A tiny random LLaVA: the real model is asked (group prompt, then validation); its untrained
    answers are not the JSON asked for, so every scene is dropped and the report says why."""
    from helpers import tiny_vlm

    from filmweaver.curate.captions import VLMCaptioner

    model = tiny_vlm(tmp_path / "vlm")
    vlm = VLMCaptioner(model)
    frames = torch.rand(2, 3, 40, 48)
    answer = vlm.ask(list(frames), "describe", max_new_tokens=6)
    assert isinstance(answer, str) and answer
    path, _ = film
    cfg = CurateConfig.model_validate({**SYNTH, "captions": {"captioner": model, "max_new_tokens": 8},
                                       "shots": {"detector": "pyscenedetect"}})
    [rec] = curate([path], tmp_path / "ds", cfg, progress=False)
    in_scenes = [s for s in rec["shots"] if s["scene"] is not None and not s["dropped"].startswith("a scene of")]
    assert in_scenes and all(s["dropped"].startswith("captioning failed: the captioner's answer is not the JSON")
                             for s in in_scenes)
    assert not rec["samples"]
    # validation on its own: the verdict follows the model's answer (greedy: the same answer twice)
    from filmweaver.curate.config import Captions

    cfg = Captions(max_new_tokens=4)
    answer = vlm.ask(list(frames), cfg.validate_prompt.format(caption="a caption"), cfg.max_new_tokens)
    verdict = vlm.validate(frames, "a caption", cfg)
    if answer.lower().startswith("yes"):
        assert verdict.caption == "a caption" and verdict.note == "ok"
    elif answer.lower().startswith("no"):
        assert verdict.note.startswith(("refined:", "the model says"))
    else:
        assert verdict.caption is None and verdict.note == f"unreadable validation answer: {answer[:60]!r}"


@pytest.mark.slow
def test_curation_on_a_local_ray_instance_matches_the_process(film, tmp_path):
    """Two films through Ray Data (a local Ray, one actor per video) give the records one process gives."""
    path, _ = film
    second = tmp_path / "second.mp4"
    shutil.copy(path, second)
    cfg = CurateConfig.model_validate({**SYNTH, "workers": 2, "shots": {"detector": "pyscenedetect"}})
    with_ray = curate([path, second], tmp_path / "ray", cfg, progress=False, ray_address="local")
    alone = curate([path], tmp_path / "one", cfg.model_copy(update={"workers": 1}), progress=False)
    assert [r["status"] for r in with_ray] == ["done", "done"]
    strip = lambda r: [(s["start"], s["end"], s["scene"], s["dropped"], s["caption"]) for s in r["shots"]]  # noqa: E731
    assert strip(with_ray[0]) == strip(alone[0]) == strip(with_ray[1])
    assert len(list(read_samples(tmp_path / "ray"))) == 2 * len(alone[0]["samples"])


def test_samples_can_carry_the_models_latents_and_prompt_embeddings(curated_film, tmp_path):
    """latents.model=synth: each shot's VAE latents at the built-in model's 64x64 and each prompt's
    embedding, in the sample, equal to what the model computes from the clip itself."""
    from filmweaver.models import load_models

    sample = next(read_samples(curated_film))
    models = load_models("synth")
    assert sorted(sample["latents"]) == [f"shot_{i + 1:03d}" for i in range(len(sample["clips"]))]
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(sample["clips"][0])
    frames, _ = read_video(clip)
    assert frames.shape[-2:] == (96, 128)  # 4:3 clips at the model's 1:1: scaled to 64 x 85, the middle 64 columns
    frames = torch.nn.functional.interpolate(frames, size=(64, 85), mode="bilinear", antialias=True, align_corners=False)
    frames = frames[..., 10:74]
    expected = models.codec.encode(frames.permute(1, 0, 2, 3)[None])[0]
    torch.testing.assert_close(sample["latents"]["shot_001"], expected, rtol=1e-4, atol=1e-4)
    prompt = parse_story(sample["script"]).shots()[0].prompt
    torch.testing.assert_close(sample["text"]["shot_001"], models.prompt_encoder.encode([prompt])[0].float())


def test_static_and_duplicate_filters_are_optional_and_say_why():
    from filmweaver.curate import filters as F
    from filmweaver.curate.config import Filters

    still = torch.full((3, 3, 16, 16), 0.5)
    moving = torch.stack([torch.full((3, 16, 16), v) for v in (0.2, 0.5, 0.8)])
    assert F.is_static(still, Filters()) is None  # off by default
    on = Filters(drop_static=True, drop_duplicates=True)
    assert F.is_static(still, on).startswith("static (change 0.0000") and F.is_static(moving, on) is None
    e = torch.nn.functional.normalize(torch.tensor([1.0, 0.1]), dim=0)
    kept = [(3, torch.tensor([1.0, 0.0])), (5, torch.tensor([0.0, 1.0]))]
    assert F.duplicate_of(e, kept, on).startswith("near-duplicate of shot 3 (cosine 0.995")
    assert F.duplicate_of(torch.nn.functional.normalize(torch.tensor([1.0, 1.0]), dim=0), kept, on) is None
    assert F.too_short(11, 12.0, Filters()) == "shorter than 1 s (0.92 s)" and F.too_short(12, 12.0, Filters()) is None
    assert F.too_crowded([1, 4, 2], Filters()) == "4 people (more than 3)" and F.too_crowded([3], Filters()) is None


def read_video_bytes(data: bytes) -> torch.Tensor:
    from filmweaver.train.curated import _decode

    return _decode(data)


def _curated_train_config(dataset, out, steps=8, **dit):
    return {"output_dir": str(out), "mixed_precision": "no", "log_every": 2, "checkpoint_every": 3,
            "model": {"kind": "synth-small"}, "data": {"kind": "curated", "path": str(dataset)},
            "vae": {"init_from": "builtin"}, "embedder": {"init_from": "builtin"}, "probe": None,
            "dit": {"init_from": "builtin", "lora": {"rank": 4}, "batch_size": 2, "warmup_steps": 1, "max_memory": 2,
                    "stages": [{"name": "memory", "steps": steps,
                                "modes": {"text": 0.25, "temporal": 0.25, "shot": 0.25, "both": 0.25}}], **dit}}


def test_train_a_memory_lora_on_a_curated_dataset_resume_and_generate(curated_film, tmp_path):
    """The path from footage to a model on the CPU: curate a synthetic film (latents precomputed by the
    built-in model), a few LoRA steps of the built-in model on its scenes (the loss falls on a fixed
    batch), a run killed mid-training resumes to the uninterrupted run's weights, and the trained model
    generates a curated scene's script."""
    from safetensors.torch import load_file

    from filmweaver.models import load_models
    from filmweaver.train.config import TrainConfig
    from filmweaver.train.curated import load_curated
    from filmweaver.train.data import LatentStore
    from filmweaver.train.dit import CacheGuidedDenoiser
    from filmweaver.train.run import run_training

    ds = curated_film
    models = load_models("synth")
    latents, table, info = load_curated(ds, models.codec, (64, 64), min_length=4, progress=False)
    assert info["latents"]["precomputed"] == info["shots"] >= 2 and info["latents"]["encoded"] == 0
    assert len(set(table.shot_story.tolist())) == info["samples"] and table.cast_names  # scenes, names from schedules
    # without precomputed latents the clips are encoded the same way (shards' mp4s decoded here)
    again, _, info2 = load_curated(ds, type("Other", (), {"fingerprint": lambda self: "other", "encode": models.codec.encode,
                                                          "device": models.codec.device})(),
                                   (64, 64), min_length=4, progress=False)
    assert info2["latents"]["encoded"] == info["shots"]
    torch.testing.assert_close(again, latents, rtol=1e-4, atol=1e-4)

    # the loss falls on a fixed batch, LoRA parameters only
    store = LatentStore(latents, table)
    batch = store.sample("shot", 2, 4, 0, 2, np.random.default_rng(0))
    tr = models.backbone.transformer
    from peft import LoraConfig

    tr.requires_grad_(False)
    tr.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    module = CacheGuidedDenoiser(models.backbone, models.prompt_encoder.text_encoder)
    models.prompt_encoder.text_encoder.requires_grad_(False)
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    # the adapter and the backbone's memory projections (context, entity tags, entity and text slots), saved beside it
    memory = ("context_proj", "entity_proj", "slot_proj", "text_slot_proj")
    assert any("lora_" in n for n in names) and all("lora_" in n or n.split(".")[1] in memory for n in names), names[:5]
    trainable = [p for p in module.parameters() if p.requires_grad]
    from filmweaver.train.dit import build_context

    ids, mask = models.prompt_encoder.tokenize([table.prompts[i] for i in batch.shot_index])
    torch.manual_seed(0)
    eps, s = torch.randn_like(batch.target), torch.full((2,), 0.5)
    x_t = (1 - s.view(-1, 1, 1, 1, 1)) * batch.target + s.view(-1, 1, 1, 1, 1) * eps
    ctx = build_context(batch, [(1, 2)], torch.full((2,), 100.0), None)
    opt = torch.optim.Adam(trainable, lr=1e-2)
    losses = []
    for _ in range(12):
        loss = (module(x_t, s * 1000, ids, mask, ctx) - (eps - batch.target)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]

    # `filmweaver train` on the dataset; a run killed at step 5 (its checkpoint: step 3) resumes to the same weights
    # (later shots drawn with name-only prompts, augment.unrestate: embedded once, as the frozen encoder's are)
    unrestate = {"augment": {"unrestate": 0.5}}
    whole = TrainConfig.model_validate(_curated_train_config(ds, tmp_path / "whole", **unrestate))
    summary = run_training(whole, progress=False)
    assert summary["data"]["kind"] == "curated" and summary["dit"]["steps"] == 8
    # every later shot of a scene has one ("Character 1 in a ..."), no first shot has one
    assert summary["unrestated_shots"] == summary["data"]["shots"] - summary["data"]["samples"] > 0
    table = json.loads((tmp_path / "whole" / "latents.json").read_text())["table"]
    firsts = [i == 0 or table[i - 1]["story"] != r["story"] for i, r in enumerate(table)]
    assert all((r["unrestated"] is None) == f for r, f in zip(table, firsts, strict=True))
    assert all(r["unrestated"].startswith("Character 1 in a ") for r in table if r["unrestated"])
    killed = TrainConfig.model_validate(_curated_train_config(ds, tmp_path / "killed", **unrestate))
    import filmweaver.train.dit as dit_module

    real_update, calls = dit_module.EMA.update, {"n": 0}

    def dies_at_step_5(self):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("killed")
        real_update(self)

    dit_module.EMA.update = dies_at_step_5
    try:
        with pytest.raises(KeyboardInterrupt):
            run_training(killed, progress=False)
    finally:
        dit_module.EMA.update = real_update
    assert json.loads((tmp_path / "killed" / "checkpoint" / "state.json").read_text())["step"] == 3
    run_training(killed, progress=False)
    a = load_file(str(tmp_path / "whole" / "model" / "transformer" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model" / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(x)["step"] for x in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()]
    assert log == [2, 4, 6, 8]  # the lines after the checkpoint were trained, and logged, once more
    # the trained model generates a curated scene
    script = tmp_path / "scene.json"
    script.write_text(json.dumps(next(read_samples(ds))["script"]))
    res = CliRunner().invoke(app, ["generate", str(script), "-o", str(tmp_path / "film"), "--model",
                                   str(tmp_path / "whole" / "model"), "--steps", "2", "--max-shots", "2"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "film" / "shots").is_dir()


def _generate_scene_with_lora(base, dataset, lora, tmp_path, flag="--lora", shots=2) -> dict:
    """`filmweaver generate` of the dataset's first scene on ``base`` with ``lora`` (``flag``: --lora or
    --lora-2); the project's manifest."""
    script = tmp_path / "scene.json"
    script.write_text(json.dumps(next(read_samples(dataset))["script"]))
    res = CliRunner().invoke(app, ["generate", str(script), "-o", str(tmp_path / "film"), "--model", str(base),
                                   flag, str(lora), "--steps", "2", "--max-shots", str(shots)])
    assert res.exit_code == 0, res.output
    return json.loads((tmp_path / "film" / "manifest.json").read_text())


def _wan_lora_config(base, dataset, out, checkpoint_every=10, data=None, **dit):
    """A few LoRA steps on a tiny pretrained-layout model over a curated dataset (the Wan path's tests)."""
    return {"output_dir": str(out), "mixed_precision": "no", "log_every": 2, "checkpoint_every": checkpoint_every,
            "model": {"kind": "pretrained", "path": str(base)},
            "data": {"kind": "curated", "path": str(dataset), **(data or {"height": 32, "width": 32})},
            "vae": None, "embedder": None, "probe": None,
            "dit": {"lora": {"rank": 4}, "batch_size": 2, "warmup_steps": 1, "max_memory": 2, "chunk_frames": 2,
                    "temporal_schedule": [[1, 1]],
                    "stages": [{"name": "memory", "steps": 4, "modes": {"shot": 0.5, "both": 0.5}}], **dit}}


def test_a_tiny_random_wan_learns_a_memory_lora_from_curated_scenes_that_generate_loads(curated_film, tmp_path):
    """The Wan path (a causal video VAE with 4x temporal compression: memory takes first latent
    frames): `model.kind: pretrained` on a curated dataset whose clips are encoded by the trainer, a
    LoRA file in diffusers' layout that `filmweaver generate --lora` puts on the base model."""
    from filmweaver.models import load_models
    from filmweaver.train.config import TrainConfig
    from filmweaver.train.run import run_training

    ds = curated_film  # its precomputed latents are the built-in VAE's: this VAE encodes the clips itself
    base = tmp_path / "tiny-wan"
    load_models("tiny").save_pretrained(base)
    cfg = _wan_lora_config(base, ds, tmp_path / "run", checkpoint_every=3)
    summary = run_training(TrainConfig.model_validate(cfg), progress=False)
    assert summary["data"]["latents"]["encoded"] == summary["data"]["shots"] >= 2
    from filmweaver.backbone.vae import latent_frame_count

    clips = [len(read_video_bytes(c)) for sample in read_samples(ds) for c in sample["clips"]]
    assert summary["data"]["latent_frames"] == sum(latent_frame_count(n) for n in clips)  # 4x in time, causal
    lora = tmp_path / "run" / "model" / "lora" / "pytorch_lora_weights.safetensors"
    assert lora.is_file() and (lora.parent / "context_projections.safetensors").is_file()
    assert not (tmp_path / "run" / "model" / "transformer").exists()  # the base is the user's: not copied
    from filmweaver.backbone.lora import lora_file_settings

    assert lora_file_settings(lora) == {"alpha": 4.0, "use_rslora": True}  # StoryMem's scale, recorded
    manifest = _generate_scene_with_lora(base, ds, lora, tmp_path)
    assert manifest["model"]["setup"]["lora"] == str(lora) and len(manifest["shots"]) == 2
    # a curated dataset cannot train a synthetic VAE from scratch: one line naming the setting
    bad = TrainConfig.model_validate({**cfg, "model": {"kind": "synth-small"}, "vae": {}, "output_dir": str(tmp_path / "x")})
    with pytest.raises(ValueError, match="vae.init_from"):
        run_training(bad, progress=False)


def test_curated_latents_are_written_shot_by_shot_and_read_memory_mapped(curated_film, tmp_path):
    """The trainer's latents file: rows as the in-memory path gives them, read back memory-mapped (a
    batch reads only its rows), reused by the next run, and made again when damaged."""
    import numpy as np

    from filmweaver.models import load_models
    from filmweaver.train.curated import load_curated
    from filmweaver.train.data import LatentStore

    codec = load_models("synth").codec
    in_memory, table, info = load_curated(curated_film, codec, (64, 64), min_length=4, progress=False)
    cache = tmp_path / "latents.bin"
    mapped, table2, info2 = load_curated(curated_film, codec, (64, 64), min_length=4, cache=cache, progress=False)
    assert torch.equal(mapped, in_memory)
    from pathlib import Path

    assert str(cache) in Path("/proc/self/maps").read_text()  # the rows stay in the file, mapped, not copied
    assert info2 == info and table2.prompts == table.prompts
    assert cache.stat().st_size == in_memory.numel() * 2 and not cache.with_name("latents.bin.partial").exists()
    # a store over the mapped file sends each batch's rows to the device, in the store's dtype
    batch = LatentStore(mapped, table2, dtype=torch.float32).sample("shot", 2, 4, 0, 2, np.random.default_rng(0))
    assert batch.target.dtype == torch.float32 and batch.memory is not None
    # the next run reads the file (nothing is decoded or encoded: a codec that cannot encode is fine)
    class NoEncode:
        def fingerprint(self):
            return codec.fingerprint()

        def encode(self, *_):
            raise AssertionError("encoded again")

    again, _, _ = load_curated(curated_film, NoEncode(), (64, 64), min_length=4, cache=cache, progress=False)
    assert torch.equal(again, in_memory)
    # a truncated file (a copy cut short) does not match its description: made again
    with open(cache, "r+b") as f:
        f.truncate(cache.stat().st_size - 10)
    redone, _, _ = load_curated(curated_film, codec, (64, 64), min_length=4, cache=cache, progress=False)
    assert torch.equal(redone, in_memory) and cache.stat().st_size == in_memory.numel() * 2


def test_training_logs_to_tensorboard_and_a_missing_tracker_is_named(curated_film, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from filmweaver.models import FilmModels
    from filmweaver.train.config import TrainConfig
    from filmweaver.train.run import run_training

    base = tmp_path / "tiny-wan"
    FilmModels.tiny().save_pretrained(base)
    cfg = {**_wan_lora_config(base, curated_film, tmp_path / "run"), "trackers": ["tensorboard"]}
    run_training(TrainConfig.model_validate(cfg), progress=False)
    events = list((tmp_path / "run" / "trackers").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent)).Reload()
    logged = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    scalars = acc.Scalars("dit/loss")
    assert [e.step for e in scalars] == [r["step"] for r in logged] == [2, 4]
    assert scalars[-1].value == pytest.approx(logged[-1]["loss"], rel=1e-5)
    import importlib.util

    if importlib.util.find_spec("wandb") is None:  # not in the dev install: named before anything trains
        with pytest.raises(ValueError, match="trackers: wandb is not installed"):
            run_training(TrainConfig.model_validate({**cfg, "trackers": ["wandb"], "output_dir": str(tmp_path / "w")}),
                         progress=False)


def test_frames_meet_a_resolution_without_stretching_and_scenes_find_their_aspect_bucket():
    from filmweaver.curate.latents import fit_frames
    from filmweaver.train.curated import nearest_bucket

    tall = torch.zeros(1, 3, 64, 32)
    tall[..., 24:40, 8:24] = 1.0  # a 16x16 square in the middle
    wide = fit_frames(tall, (16, 32))  # scaled to 64 x 128 wide... then cut to 16 x 32 in the middle: the square
    assert wide.shape == (1, 3, 16, 32)
    square = fit_frames(tall, (32, 32))[0, 0]  # scaled to 32 wide (64 tall), the middle 32 rows kept
    assert square.shape == (32, 32) and torch.allclose(square[8:24, 8:24], torch.ones(16, 16), atol=0.05)
    assert square[:4].max() < 0.05  # not stretched: the square stays a square, the empty top is cut
    buckets = [(480, 832), (832, 480), (624, 624)]
    assert nearest_bucket((1080, 1920), buckets) == (480, 832) and nearest_bucket((1920, 1080), buckets) == (832, 480)
    assert nearest_bucket((600, 640), buckets) == (624, 624)


def _mixed_aspect_dataset(curated, out):
    """The curated film's scenes twice: as they are (4:3) and with their clips made 2:1 wide."""
    from filmweaver.curate.dataset import ShardWriter
    from filmweaver.io import write_json, write_video

    writer = ShardWriter(out / "shards", "mixed", 2)
    n = 0
    for sample in read_samples(curated):
        for wide in (False, True):
            clips = []
            for i, clip in enumerate(sample["clips"]):
                path = out / "clips" / f"{n}-{i}.mp4"
                path.parent.mkdir(parents=True, exist_ok=True)
                frames = read_video_bytes(clip)
                if wide:
                    frames = torch.nn.functional.interpolate(frames, size=(48, 96), mode="bilinear")
                write_video(path, frames, 12.0)
                clips.append(path)
            script = {**sample["script"], "story_name": sample["script"]["story_name"] + ("-wide" if wide else "")}
            writer.add(script, clips, sample["provenance"])
            n += 1
    writer.close()
    write_json(out / "index.json", {"samples": n})
    return out


def test_aspect_buckets_train_each_scene_at_its_own_shape(curated_film, tmp_path):
    """data.buckets: square scenes at 32x32, wide ones at 32x64, each bucket's latents in its own file; a
    batch is one bucket's, its shot indices global, so prompts and memory sources stay right."""
    import numpy as np

    from filmweaver.models import FilmModels
    from filmweaver.train.config import TrainConfig
    from filmweaver.train.data import BucketedStore
    from filmweaver.train.run import _curated_store, run_training

    ds = _mixed_aspect_dataset(curated_film, tmp_path / "mixed")
    base = tmp_path / "tiny-wan"
    FilmModels.tiny().save_pretrained(base)
    cfg = _wan_lora_config(base, ds, tmp_path / "run", data={"buckets": [[32, 32], [32, 64]]})
    summary = run_training(TrainConfig.model_validate(cfg), progress=False)
    buckets = summary["data"]["buckets"]
    assert buckets["32x32"]["samples"] > 0 and buckets["32x64"]["samples"] > 0, buckets
    assert (tmp_path / "run" / "latents-32x32.bin").is_file() and (tmp_path / "run" / "latents-32x64.bin").is_file()
    assert summary["dit"]["steps"] == 4
    # the store itself: each batch from one bucket, its latents that bucket's shape
    models = FilmModels.from_pretrained(str(base))
    table, store = _curated_store(TrainConfig.model_validate(cfg), models, tmp_path / "run", torch.device("cpu"),
                                  torch.float32, {}, False)
    assert isinstance(store, BucketedStore) and len(table.prompts) == sum(s.data.num_shots for s in store.stores)
    rng, widths = np.random.default_rng(0), set()
    for _ in range(12):
        b = store.sample("shot", 2, 2, 0, 2, rng)
        widths.add(b.target.shape[-1])
        k = int(np.searchsorted(store.offsets, int(b.shot_index[0]), side="right")) - 1
        local = b.shot_index - int(store.offsets[k])
        assert (local >= 0).all() and (local < store.stores[k].data.num_shots).all()
        assert b.target.shape[-1] == store.stores[k].latents.shape[-1]
        src = b.memory_source - int(store.offsets[k])  # memory from the same bucket's scenes
        assert (src >= 0).all() and (src < store.stores[k].data.num_shots).all()
    assert len(widths) == 2  # both buckets drawn


def tiny_ti2v_models():
    """A tiny random model in Wan2.2-TI2V-5B's layout: 48 latent channels, a residual VAE with 2x2 patches
    (16x in space), a transformer of 48 in/out channels (configs/lora-wan2.2-ti2v-5b.yaml's shape)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from filmweaver.backbone.vae import LatentCodec
    from filmweaver.backbone.wan import ContextWanTransformer
    from filmweaver.models import FilmModels, transformer_shape

    models = FilmModels.tiny()
    torch.manual_seed(0)
    models.backbone = ContextWanTransformer(WanTransformer3DModel(**{**transformer_shape("tiny"), "in_channels": 48,
                                                                     "out_channels": 48}).eval())
    models.codec = LatentCodec(AutoencoderKLWan(
        base_dim=8, decoder_base_dim=8, z_dim=48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12, patch_size=2,
        scale_factor_spatial=16, latents_mean=[0.0] * 48, latents_std=[1.0] * 48))
    return models


def test_a_tiny_ti2v_5b_layout_trains_a_memory_lora_and_generates_with_it(curated_film, tmp_path):
    """The 5B path on the CPU: 48-channel latents at 16x in space, encoded by the trainer from the
    curated clips; the LoRA file then goes on the base with generate --lora."""
    from filmweaver.train.config import TrainConfig
    from filmweaver.train.run import run_training

    base = tmp_path / "tiny-ti2v"
    tiny_ti2v_models().save_pretrained(base)
    cfg = _wan_lora_config(base, curated_film, tmp_path / "run", data={"height": 64, "width": 64},
                           gradient_checkpointing=True)
    summary = run_training(TrainConfig.model_validate(cfg), progress=False)
    assert summary["dit"]["steps"] == 4 and summary["data"]["latents"]["encoded"] == summary["data"]["shots"]
    assert np.isfinite(summary["dit"]["final_loss"])
    lora = tmp_path / "run" / "model" / "lora" / "pytorch_lora_weights.safetensors"
    manifest = _generate_scene_with_lora(base, curated_film, lora, tmp_path)
    assert manifest["model"]["setup"]["lora"] == str(lora) and len(manifest["shots"]) == 2


def test_one_expert_of_an_a14b_trains_its_own_lora_in_its_noise_range(curated_film, tmp_path, monkeypatch):
    """Wan2.2 A14B: one LoRA per expert (as StoryMem ships two files). dit.expert=low_noise trains
    `transformer_2` only, on noise levels below the boundary; generate --lora-2 puts the file on it."""
    import filmweaver.train.dit as dit_module
    from filmweaver.backbone.experts import ExpertSwitch
    from filmweaver.models import FilmModels
    from filmweaver.train.config import TrainConfig
    from filmweaver.train.run import run_training

    a14b = tmp_path / "a14b"
    models = FilmModels.tiny(seed=0)
    models.backbone = ExpertSwitch(models.backbone, FilmModels.tiny(seed=1).backbone, boundary_ratio=0.875)
    models.save_pretrained(a14b)
    drawn, real = [], dit_module.sample_timesteps

    def recorded(*args, **kwargs):
        drawn.append(real(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(dit_module, "sample_timesteps", recorded)
    cfg = _wan_lora_config(a14b, curated_film, tmp_path / "run", expert="low_noise")
    run_training(TrainConfig.model_validate(cfg), progress=False)
    only = FilmModels.from_pretrained(str(a14b), only_expert="low_noise").backbone  # what the run loaded
    assert only.high_noise is None and only.experts == [only.low_noise]
    noise = torch.cat(drawn)
    assert noise.numel() == 8 and float(noise.max()) < 0.875 and float(noise.min()) > 0
    lora = tmp_path / "run" / "model" / "lora" / "pytorch_lora_weights.safetensors"
    manifest = _generate_scene_with_lora(a14b, curated_film, lora, tmp_path, flag="--lora-2", shots=1)
    assert manifest["model"]["setup"]["lora_2"] == str(lora) and len(manifest["shots"]) == 1
    # an A14B without dit.expert: one line naming the setting
    both = {**cfg, "output_dir": str(tmp_path / "both"), "dit": {**cfg["dit"], "expert": None}}
    with pytest.raises(ValueError, match="dit.expert"):
        run_training(TrainConfig.model_validate(both), progress=False)


def test_sampled_noise_levels_within_a_range_keep_the_shifted_density():
    from filmweaver.train.dit import sample_timesteps

    torch.manual_seed(0)
    everywhere = sample_timesteps(200_000, 3.0, "cpu")
    high = sample_timesteps(50_000, 3.0, "cpu", within=(0.875, 1.0))
    assert float(high.min()) >= 0.875 and float(high.max()) < 1.0
    # the same distribution, conditioned on the range
    inside = everywhere[everywhere >= 0.875]
    assert abs(float(high.mean()) - float(inside.mean())) < 2e-3


def test_every_shipped_training_config_parses():
    """configs/*.yaml are the documented recipes: each must load as a training config."""
    from pathlib import Path

    from filmweaver.train.config import load_train_config

    configs = sorted(Path("configs").glob("*.yaml"))
    assert any(c.name.startswith("lora-wan") for c in configs)
    for c in configs:
        cfg = load_train_config(c)
        assert cfg.output_dir.startswith("runs/"), c
    wan = load_train_config("configs/lora-wan2.1-t2v-1.3b.yaml")
    assert wan.data.kind == "curated" and wan.model.kind == "pretrained" and wan.dit.lora.rank == 128


def test_the_camera_probe_fine_tunes_the_attribute_probe_on_framed_frames(tmp_path):
    """The synthetic captioner's probe for curated footage: feature-film frames as the editor's camera
    frames them, with their truth; the built-in probe fine-tuned on them, checked on other films and
    read by the captioner."""
    from filmweaver.synth.captioner import probe_captioner, train_camera_probe
    from filmweaver.synth.feature_film import camera_frames, plan_film
    from filmweaver.synth.world import ALL_ATTRIBUTES, frame_labels

    frames, labels = camera_frames([3], per_shot=2)
    shots = plan_film(3)[0]
    assert frames.shape[1:] == (96, 128, 3) and len(frames) == len(labels) == 2 * len(shots)
    assert labels[-1].tolist() == list(frame_labels(shots[-1].spec).values())
    metrics = train_camera_probe(tmp_path / "camera", films=1, steps=2, held_out=1, progress=False)
    assert set(metrics["camera_probe"]["clean"]) == set(ALL_ATTRIBUTES) and "vae" not in metrics["camera_probe"]
    captioner = probe_captioner(probe=tmp_path / "camera")
    read = captioner.read(torch.from_numpy(frames[:4]).permute(0, 3, 1, 2).float() / 255.0)
    assert set(read) == set(ALL_ATTRIBUTES) and all(v in ALL_ATTRIBUTES[k] for k, v in read.items())


def test_pyscenedetect_takes_its_edge_weight_from_the_config():
    """`shots.edge_weight` reaches PySceneDetect's AdaptiveDetector (cuts between two framings of one
    place change shapes more than colours); a negative weight is a config error."""
    from pydantic import ValidationError

    from filmweaver.curate.config import ShotDetection
    from filmweaver.curate.shots import make_shot_detector

    detector = make_shot_detector(ShotDetection(detector="pyscenedetect", edge_weight=1.0))
    assert isinstance(detector, SceneDetectDetector) and detector.edge_weight == 1.0
    with pytest.raises(ValidationError, match="edge_weight"):
        ShotDetection(detector="pyscenedetect", edge_weight=-1.0)


def test_a_later_shot_can_name_a_character_its_caption_describes():
    """augment.unrestate's prompts: the scene sheet's description, where a caption states it verbatim,
    becomes the bare name (the captioner's "Name, description" and a VLM's description after the name)."""
    from filmweaver.train.curated import unrestated_prompt

    sheet = [{"name": "Character 1", "description": "Character 1, a red round creature with dots"}]
    assert unrestated_prompt("Character 1, a red round creature with dots in a forest at night.", sheet) == \
        "Character 1 in a forest at night."
    two = [{"name": "Ada", "description": "a tall woman in a red coat"},
           {"name": "Bo", "description": "a small dog."}]
    assert unrestated_prompt("Ada, a tall woman in a red coat, walks Bo, a small dog, home.", two) == "Ada walks Bo home."
    assert unrestated_prompt("Ada walks home.", two) is None  # nothing described: no variant
    assert unrestated_prompt("A street at night.", []) is None


def test_the_truth_dataset_is_the_films_true_scenes_in_the_curated_format(film, tmp_path):
    """The closed loop's reference: the film cut at its true shots, grouped by its true scenes, captioned
    with its true attributes, in the curated format."""
    from filmweaver.synth.captioner import caption_words, states
    from filmweaver.synth.closed_loop import complete, truth_dataset
    from filmweaver.synth.world import ALL_ATTRIBUTES
    from filmweaver.train.config import load_train_config

    path, truth = film
    out = tmp_path / "truth"
    summary = truth_dataset([path], out)
    long_shots = [s for s in truth["shots"] if not s["short"]]
    scenes = {s["scene"] for s in long_shots if sum(t["scene"] == s["scene"] for t in long_shots) >= 2}
    assert summary == {"videos": 1, "samples": len(scenes),
                       "shots_in_samples": sum(s["scene"] in scenes for s in long_shots)}
    assert complete(out, [path]) and not complete(out, [path, path.with_name("other.mp4")])
    for sample in read_samples(out):
        shots = [truth["shots"][s["number"] - 1] for s in sample["provenance"]["shots"]]
        assert len({s["scene"] for s in shots}) == 1
        prompts = [s.prompt for s in parse_story(sample["script"]).shots()]
        for prompt, clip, shot in zip(prompts, sample["clips"], shots, strict=True):
            words, spec = caption_words(prompt), {**shot["spec"]["character"], **shot["spec"]["location"]}
            assert all(states(words, k, spec[k]) for k in ALL_ATTRIBUTES), prompt
            tmp = tmp_path / "clip.mp4"
            tmp.write_bytes(clip)
            assert read_video(tmp)[0].shape[0] == shot["end"] - shot["start"]

    cfg = load_train_config("configs/closed-loop.yaml")  # what trains on it (tiny runs: the LoRA test below)
    assert cfg.dit.augment.unrestate > 0 and cfg.data.kind == "curated" and cfg.vae.init_from == "builtin"
