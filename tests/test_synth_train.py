"""Synthetic world, training (smoke: loss decreases on a fixed batch), metrics and the built-in model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from filmweaver.eval.metrics import seam_ratio
from filmweaver.script import parse_story
from filmweaver.synth.architecture import synth_architecture
from filmweaver.synth.dataset import render_dataset
from filmweaver.synth.evaluate import summarize
from filmweaver.synth.stories import grammar_words, make_story, split_words, story_from_script
from filmweaver.synth.world import (
    COLOURS,
    COVERAGE_LAYERS,
    Character,
    Location,
    ShotSpec,
    render_shot,
    render_shot_with_mask,
)
from filmweaver.text import word_level_tokenizer


def test_render_is_deterministic_and_attributes_change_pixels():
    loc = Location("forest", "grass", "day", 3)
    spec = ShotSpec(Character("round", "red", "plain", "none"), loc, "medium", "pan_left", "walk", 6, seed=1)
    a, b = render_shot(spec), render_shot(spec)
    assert a.shape == (6, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert np.abs(a[0].astype(int) - a[-1].astype(int)).mean() > 0.5  # the camera moves
    blue = render_shot(ShotSpec(Character("round", "blue", "plain", "none"), loc, "medium", "pan_left", "walk", 6, seed=1))
    night = render_shot(ShotSpec(spec.character, Location("forest", "grass", "night", 3), "medium", "pan_left", "walk", 6, seed=1))
    assert not np.array_equal(a, blue) and not np.array_equal(a, night)


def test_paint_writes_what_a_full_frame_blend_would_to_the_bit():
    # the renderer paints by indexed writes; the data cache and every run since run 1 used a full-frame blend
    from filmweaver.synth.world import _paint

    rng = np.random.default_rng(0)
    img = rng.random((16, 16, 3), dtype=np.float32)
    mask = rng.random((16, 16)) < 0.4
    rgb = np.array((215, 40, 40)) * np.asarray((0.55, 0.6, 0.8), np.float32)  # a lit colour, as the renderer passes
    m = mask[..., None] * 1.0
    blend = (img * (1 - m) + np.asarray(rgb, dtype=np.float32)[None, None] / 255.0 * m).astype(np.float32)
    before = img.copy()
    _paint(img, mask, rgb)
    assert np.array_equal(img, blend)
    assert np.array_equal(img[~mask], before[~mask]) and np.allclose(img[mask], rgb / 255.0)


def test_box_mean_is_reshape_mean_to_the_bit():
    from filmweaver.synth.world import _box_mean

    rng = np.random.default_rng(1)
    img = rng.random((128, 96, 3), dtype=np.float32)
    assert np.array_equal(_box_mean(img, 2), img.reshape(64, 2, 48, 2, 3).mean(axis=(1, 3)))
    masks = rng.random((12, 9, 2)) < 0.5
    assert np.array_equal(_box_mean(masks, 3), masks.reshape(4, 3, 3, 3, 2).mean(axis=(1, 3)))


def test_coverage_layers_cover_exactly_the_character_and_the_props():
    loc = Location("village", "sand", "dusk", 7)
    kw = dict(framing="medium", camera="static", action="wave", num_frames=4, seed=2)
    red = ShotSpec(Character("square", "red", "plain", "hat"), loc, **kw)
    blue = ShotSpec(Character("square", "blue", "plain", "hat"), loc, **kw)
    (fr, cov), fb = render_shot_with_mask(red), render_shot(blue)
    assert COVERAGE_LAYERS == ("character", "props")
    assert np.array_equal(fr, render_shot(red)) and cov.shape == (4, 2, 64, 64) and cov.dtype == np.uint8
    char, props = cov[:, 0], cov[:, 1]
    changed = np.abs(fr.astype(int) - fb).max(-1) > 0  # where the colour shows, the character layer is set
    assert changed.any() and (char[changed] > 0).all()
    assert (fr[char == 0] == fb[char == 0]).all()  # outside it nothing depends on the character
    hat = render_shot_with_mask(ShotSpec(Character("square", "red", "plain", "none"), loc, **kw))[1][:, 0]
    assert (char > 0).sum() > (hat > 0).sum()  # the hat is part of the character
    wide = render_shot_with_mask(ShotSpec(red.character, loc, "wide", "static", "wave", 4, seed=2))[1][:, 0]
    close = render_shot_with_mask(ShotSpec(red.character, loc, "close", "static", "wave", 4, seed=2))[1][:, 0]
    assert (wide > 0).mean() < (char > 0).mean() < (close > 0).mean()
    # the props layer: where another location's props would differ, and never under the character
    forest = ShotSpec(red.character, Location("forest", "sand", "dusk", 7), **kw)
    ff = render_shot(forest).astype(int)
    differs = (np.abs(fr.astype(int) - ff).max(-1) > 0) & (char == 0)
    assert (props > 0).any() and (props[differs] > 0).mean() > 0.5
    assert ((props > 0) & (char == 255)).sum() == 0


def test_region_weighted_loss_counts_the_character_and_props_more():
    from filmweaver.train.data import LatentStore
    from filmweaver.train.dit import region_mse, region_weighted_mean

    def loss(v, *args):
        return region_weighted_mean((v - target).pow(2), *args)

    target = torch.zeros(2, 3, 4, 8, 8)
    cover = torch.zeros(2, 4, 2, 8, 8)
    cover[:, :, 0, 2:4, 2:4] = 1.0  # the character
    cover[:, :, 1, 0:1, 6:8] = 1.0  # a prop
    on_char, on_prop, off = target.clone(), target.clone(), target.clone()
    on_char[:, :, :, 2:4, 2:4] = 1.0
    on_prop[:, :, :, 0:1, 6:8] = 1.0
    on_prop[:, :, :, 7:8, 6:8] = 1.0  # two background pixels too: the same area as the character
    off[:, :, :, 5:7, 5:7] = 1.0  # the same error, on the background
    w = torch.tensor([3.0, 0.0])
    assert loss(on_char) == loss(off) == torch.nn.functional.mse_loss(off, target)
    assert loss(on_char, cover) == loss(off, cover)  # coverage without weights: the plain loss
    assert torch.isclose(loss(on_char, cover, w) / loss(off, cover, w), torch.tensor(4.0))
    assert torch.isclose(loss(on_prop, cover, w), loss(off, cover, w))  # props: weight 0
    w2 = torch.tensor([0.0, 1.0])
    assert torch.isclose(loss(on_prop, cover, w2) / loss(off, cover, w2), torch.tensor(1.5))
    # normalised: a uniform error keeps the plain loss's value
    assert torch.isclose(loss(torch.ones_like(target), cover, w), torch.tensor(1.0))
    char_mse, prop_mse = region_mse((on_char - target).pow(2), cover, 2)
    assert char_mse == 1.0 and prop_mse == 0.0

    # the store hands each target chunk the coverage of the same frames, at latent resolution

    models = synth_architecture(size="test")
    data = render_dataset(3, 0, first_seed=0, shot_frames=(8,), workers=1, progress=False)
    store = LatentStore.encode(data, models.codec, torch.device("cpu"), progress=False, dtype=torch.float32)
    batch = store.sample("temporal", 6, 4, 8, 1, np.random.default_rng(0))
    assert batch.coverage.shape == (6, 4, 2, *batch.target.shape[-2:])
    for i, s in enumerate(batch.shot_index.tolist()):
        frames = [j for j in range(int(data.shot_length[s]) - 3)
                  if torch.equal(store.latents[data.shot_start[s] + j], batch.target[i, :, 0])]
        pix = data.coverage[data.shot_start[s] + frames[0], 0].astype(np.float32) / 255
        cov = batch.coverage[i, 0, 0]
        assert 0 < cov.max() <= 1 and cov.sum() >= pix.sum() / (pix.shape[0] // cov.shape[0]) ** 2


def test_stories_are_valid_st_bench_with_ground_truth_and_unrestated_prompts():
    restated, total = 0, 0
    for seed in range(40):
        story = make_story(seed)
        script = story.to_script()
        parsed = parse_story(json.loads(json.dumps(script)), file=f"synth-{seed}.json")
        shots = parsed.shots()
        assert 3 <= len(shots) <= 12 and shots[0].cut
        gt, specs = story_from_script(script)
        assert len(specs) == len(shots) and specs[0].character == story.character
        for i, (shot, spec) in enumerate(zip(shots, specs, strict=True)):
            assert shot.options.num_frames == spec.num_frames
            says_colour = f"a {spec.character.colour} " in shot.prompt
            assert says_colour == gt["shots"][i]["restates_character"]
            if i > 0:
                total += 1
                restated += says_colour
    assert 0.1 < restated / total < 0.5  # most later prompts leave appearance to memory
    assert make_story(7).prompts == make_story(7).prompts


def test_word_tokenizer_covers_the_grammar():
    tok = word_level_tokenizer(grammar_words())
    for seed in range(30):
        for p in make_story(seed).prompts:
            ids = tok(p).input_ids
            assert tok.unk_token_id not in ids
            assert tok.convert_ids_to_tokens(ids)[:-1] == split_words(p)


def test_seam_ratio_sees_chunk_boundaries():
    t = torch.arange(12, dtype=torch.float32)
    smooth = (t / 12).view(-1, 1, 1, 1).expand(12, 3, 4, 4).clone()
    assert seam_ratio(smooth, 4) == pytest.approx(1.0, rel=1e-4)
    jumpy = smooth.clone()
    jumpy[4:] += 0.5
    jumpy[8:] += 0.5
    assert seam_ratio(jumpy, 4) > 5


def test_summarize_identity_only_counts_unrestated_later_shots():
    def rec(shot, rc, ok):
        m = {k: ok for k in ("shape", "colour", "pattern", "accessory", "props", "ground", "time")}
        return {"shot": shot, "restates_character": rc, "restates_location": True, "match": m, "seam_ratio": 1.0,
                "seconds": 1.0}

    s = summarize([rec(0, True, True), rec(1, False, False), rec(2, False, True), rec(3, True, False)])
    assert s["identity"] == 0.5 and s["identity_shots"] == 2
    assert s["adherence_character"] == 0.5
    assert s["identity_by_attribute"] == {"shape": 0.5, "colour": 0.5, "pattern": 0.5, "accessory": 0.5}

    # the interval resamples stories: ten stories all right, ten all wrong -> wide; all alike -> a point
    mixed = [{**rec(1, False, k < 10), "story": f"s{k}"} for k in range(20)]
    lo, hi = summarize(mixed)["identity_ci95"]
    assert lo < 0.4 < 0.5 < 0.6 < hi
    same = [{**rec(1, False, True), "story": f"s{k}"} for k in range(20)]
    assert summarize(same)["identity_ci95"] == [1.0, 1.0]
    # many shots of one story are one unit: its interval is no narrower than the story's own spread allows
    one = [{**rec(k + 1, False, k % 2 == 0), "story": "only"} for k in range(20)]
    assert summarize(one)["identity_ci95"] == [0.5, 0.5]


def test_identity_as_drawn_follows_the_introducing_shot_not_the_script():
    """A character drawn wrong in its first described shot and copied faithfully after: identity against
    the script is 0, as drawn 1; a second character of the same story is compared with its own intro."""
    truth = {"shape": "round", "colour": "red", "pattern": "plain", "accessory": "none"}
    other = {"shape": "square", "colour": "blue", "pattern": "dotted", "accessory": "hat"}
    drawn = {"shape": "triangle", "colour": "green", "pattern": "striped", "accessory": "scarf"}

    def rec(shot, restates, who, read):
        match = {k: read[k] == who[k] for k in who} | {"props": True, "ground": True, "time": True}
        return {"story": "a", "shot": shot, "restates_character": restates, "restates_location": True,
                "match": match, "truth": who, "read": read, "seam_ratio": 1.0, "seconds": 1.0}

    records = [rec(0, True, truth, drawn), rec(1, False, truth, drawn), rec(2, False, truth, drawn),
               rec(3, True, other, other), rec(4, False, other, {**other, "shape": "round"})]
    s = summarize(records)
    assert s["identity"] == pytest.approx(3 / 12)  # only the second character's three right attributes
    assert s["identity_as_drawn"] == pytest.approx((8 + 3) / 12)
    assert summarize([rec(1, False, truth, truth)])["identity_as_drawn"] is None  # no introducing shot


@pytest.mark.parametrize("context_attention", ["full", "causal"])
def test_training_smoke_loss_decreases_on_a_fixed_batch(context_attention):
    """The real objective (caches, negatives, asymmetric noise) on the miniature architecture, with
    either context attention (causal: the context pass is trained through its keys/values)."""
    from filmweaver.train.data import LatentStore
    from filmweaver.train.dit import CacheGuidedDenoiser, build_context

    torch.manual_seed(0)
    models = synth_architecture(size="test")
    models.backbone.context_attention = context_attention
    data = render_dataset(4, 1, first_seed=0, shot_frames=(8,), long_take_frames=12, workers=1, progress=False)
    store = LatentStore.encode(data, models.codec, torch.device("cpu"), progress=False, dtype=torch.float32)
    rng = np.random.default_rng(0)
    batch = store.sample("both", 4, 4, 8, 2, rng, negative_sampling=0.5)
    assert batch.memory.shape[:3] == (4, 16, 2) and len(batch.history) == 4
    module = CacheGuidedDenoiser(models.backbone, models.prompt_encoder.text_encoder)
    ids, mask = models.prompt_encoder.tokenize([data.prompts[i] for i in batch.shot_index])
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=3e-3)
    x0 = batch.target
    s = torch.full((4,), 0.6)
    eps = torch.randn_like(x0)
    x_t = 0.4 * x0 + 0.6 * eps
    losses = []
    for _ in range(40):
        torch.manual_seed(1)  # same cache noise every step: a fixed batch
        ctx = build_context(batch, [(1, 2), (2, 2), (4, 4)], torch.full((4,), 200.0), torch.full((4,), 50.0))
        assert [b.kind for b in ctx] == ["shot", "temporal", "temporal", "temporal"]
        loss = torch.nn.functional.mse_loss(module(x_t, s * 1000, ids, mask, ctx), eps - x0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_summary_breaks_identity_down_by_framing_and_names_the_misreads(tmp_path):
    from filmweaver.synth.evaluate import write_report

    truth = {"shape": "round", "colour": "red", "pattern": "plain", "accessory": "none"}

    def rec(story, framing, read):
        match = {k: read.get(k, truth[k]) == truth[k] for k in truth} | {"props": True, "ground": True, "time": True}
        return {"story": story, "shot": 1, "restates_character": False, "restates_location": True, "match": match,
                "truth": truth, "read": {**truth, **read}, "framing": framing, "seam_ratio": 1.0, "seconds": 1.0}

    records = [rec("a", "wide", {"shape": "square", "accessory": "hat"}), rec("b", "wide", {"accessory": "hat"}),
               rec("c", "close", {})]
    s = summarize(records)
    assert s["identity_by_framing"] == {"wide": {"rate": 5 / 8, "shots": 2}, "close": {"rate": 1.0, "shots": 1}}
    assert s["identity_confusions"]["accessory"] == [("none -> hat", 2)]
    assert s["identity_confusions"]["shape"] == [("round -> square", 1)] and s["identity_confusions"]["colour"] == []
    write_report([{"arm": "full", "summary": s}], tmp_path, {})
    md = (tmp_path / "report.md").read_text()
    assert "| full | 62% (2) | - | 100% (1) | none -> hat (2), round -> square (1) |" in md
    assert "30 / 46 / 64 %" in md
    # by the true value: the one character here has no accessory, read as a hat in 2 of 3 shots
    assert s["identity_by_value"]["accessory"] == {"none": {"rate": 1 / 3, "shots": 3}}
    assert s["identity_by_value"]["shape"] == {"round": {"rate": 2 / 3, "shots": 3}}
    more = records + [rec(f"d{i}", "close", {}) for i in range(3)]  # 6 shots: values with >= 5 shots are listed
    write_report([{"arm": "full", "summary": summarize(more)}], tmp_path, {})
    assert "| full | accessory none 67% (6), shape round 83% (6), colour red 100% (6), pattern plain 100% (6) |" in \
        (tmp_path / "report.md").read_text()


def test_fit_schedule_fits_the_stages_ahead_in_proportion_within_the_configured_steps():
    from filmweaver.train.dit import fit_schedule

    plan = {"total": 10_000, "bounds": [2_000, 10_000]}
    fit_schedule(plan, 600, 5_000, 10_000)  # measured at step 600: half of the plan fits
    assert plan == {"total": 5_000, "bounds": [1_000, 5_000]}
    fit_schedule(plan, 3_000, 4_000, 10_000)  # later (stage 1 over): only the future shrinks, the past stays
    assert plan == {"total": 4_000, "bounds": [1_000, 4_000]}
    fit_schedule(plan, 3_500, 9_000, 10_000)  # faster than thought (a slow window is over): it grows back
    assert plan == {"total": 9_000, "bounds": [1_000, 9_000]}
    fit_schedule(plan, 3_600, 50_000, 10_000)  # but never past the configured steps
    assert plan == {"total": 10_000, "bounds": [1_000, 10_000]}
    fit_schedule(plan, 3_900, 10, 10_000)  # deadline already passed: end at the next step, not in the past
    assert plan["total"] == 3_901 and plan["bounds"] == [1_000, 3_901]
    plan = {"total": 10_000, "bounds": [2_000, 10_000]}
    fit_schedule(plan, 600, 1_000, 10_000)  # stage 1 would end before now: it ends at the next step
    assert plan["bounds"] == [601, 1_000]
    plan = {"total": 1_000, "bounds": [200, 1_000]}
    fit_schedule(plan, 100, 10_000, 10_000)  # a stage still ahead grows with the plan
    assert plan == {"total": 10_000, "bounds": [2_000, 10_000]}


@pytest.mark.slow
def test_train_cli_runs_every_phase_and_the_model_generates(tmp_path):
    """`filmweaver train` on the miniature config: every phase, a loadable model, and resume."""
    from typer.testing import CliRunner

    from filmweaver.cli import app

    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "configs/synth-test.yaml", "-o", str(out)])
    assert res.exit_code == 0, res.output
    model = out / "model"
    for sub in ("transformer", "vae", "text_encoder", "tokenizer", "embedder", "probe/probe.safetensors"):
        assert (model / sub).exists(), sub
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in log} == {"temporal", "memory"}
    assert all(r["character_loss"] > 0 and "props_loss" in r for r in log)  # per-layer losses are logged
    # resume: the finished run does not train again
    res = runner.invoke(app, ["train", "configs/synth-test.yaml", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert len((out / "log.jsonl").read_text().splitlines()) == len(log)
    story = make_story(3, max_shots=3, frames=(8,)).to_script()
    (tmp_path / "s.json").write_text(json.dumps(story))
    res = runner.invoke(app, ["generate", str(tmp_path / "s.json"), "-o", str(tmp_path / "film"), "--model", str(model)])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "film" / "manifest.json").read_text())
    assert manifest["model"]["trained"] and manifest["config"]["shot_cache"]["timestep"] == 100.0

    # dit.init_from: a fresh architecture takes the trained weights; another architecture is refused
    from filmweaver.models import FilmModels
    from filmweaver.train.run import init_dit_from

    fresh, src = synth_architecture(seed=5, size="test"), FilmModels.from_pretrained(str(model))
    init_dit_from(fresh, str(model))
    for mine, theirs in [(fresh.backbone.transformer, src.backbone.transformer),
                         (fresh.prompt_encoder.text_encoder, src.prompt_encoder.text_encoder)]:
        a, b = mine.state_dict(), theirs.state_dict()
        assert all(torch.equal(a[k], b[k].to(a[k].dtype)) for k in a)
    with pytest.raises(ValueError, match="does not match"):
        init_dit_from(synth_architecture(size="small"), str(model))

    # export-ema: the last checkpoint's EMA weights alone make the model the run saved (the run stops at
    # its last checkpoint, and the saved model is the EMA); a tensor that does not fit is named
    from safetensors.torch import load_file, save_file

    from filmweaver.train.dit import EMA

    ema_file = out / "checkpoint" / "ema.safetensors"
    shadows = load_file(str(ema_file))
    assert any(k.startswith("backbone.transformer.") for k in shadows)  # stored by parameter name
    res = runner.invoke(app, ["export-ema", str(ema_file), str(model), str(tmp_path / "exported")])
    assert res.exit_code == 0, res.output
    exported, saved = FilmModels.from_pretrained(str(tmp_path / "exported")), FilmModels.from_pretrained(str(model))
    for mine, theirs in [(exported.backbone.transformer, saved.backbone.transformer),
                         (exported.backbone.context_proj, saved.backbone.context_proj),
                         (exported.prompt_encoder.text_encoder, saved.prompt_encoder.text_encoder)]:
        a, b = mine.state_dict(), theirs.state_dict()
        assert all(torch.equal(a[k].half(), b[k].half()) for k in a)
    assert (tmp_path / "exported" / "probe" / "probe.safetensors").is_file() and exported.trained
    for part in ("vae", "embedder"):  # not in the EMA: the base model's files, unchanged (no half cast)
        files = sorted(p.relative_to(model / part) for p in (model / part).rglob("*") if p.is_file())
        assert files and all((model / part / f).read_bytes() == (tmp_path / "exported" / part / f).read_bytes()
                             for f in files), part
    name = next(iter(shadows))
    save_file({name: torch.zeros(3, 3)}, tmp_path / "bad.safetensors")
    res = runner.invoke(app, ["export-ema", str(tmp_path / "bad.safetensors"), str(model), str(tmp_path / "x")])
    assert res.exit_code != 0 and name in res.output and "Traceback" not in res.output
    # checkpoints from before the shadows were named (p0, p1, ...) still resume
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))]
    ema = EMA(params, 0.9, names=["a.w", "b.w"])
    ema.load_state_dict({"p0": torch.ones(2), "p1": torch.full((3,), 2.0)})
    assert torch.equal(ema.shadow[1], torch.full((3,), 2.0)) and set(ema.state_dict()) == {"a.w", "b.w"}


@pytest.mark.slow
def test_time_budget_shrinks_the_dit_and_a_spent_budget_keeps_the_earlier_phases(tmp_path):
    """``time_budget_minutes``: the DiT gets what the earlier phases left (at most its own cap); a budget
    spent before the DiT is a clear error, and the rerun resumes at the DiT (VAE, embedder, probe kept)."""
    from typer.testing import CliRunner

    from filmweaver.cli import app
    from filmweaver.train.config import load_train_config
    from filmweaver.train.run import SAVE_RESERVE_MINUTES, TimeBudgetSpent, dit_minutes, run_training

    cfg = load_train_config("configs/synth-test.yaml", ["time_budget_minutes=24", "dit.max_minutes=15"])
    assert dit_minutes(cfg, 0) == 15  # the DiT's own cap while the budget is larger
    assert dit_minutes(cfg, 12 * 60) == pytest.approx(12 - SAVE_RESERVE_MINUTES)  # what the budget leaves
    assert dit_minutes(load_train_config("configs/synth-test.yaml", ["dit.max_minutes=15"]), 20 * 60) == 15
    with pytest.raises(TimeBudgetSpent, match="resumes at the DiT"):
        dit_minutes(cfg, 23 * 60)

    out = tmp_path / "run"
    spent = load_train_config("configs/synth-test.yaml", [f"output_dir={out}", "time_budget_minutes=0.01"])
    with pytest.raises(TimeBudgetSpent, match="time_budget_minutes=0.01"):
        run_training(spent, progress=False)
    kept = {p: (out / p).stat().st_mtime_ns for p in ("vae/config.json", "embedder/config.json", "probe/probe.json")}
    assert not (out / "log.jsonl").exists() and not (out / "model").exists()  # the DiT never started
    res = CliRunner().invoke(app, ["train", "configs/synth-test.yaml", "-o", str(out), "--set", "time_budget_minutes=0.01"])
    assert res.exit_code != 0 and "time_budget_minutes=0.01" in res.output and "Traceback" not in res.output
    summary = run_training(load_train_config("configs/synth-test.yaml", [f"output_dir={out}"]), progress=False)
    assert {p: (out / p).stat().st_mtime_ns for p in kept} == kept  # reused, not retrained
    assert "vae" not in summary and "probe" not in summary and summary["dit"]["steps"] == 12
    assert (out / "model" / "probe" / "probe.safetensors").is_file()  # the probe travels with the model


def test_builtin_model_is_the_default_and_is_small():
    from filmweaver.models import BUILTIN_MODEL_DIR, load_models

    size = sum(f.stat().st_size for f in BUILTIN_MODEL_DIR.rglob("*") if f.is_file())
    assert size <= 40 * 2**20
    models = load_models()
    assert models.trained and models.model_id.startswith("filmweaver-synth-small")
    assert models.defaults["height"] == 64 and models.embedder is not None
    assert len(COLOURS) == 6
    # the tuned memory guidance is the model's default; a caller's setting still wins
    from filmweaver.engine import EngineConfig

    assert EngineConfig().resolve(models).sampler.memory_guidance_scale == 4.0
    assert EngineConfig(sampler={"memory_guidance_scale": 1.0}).resolve(models).sampler.memory_guidance_scale == 1.0


@pytest.mark.slow
def test_compiled_blocks_train_like_eager_with_few_graphs_across_context_sizes():
    """``dit.compile_blocks``: the blocks compiled with dynamic token counts (dynamo traced, the eager
    backend here: no C++ compile in CI) give the same loss and gradients as eager for every batch mode,
    and the varying context sizes of training do not compile a graph per shape."""
    import copy

    import torch._dynamo
    from torch._dynamo.utils import counters

    from filmweaver.train.data import LatentStore
    from filmweaver.train.dit import CacheGuidedDenoiser, build_context

    torch.manual_seed(0)
    models = synth_architecture(size="test")
    data = render_dataset(4, 1, first_seed=0, shot_frames=(8,), long_take_frames=12, workers=1, progress=False)
    store = LatentStore.encode(data, models.codec, torch.device("cpu"), progress=False, dtype=torch.float32)
    eager = CacheGuidedDenoiser(models.backbone, models.prompt_encoder.text_encoder)
    compiled = copy.deepcopy(eager)
    torch._dynamo.reset()
    counters.clear()
    compiled.backbone.compile_blocks(dynamic=True, backend="eager")
    rng = np.random.default_rng(0)
    shapes = set()
    for mode, k in [("text", 1), ("temporal", 1), ("shot", 1), ("shot", 3), ("both", 2), ("both", 3), ("shot", 2)]:
        batch = store.sample(mode, 3, 4, 8, k, rng, negative_sampling=0.3)
        ids, mask = models.prompt_encoder.tokenize([data.prompts[i] for i in batch.shot_index])
        x0 = batch.target
        s = torch.full((3,), 0.5)
        x_t = 0.5 * x0 + 0.5 * torch.randn_like(x0)
        results = []
        for module in (eager, compiled):
            module.zero_grad()
            torch.manual_seed(1)
            ctx = build_context(batch, [(1, 2), (2, 2), (4, 4)], torch.full((3,), 200.0) if batch.memory is not None
                                else None, torch.full((3,), 50.0) if batch.history is not None else None)
            loss = torch.nn.functional.mse_loss(module(x_t, s * 1000, ids, mask, ctx), x0)
            loss.backward()
            results.append((loss.detach(), [p.grad.clone() for p in module.backbone.parameters() if p.grad is not None]))
        shapes.add(module.backbone.count_tokens(ctx, x0.shape[-2:]))
        torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
        for g1, g0 in zip(results[1][1], results[0][1], strict=True):
            torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-6)
    assert len(shapes) >= 4  # the context sizes really varied
    assert counters["stats"]["unique_graphs"] <= 3, dict(counters["stats"])


@pytest.mark.slow
def test_run_arm_evaluates_a_generated_story_against_its_ground_truth(tmp_path):
    """The evaluation path end to end on the CPU (built-in model, 2 denoising steps, a 3-shot story):
    every shot is read back from its mp4 by the probe and compared with the story's ground truth."""
    from filmweaver.models import BUILTIN_MODEL_DIR
    from filmweaver.synth.evaluate import eval_stories, run_arm
    from filmweaver.synth.stories import story_from_script
    from filmweaver.synth.world import ALL_ATTRIBUTES

    script = eval_stories(1, first_seed=3_000_000, frames=(12,), max_shots=3)[0]
    res = run_arm("full", BUILTIN_MODEL_DIR, {"sampler": {"num_inference_steps": 2}}, [script], tmp_path,
                  BUILTIN_MODEL_DIR / "probe", progress=False)
    _, specs = story_from_script(script)
    assert len(res["records"]) == len(specs) >= 3
    for rec, spec in zip(res["records"], specs, strict=True):
        truth = {**spec.character.labels(), **spec.location.labels()}
        assert rec["truth"] == {k: ALL_ATTRIBUTES[k][truth[k]] for k in ALL_ATTRIBUTES}
        assert rec["framing"] == spec.framing and rec["story"] == script["story_name"]
        assert rec["match"] == {k: rec["read"][k] == rec["truth"][k] for k in ALL_ATTRIBUTES}
        assert rec["num_chunks"] == 3 and rec["seam_ratio"] is not None
    assert res["summary"]["shots"] == len(specs)
    # the benchmark runner's layout: the story as a script file, the run, its metrics with the records
    metrics = json.loads((tmp_path / "runs" / "full" / script["story_name"] / "metrics.json").read_text())
    assert metrics["metrics"]["probe/gt_identity"]["value"] == pytest.approx(res["summary"]["identity"], abs=1e-6)
    assert json.loads((tmp_path / "stories" / f"{script['story_name']}.json").read_text()) == script
    # an arm is the model's own settings plus the arm's: the built-in model's entity memory and regional
    # prompts (not the "filmweaver" method's topk), 2 steps
    made = json.loads((tmp_path / "runs" / "full" / script["story_name"] / "manifest.json").read_text())["config"]
    assert made["shot_cache"]["policy"] == "entity" and made["regional_prompts"] is True
    assert made["sampler"]["num_inference_steps"] == 2
    # a second call resumes: nothing is generated again, the records are the same
    again = run_arm("full", BUILTIN_MODEL_DIR, {"sampler": {"num_inference_steps": 2}}, [script], tmp_path,
                    BUILTIN_MODEL_DIR / "probe", progress=False)
    assert again["records"] == res["records"]


def test_an_arm_can_name_the_training_run_whose_model_it_uses():
    """``ARM@RUN``: an ablation arm's engine settings on another trained model; unknown arms fail early."""
    from filmweaver.synth.evaluate import ARMS, AblationError, resolve_arm

    assert resolve_arm("no_shot_cache") == ARMS["no_shot_cache"]
    run, overrides = resolve_arm("no_shot_cache@char6")
    assert run == "char6" and overrides == ARMS["no_shot_cache"][1]
    assert resolve_arm("no_noise_aug") == ("no_noise", {})
    with pytest.raises(AblationError, match="no_such_arm"):
        resolve_arm("no_such_arm@char6")


@pytest.fixture(scope="module")
def small_rendered_set():
    return render_dataset(12, 2, first_seed=5, shot_frames=(8, 12), long_take_frames=16, workers=1, progress=False)


@pytest.mark.parametrize("mode", ["text", "temporal", "shot", "both"])
def test_store_batches_hold_the_frames_their_mode_promises(mode, small_rendered_set):
    """Every latent holds its own global frame index, so each frame of a batch says where it came
    from: the chunk lies inside its shot, the history is the frames right before it (or, at the start
    of a continuing shot, the previous shot's last frame), memory comes from earlier shots of the same
    story except the counted negatives, and the coverage is that of the chunk's frames."""
    from filmweaver.train.data import LatentStore

    data = small_rendered_set
    n = len(data.frames)
    latents = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 2, 2, 2).contiguous()
    coverage = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 2, 2, 2).contiguous()
    store = LatentStore(latents, data, coverage=coverage)
    shot_of = np.repeat(np.arange(data.num_shots), data.shot_length)
    rng = np.random.default_rng(0)
    negatives = relevant = starts = 0
    for _ in range(30):
        k = int(rng.integers(1, 4))
        batch = store.sample(mode, 16, 4, 6, k, rng, long_takes=0.5, negative_sampling=0.4)
        assert batch.target.shape == (16, 2, 4, 2, 2) and batch.coverage.shape == (16, 4, 2, 2, 2)
        for i, s in enumerate(batch.shot_index.tolist()):
            frames = batch.target[i, 0, :, 0, 0].long().numpy()
            first = int(frames[0])
            assert (np.diff(frames) == 1).all() and (shot_of[frames] == s).all()
            assert torch.equal(batch.coverage[i, :, 0, 0, 0], batch.target[i, 0, :, 0, 0])
            if mode in ("text", "shot"):
                assert first == data.shot_start[s]
            if mode in ("shot", "both"):
                assert store.position[s] > 0
            if mode in ("temporal", "both"):
                hist = batch.history[i][0, :, 0, 0].long().numpy()
                if first == data.shot_start[s]:  # a continuing shot's first chunk: MI2V
                    assert not data.shot_cut[s] and hist.tolist() == [first - 1] and shot_of[first - 1] == s - 1
                    starts += 1
                else:
                    assert hist[-1] == first - 1 and (np.diff(hist) == 1).all() and len(hist) <= 6
                    assert (shot_of[hist] == s).all()
            if batch.memory is None:
                continue
            assert batch.memory.shape == (16, 2, k, 2, 2)
            story = data.shot_story[s]
            for f in batch.memory[i, 0, :, 0, 0].long().tolist():
                e = shot_of[f]
                assert f in (data.shot_start[e], *range(data.shot_start[e], data.shot_start[e] + data.shot_length[e]))
                if data.shot_story[e] == story:
                    assert store.position[e] < store.position[s]  # an earlier shot of the story
                    relevant += 1
                else:
                    assert data.shot_story[e] >= 0  # negatives are other stories' shots, never long takes
                    negatives += 1
        # the count the batch reports is the slots from other stories
        if batch.memory is not None:
            stories = data.shot_story[shot_of[batch.memory[:, 0, :, 0, 0].long().numpy()]]
            assert batch.negatives == int((stories != data.shot_story[batch.shot_index.numpy()][:, None]).sum())
            assert (stories == data.shot_story[batch.shot_index.numpy()][:, None]).any(1).all()  # one stays relevant
    if mode in ("shot", "both"):
        assert negatives > 0 and relevant > negatives
    if mode == "both":
        assert starts > 0  # continuing shots' first chunks are drawn


def test_config_overrides_reach_list_items_and_name_a_bad_key(tmp_path):
    from filmweaver.train.config import load_train_config

    base = load_train_config("configs/synth-small.yaml")
    cfg = load_train_config("configs/synth-small.yaml", ["dit.stages.1.modes.shot=0.5", "dit.batch_size=64",
                                                         "dit.augment.noise_shot_cache=null"])
    assert base.dit.stages[1].modes["shot"] != 0.5 and cfg.dit.stages[1].modes["shot"] == 0.5
    assert cfg.dit.stages[1].modes["both"] == base.dit.stages[1].modes["both"]  # its sibling keeps its value
    assert cfg.dit.batch_size == 64 and cfg.dit.augment.noise_shot_cache is None
    for bad in ("dit.stages.7.steps=1", "dit.stages.x.steps=1", "dit.batch_size.deeper=1"):
        with pytest.raises(ValueError, match="does not name a setting"):
            load_train_config("configs/synth-small.yaml", [bad])
    # launches that would train wrongly are refused (accelerate's FSDP exists on GPUs only: a stand-in)
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from filmweaver.train.run import check_launch

    for kind in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        with pytest.raises(RuntimeError, match="shards the model itself with --set dit.fsdp=true"):
            check_launch(SimpleNamespace(distributed_type=kind, num_processes=8), 8)
    with pytest.raises(RuntimeError, match="launched as 2 processes, but accelerate sees one"):
        check_launch(SimpleNamespace(distributed_type=DistributedType.NO, num_processes=1), 2)
    check_launch(SimpleNamespace(distributed_type=DistributedType.MULTI_GPU, num_processes=8), 8)
    # a combination that cannot train is refused with the config, before anything runs
    with pytest.raises(ValueError, match="dit.fsdp trains in bf16 or float32"):
        load_train_config("configs/synth-small.yaml", ["dit.fsdp=true", "mixed_precision=fp16"])
    assert load_train_config("configs/synth-small.yaml", ["dit.fsdp=true"]).dit.fsdp


def _shot_record(story, shot, hits, restates=False):
    """An evaluation record whose first ``hits`` character attributes were read right (location all right)."""
    keys = ("shape", "colour", "pattern", "accessory", "props", "ground", "time")
    match = {k: i < hits or i >= 4 for i, k in enumerate(keys)}
    return {"story": story, "shot": shot, "restates_character": restates, "restates_location": True,
            "match": match, "seam_ratio": 1.0, "seconds": 1.0}


def test_paired_identity_difference_pairs_shots_by_story_and_needs_the_same_shots(tmp_path):
    from filmweaver.synth.evaluate import paired_identity_difference, write_report

    rec = _shot_record
    ref = [rec(s, 0, 4, True) for s in "abcd"] + [rec(s, 1, 2) for s in "abcd"]
    better = [rec(s, 0, 4, True) for s in "abcd"] + [rec(s, 1, 3) for s in "abcd"]  # one more attribute every shot
    p = paired_identity_difference(ref, better)
    assert p["difference"] == 0.25 and p["ci95"] == [0.25, 0.25]  # the same gain in every story: no spread
    mixed = [rec(s, 0, 4, True) for s in "abcd"] + [rec("a", 1, 4), rec("b", 1, 0), rec("c", 1, 2), rec("d", 1, 2)]
    p = paired_identity_difference(ref, mixed)
    assert p["difference"] == 0.0 and p["ci95"][0] < 0 < p["ci95"][1]
    assert paired_identity_difference(ref, better[:-1]) is None  # a shot missing: not the same stories
    assert paired_identity_difference(ref, [rec(s, 1, 2) for s in "abce"]) is None
    write_report([{"arm": "full", "summary": summarize(ref), "records": ref},
                  {"arm": "other", "summary": summarize(better), "records": better}], tmp_path, {})
    md = (tmp_path / "report.md").read_text()
    assert "identity vs full (paired 95%)" in md and "| other | 75.0% (75-75) | +25.0 (+25.0 to +25.0) |" in md


def test_report_only_without_results_says_where_it_looked(tmp_path):
    from filmweaver.synth.evaluate import main

    with pytest.raises(SystemExit, match="no results in .*out for full"):
        main([str(tmp_path), str(tmp_path / "out"), "--stories", "2", "--report-only", "--arms", "full",
              "--probe", "src/filmweaver/weights/synth-small/probe", "--device", "cpu"])


def _evaluated_arm(out, arm: str, records: list[dict]) -> None:
    """An arm's runs as the benchmark runner leaves them: runs/ARM/STORY/metrics.json with the probe's
    per-shot ground-truth records (here written directly, not generated)."""
    for story in sorted({r["story"] for r in records}):
        run = out / "runs" / arm / story
        run.mkdir(parents=True)
        rows = [{k: v for k, v in r.items() if k != "story"} for r in records if r["story"] == story]
        (run / "metrics.json").write_text(json.dumps({"metrics": {}, "ground_truth_records": rows}))


def test_from_report_brings_an_earlier_arm_into_the_paired_table(tmp_path):
    from filmweaver.synth.evaluate import EVAL_FIRST_SEED, eval_stories, main, write_report

    names = [s["story_name"] for s in eval_stories(2)]
    rec = _shot_record
    ref = [rec(s, 0, 4, True) for s in names] + [rec(s, 1, 2) for s in names]
    better = [rec(s, 0, 4, True) for s in names] + [rec(s, 1, 3) for s in names]
    old = tmp_path / "old"
    write_report([{"arm": "full", "summary": summarize(ref), "records": ref}], old,
                 {"stories": 2, "first_seed": EVAL_FIRST_SEED})
    out = tmp_path / "new"
    _evaluated_arm(out, "full", better)
    common = [str(tmp_path), str(out), "--stories", "2", "--report-only", "--arms", "full",
              "--probe", "src/filmweaver/weights/synth-small/probe", "--device", "cpu"]
    main([*common, "--from-report", f"{old}/report.json:full=full@old"])
    md = (out / "report.md").read_text()
    assert "| full | 75.0% (75-75) |" in md
    assert "| full@old | 50.0% (50-50) | -25.0 (-25.0 to -25.0) |" in md  # the new model first, paired per shot
    arms = {a["arm"]: a for a in json.loads((out / "report.json").read_text())["arms"]}
    assert arms["full@old"]["imported_from"] == f"{old}/report.json:full"
    with pytest.raises(SystemExit, match="also an arm evaluated here"):  # would shadow the new results
        main([*common, "--from-report", f"{old}/report.json:full"])
    with pytest.raises(SystemExit, match="no arm 'sink_window'.*it has full"):
        main([*common, "--from-report", f"{old}/report.json:sink_window"])
    with pytest.raises(SystemExit, match="covers 2 single stories from seed .*this evaluation 3 single"):
        main([*common[:3], "3", *common[4:], "--from-report", f"{old}/report.json:full=x"])
    with pytest.raises(SystemExit, match="this evaluation 2 cast"):  # another world's stories do not pair
        main([*common, "--world", "cast", "--from-report", f"{old}/report.json:full=x"])
    with pytest.raises(SystemExit):  # imported arms are not run: only with --report-only
        main([str(tmp_path), str(out), "--arms", "full", "--from-report", f"{old}/report.json:full=x"])
    # a shard that has not finished: the report says which stories are missing instead of a partial table
    (out / "runs" / "full" / names[1] / "metrics.json").unlink()
    with pytest.raises(SystemExit, match=f"full: 1 of 2 stories not evaluated .*{names[1]}"):
        main(common)


@pytest.mark.slow
def test_sharded_training_gives_data_parallel_weights_and_resumes_after_a_kill(tmp_path):
    """`torchrun --nproc_per_node 2` training (CPU ranks, gloo), data parallel (DDP: the phases before
    the DiT run once, each rank draws its own batches, all end with the same weights) and with
    `dit.fsdp` (every parameter, gradient and Adam moment sharded: FSDP2, a unit per block). A run
    killed after its step-10 checkpoint while data parallel, run again sharded, ends with the weights
    of an uninterrupted data-parallel run of the same recipe (same batches, the same averaged
    gradients, clipped by the norm over all shards); its checkpoint and saved model are the files an
    unsharded run writes. A sharded LoRA run saves the adapter that `generate --lora` loads."""
    from helpers import torchrun
    from safetensors.torch import load_file

    from filmweaver.models import load_models
    from filmweaver.train.dit import SYNC_EVERY

    def train(out, kill_at=0, *overrides):  # no probe phase: the DiT is what is compared
        return torchrun(2, "tests/fsdp_worker.py", str(out), str(kill_at), f"data.cache_dir={tmp_path / 'frames'}",
                        "probe=null", *overrides, env={"ACCELERATE_USE_CPU": "1"})

    ddp, fsdp, lora = tmp_path / "ddp", tmp_path / "fsdp", tmp_path / "lora"
    res = train(ddp)
    assert res.returncode == 0, res.stderr[-3000:]
    # killed after step 11 training data parallel, then run again sharded: checkpoints are whole and keyed
    # by name, so either way of training resumes the other's
    res = train(fsdp, 11, "--", "dit.fsdp=true")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "killed at step 11" in res.stdout and "resumed DiT training at step 10/12" in res.stdout + res.stderr
    runs = {r: json.loads((r / "summary.json").read_text())["dit"] for r in (ddp, fsdp)}
    assert runs[ddp]["sharded"] is False and runs[ddp]["ranks_in_sync"] is True
    assert runs[fsdp]["sharded"] is True and runs[fsdp]["processes"] == 2 and runs[fsdp]["steps"] == 12
    for name in ("trainable", "ema"):  # float32, every trained parameter (the text encoder's too)
        a, b = (load_file(str(r / "checkpoint" / f"{name}.safetensors")) for r in (ddp, fsdp))
        assert a.keys() == b.keys() and any(k.startswith("text_encoder.") for k in a)
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=f"{name} {k}")
    moments = [torch.load(r / "checkpoint" / "optimizer.pt", weights_only=True)["optimizer"] for r in (ddp, fsdp)]
    assert moments[0]["state"].keys() == moments[1]["state"].keys()  # by parameter name, whole
    key = "backbone.transformer.patch_embedding.weight"
    torch.testing.assert_close(moments[1]["state"][key]["exp_avg_sq"], moments[0]["state"][key]["exp_avg_sq"])
    a, b = (load_models(model=str(r / "model")).backbone.transformer.state_dict() for r in (ddp, fsdp))
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-3) for k in a)

    # a sharded LoRA run on a pretrained base (the data-parallel run's model) against a time limit: every
    # rank stops at the same step (a rank stopping alone would hang the others), checked together every
    # SYNC_EVERY steps; the main process kept no copy of the frozen base, only of what trains
    res = train(lora, 0, "model.kind=pretrained", f"model.path={ddp / 'model'}", "dit.fsdp=true",
                "dit.lora={rank: 4}", "dit.stages.1.steps=100000", "dit.max_minutes=0.05")
    assert res.returncode == 0, res.stderr[-3000:]
    adapter = load_file(str(lora / "model" / "lora" / "pytorch_lora_weights.safetensors"))
    assert adapter and all("lora_A" in k or "lora_B" in k for k in adapter)
    assert any(v.abs().max() > 0 for k, v in adapter.items() if "lora_B" in k)  # trained away from zero
    summary = json.loads((lora / "summary.json").read_text())
    run = summary["dit"]
    assert run["sharded"] is True and 0 < run["steps"] < run["planned_steps"] and run["steps"] % SYNC_EVERY == 0
    saved_mb = sum(f.stat().st_size for f in (lora / "model" / "lora").glob("*.safetensors")) / 2**20
    base = load_models(model=str(ddp / "model")).backbone.transformer
    base_mb = sum(p.numel() * p.element_size() for p in base.parameters()) / 2**20
    assert summary["saving_copy_mb"] < saved_mb + 0.5 * base_mb  # what it saves (float32), not the base
    lora_model = load_models(model=str(ddp / "model"), lora=str(lora / "model" / "lora" / "pytorch_lora_weights.safetensors"))
    trained = {k: v for k, v in lora_model.backbone.transformer.state_dict().items() if "lora_B" in k}
    assert trained and any(v.abs().max() > 0 for v in trained.values())  # `generate --lora` loads it


@pytest.mark.slow
def test_a_run_lost_midway_resumes_from_its_compact_checkpoint(tmp_path, monkeypatch):
    """The machine is lost after the step-8 checkpoint; only the compact checkpoint (bfloat16 weights,
    step, schedule) reaches the next machine. The same command resumes there at step 8, on the same
    schedule, the learning rate warmed up again (Adam's moments restart), and ends at the planned step."""
    import filmweaver.train.dit as dit
    from filmweaver.train.config import load_train_config
    from filmweaver.train.run import run_training

    out = tmp_path / "run"
    overrides = [f"output_dir={out}", "checkpoint_every=4", "dit.warmup_steps=4"]
    save = dit._save_checkpoint

    class MachineLost(RuntimeError):
        pass

    def save_then_lose(d, module, opt, sched, ema, step, plan=None, **kw):
        save(d, module, opt, sched, ema, step, plan, **kw)
        if step == 8:
            raise MachineLost

    monkeypatch.setattr(dit, "_save_checkpoint", save_then_lose)
    with pytest.raises(MachineLost):
        run_training(load_train_config("configs/synth-test.yaml", overrides), progress=False)
    monkeypatch.setattr(dit, "_save_checkpoint", save)

    full = out / "checkpoint"
    full.rename(tmp_path / "lost")
    info = dit.compact_checkpoint(tmp_path / "lost", full)
    assert info["step"] == 8 and sorted(p.name for p in full.iterdir()) == ["state.json", "trainable.safetensors"]
    from safetensors.torch import load_file

    compact, original = load_file(str(full / "trainable.safetensors")), load_file(str(tmp_path / "lost" / "trainable.safetensors"))
    assert compact.keys() == original.keys() and all(t.dtype == torch.bfloat16 for t in compact.values())
    assert info["bytes"] < 0.6 * (tmp_path / "lost" / "trainable.safetensors").stat().st_size

    summary = run_training(load_train_config("configs/synth-test.yaml", overrides), progress=False)
    assert summary["dit"]["steps"] == 12 and "vae" not in summary  # the earlier phases were kept
    state = json.loads((full / "state.json").read_text())
    assert state["step"] == 12 and state["plan"]["rewarm_from"] == 8 and (full / "optimizer.pt").is_file()
    log = {r["step"]: r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())}
    assert sorted(log) == [5, 10, 12]  # step 5 from the first machine, 10 and 12 from the second
    base = load_train_config("configs/synth-test.yaml", overrides).dit.lr
    plan = state["plan"]
    assert log[10]["lr"] == pytest.approx(base * dit.learning_rate_factor(10, plan, 4))
    # warmed up again: three of four warm-up steps after the resume, below the uninterrupted run's rate
    uninterrupted = base * dit.learning_rate_factor(10, {k: v for k, v in plan.items() if k != "rewarm_from"}, 4)
    assert log[10]["lr"] == pytest.approx(0.75 * uninterrupted)
    assert (out / "model" / "transformer").is_dir()


def test_learning_rate_warms_up_decays_by_cosine_and_warms_again_after_a_compact_resume():
    from filmweaver.train.dit import learning_rate_factor

    plan = {"total": 100}
    assert learning_rate_factor(0, plan, 10) == pytest.approx(0.1)
    assert learning_rate_factor(9, plan, 10) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.09)))
    assert learning_rate_factor(100, plan, 10) == pytest.approx(0.1)  # the cosine ends at 10 %
    assert learning_rate_factor(200, plan, 10) == pytest.approx(0.1)
    rewarm = {"total": 100, "rewarm_from": 50}
    assert learning_rate_factor(50, rewarm, 10) == pytest.approx(0.1 * learning_rate_factor(50, plan, 10))
    assert learning_rate_factor(60, rewarm, 10) == pytest.approx(learning_rate_factor(60, plan, 10))


def test_rendering_in_worker_processes_gives_what_one_process_gives():
    """The renderer's pool (spawned processes, never forked: a fork of a process with torch's threads
    can hang on a lock it inherits) returns the same set as rendering in this process."""
    import dataclasses

    args = dict(first_seed=3, shot_frames=(4,), height=32, width=32, progress=False, cast_stories=2)
    pooled = render_dataset(8, 0, workers=2, **args)  # 10 stories: over the pool's threshold
    alone = render_dataset(8, 0, workers=1, **args)
    for f in dataclasses.fields(alone):
        a, b = getattr(alone, f.name), getattr(pooled, f.name)
        if isinstance(a, np.ndarray):
            assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), f.name
        else:
            assert a == b, f.name
