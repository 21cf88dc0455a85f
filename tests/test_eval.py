"""Evaluation: metric formulas on constructed inputs, judges' loading and errors, `filmweaver eval`,
the benchmark runner and its HTML report in a real browser."""

import json
import subprocess

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import CHROME_FLAGS, chromium
from typer.testing import CliRunner

from filmweaver.eval import metrics as M
from filmweaver.eval.judges import AestheticScorer, EvalSetupError, InceptionJudge
from filmweaver.eval.run import METRICS, EvalConfig, Judges, evaluate_run
from filmweaver.models import BUILTIN_MODEL_DIR


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A tiny random CLIP (transformers' own classes) with the built-in word-level tokenizer."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    d = tmp_path_factory.mktemp("tiny_clip")
    tok = AutoTokenizer.from_pretrained(BUILTIN_MODEL_DIR / "embedder")
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=40, pad_token_id=0, bos_token_id=1, eos_token_id=1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2),
        projection_dim=16))
    clip.save_pretrained(d)
    tok.save_pretrained(d)
    return d


# -- formulas --------------------------------------------------------------------------------------
def test_identical_frames_give_similarity_one(tiny_clip_dir):
    from filmweaver.eval.judges import load_clip_judge

    judge = load_clip_judge(str(tiny_clip_dir))
    frame = torch.rand(1, 3, 48, 64)
    emb = judge.embed_images(frame.expand(4, -1, -1, -1).clone())
    assert M.mean_pairwise_similarity(emb) == pytest.approx(1.0, abs=1e-5)
    other = judge.embed_images(torch.rand(2, 3, 48, 64))
    assert M.mean_pairwise_similarity(torch.cat([emb[:1], other])) < 1.0 - 1e-4


def test_orthogonal_embeddings_give_zero_and_clipscore_scale():
    e = torch.eye(5)
    assert M.mean_pairwise_similarity(e) == pytest.approx(0.0)
    assert M.mean_pairwise_similarity(e[:1]) is None
    assert M.clip_score(e[:2], e[:2]).tolist() == pytest.approx([100.0, 100.0])
    assert M.clip_score(e[:1], e[1:2]).item() == pytest.approx(0.0)
    a = F.normalize(torch.tensor([[1.0, 1.0]]), dim=-1)
    assert M.clip_score(a, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(100 / 2**0.5, rel=1e-5)


def test_top_related_pairs_picks_the_most_alike_prompts():
    # 6 shots: prompts 0/3 identical, 1/4 close, the rest orthogonal-ish
    t = torch.eye(6)
    t[3] = t[0]
    t[4] = F.normalize(t[1] + 0.2 * t[5], dim=0)
    pairs = M.top_related_pairs(t, k=2)
    assert pairs == [(0, 3), (1, 4)]
    assert len(M.top_related_pairs(t, k=10)) == 10  # 15 pairs exist; the 10 best are kept
    v = torch.eye(6)
    assert M.mean_over_pairs(v, [(0, 3)]) == pytest.approx(0.0)
    v[3] = v[0]
    assert M.mean_over_pairs(v, [(0, 3)]) == pytest.approx(1.0)


class _FixedLogits(nn.Module):
    """Stands in for Inception: returns prepared logits, one row per image, in call order."""

    def __init__(self, logits):
        super().__init__()
        self.logits, self.i = logits, 0
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        assert x.dtype == torch.uint8  # torchmetrics hands the classifier uint8 frames
        out = self.logits[self.i : self.i + x.shape[0]]
        self.i += x.shape[0]
        return out


def test_inception_score_uniform_vs_peaked():
    k, n = 5, 20
    frames = torch.rand(n, 3, 16, 16)
    uniform = InceptionJudge(_FixedLogits(torch.zeros(n, k)), "fixed").score(frames)[0]
    assert uniform == pytest.approx(1.0, abs=1e-4)
    peaked_logits = 50.0 * F.one_hot(torch.arange(n) % k, k).float()  # confident, classes balanced
    peaked = InceptionJudge(_FixedLogits(peaked_logits), "fixed").score(frames)[0]
    assert peaked == pytest.approx(k, rel=1e-3)
    probs = peaked_logits.softmax(-1)
    assert M.inception_score_from_probs(probs)[0] == pytest.approx(peaked, rel=1e-4)


def test_smoothness_and_seams():
    still = torch.full((8, 3, 4, 4), 0.5)
    assert M.smoothness(still) == pytest.approx(1.0)
    ramp = torch.linspace(0, 0.7, 8).view(8, 1, 1, 1).expand(8, 3, 4, 4).clone()
    ramp[4:] += 0.2  # a jump between frames 3 and 4: the chunk boundary of 4-frame chunks
    assert M.seam_ratio(ramp, 4) == pytest.approx(0.3 / 0.1, rel=1e-3)


# -- judges: loading and errors --------------------------------------------------------------------
def test_aesthetic_head_loads_safely_and_scores(tmp_path, tiny_clip_dir):
    head = nn.Linear(16, 1)
    torch.save(head.state_dict(), tmp_path / "head.pth")
    scorer = AestheticScorer.load(str(tiny_clip_dir), str(tmp_path / "head.pth"))
    frames = torch.rand(3, 3, 32, 32)
    expected = head(scorer.clip.embed_images(frames)).squeeze(-1) / 10
    assert torch.allclose(scorer.score(frames), expected, atol=1e-6)
    torch.save(nn.Linear(768, 1).state_dict(), tmp_path / "vitl.pth")
    with pytest.raises(EvalSetupError, match="--aesthetic-clip"):
        AestheticScorer.load(str(tiny_clip_dir), str(tmp_path / "vitl.pth"))
    torch.save({"not": "a tensor", "fn": print}, tmp_path / "evil.pth")  # weights_only refuses to unpickle it
    with pytest.raises(Exception, match="(?i)weights_only|unpickl"):
        AestheticScorer.load(str(tiny_clip_dir), str(tmp_path / "evil.pth"))


def test_missing_weights_name_the_metric_and_option(tmp_path):
    with pytest.raises(EvalSetupError, match="aesthetic.*--aesthetic-head"):
        Judges(EvalConfig(metrics=["aesthetic"]))
    with pytest.raises(EvalSetupError, match="inception_score.*--inception"):
        Judges(EvalConfig(inception=str(tmp_path / "nope.pth")))
    with pytest.raises(EvalSetupError, match="unknown metric"):
        Judges(EvalConfig(metrics=["fvd"]))
    j = Judges(EvalConfig())
    assert set(j.skipped) == {"aesthetic", "inception_score"}
    assert "--aesthetic-head" in j.skipped["aesthetic"]


# -- a generated project --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth_project(tmp_path_factory):
    from filmweaver.engine import StoryEngine
    from filmweaver.methods import method_config
    from filmweaver.models import load_models
    from filmweaver.script import parse_story
    from filmweaver.synth.stories import make_story

    script = make_story(1_000_123, min_shots=3, max_shots=3, frames=(8,)).to_script()
    out = tmp_path_factory.mktemp("proj") / "p"
    models = load_models()
    cfg = method_config("filmweaver", {"sampler": {"num_inference_steps": 2}})
    StoryEngine(models, out, story=parse_story(script), config=cfg, progress=False).generate()
    return out


def test_evaluate_run_records_model_and_protocol_for_every_value(synth_project):
    judges = Judges(EvalConfig(probe="builtin"))
    res = evaluate_run(synth_project, judges)
    on_disk = json.loads((synth_project / "metrics.json").read_text())
    assert on_disk["metrics"] == res["metrics"]
    assert (synth_project / "metrics.md").read_text().startswith("# ")
    ms = res["metrics"]
    for name in set(METRICS) - {"aesthetic", "inception_score"}:
        assert name in ms, name
    for name, m in ms.items():
        assert m["model"] and m["protocol"], name
    assert ms["consistency_overall"]["model"] == "filmweaver-synth-small/embedder"
    assert "ViCLIP" in ms["consistency_shots_all"]["protocol"]  # says it used the CLIP stand-in
    # the synthetic story names its character in the sheet: whole keyframes stand in for crops, stated
    assert ms["character_consistency"]["value"] is not None
    assert "no detector configured" in ms["character_consistency"]["preprocessing"]
    assert -1.0 <= ms["consistency_overall"]["value"] <= 1.0
    assert ms["seam_ratio"]["value"] is not None and ms["seam_ratio"]["n"] == 3  # 8 frames = 2 chunks of 4
    assert 0.0 <= ms["probe/gt_identity"]["value"] <= 1.0
    assert res["skipped"]["aesthetic"].startswith("not configured")
    assert res["versions"]["torch"] == torch.__version__


def test_eval_cli(synth_project):
    from filmweaver.cli import app

    r = CliRunner().invoke(app, ["eval", str(synth_project), "--probe", "none"])
    assert r.exit_code == 0, r.output
    assert "consistency_overall" in r.output
    assert "probe/" not in json.dumps(json.loads((synth_project / "metrics.json").read_text())["metrics"])
    r = CliRunner().invoke(app, ["eval", str(synth_project), "--metrics", "aesthetic"])
    assert r.exit_code == 2 and "--aesthetic-head" in r.output


def test_keyframe_first_generates_an_anchor_then_animates(tmp_path):
    from helpers import small_story

    from filmweaver.engine import StoryEngine
    from filmweaver.methods import method_config
    from filmweaver.models import load_models
    from filmweaver.script import parse_story

    story = small_story(n_scenes=1, shots_per_scene=2)
    story["scenes"][0]["cut"] = [True, False]
    engine = StoryEngine(load_models(), tmp_path / "kf", story=parse_story(story),
                         config=method_config("keyframe_first", {"sampler": {"num_inference_steps": 1}}), progress=False)
    engine.generate()
    shots = engine.project.shots
    first = shots[0]["chunks"]
    assert first[0]["chunk"] == "anchor" and first[0]["mode"] == "text"
    assert first[1]["mode"] == "temporal"  # the shot is animated from its anchor frame
    assert shots[0]["continuation"] == "keyframe_first"
    assert all(c["chunk"] != "anchor" for c in shots[1]["chunks"])  # cut: false continues the previous shot
    assert shots[1]["continuation"] == "mi2v"


# -- benchmark --------------------------------------------------------------------------------------




@pytest.mark.slow
def test_benchmark_writes_reports_resumes_and_renders(tmp_path):
    from filmweaver.eval.benchmark import run_benchmark
    from filmweaver.models import load_models
    from filmweaver.synth.stories import make_story

    scripts = []
    for k in range(1):  # one story: every method on it is what this test reads (shards: the test below)
        p = tmp_path / "scripts" / f"s{k}.json"
        p.parent.mkdir(exist_ok=True)
        p.write_text(json.dumps(make_story(1_000_200 + k, min_shots=3, max_shots=3, frames=(4,)).to_script()))
        scripts.append(p)
    methods = ["independent", "storymem", "filmweaver", "keyframe_first"]
    models = load_models()
    judges = Judges(EvalConfig(probe="builtin"))
    out = tmp_path / "bench"
    settings = {"sampler": {"num_inference_steps": 2}}
    report = run_benchmark(scripts, out, methods, models, judges, settings, progress=False)
    for name in ("report.json", "report.md", "report.html", "plots/metrics.png"):
        assert (out / name).is_file(), name
    assert set(report["means"]) == set(methods)
    md = (out / "report.md").read_text()
    assert md.count("\n| ") >= len(methods) and "**" in md
    assert "probe/gt_identity" in md
    # the reader is told the judge is the synthetic world's CLIP; the synthetic stories' words are all known
    assert any("synthetic world's CLIP" in n for n in report["notes"]) and "Notes:" in md
    assert not any("vocabulary" in n for n in report["notes"])
    # the independent method has no shot cache; the memory methods retrieve from earlier shots
    man = json.loads((out / "runs/independent/s0/manifest.json").read_text())
    assert all(not s["shot_cache"] for s in man["shots"])
    man = json.loads((out / "runs/filmweaver/s0/manifest.json").read_text())
    assert any(s["shot_cache"] for s in man["shots"][1:])

    # resumable: a rerun generates nothing and reuses every metrics.json
    mp4 = out / "runs/storymem/s0/shots/shot_002.mp4"
    before = (mp4.stat().st_mtime_ns, (out / "runs/storymem/s0/metrics.json").stat().st_mtime_ns)
    again = run_benchmark(scripts, out, methods, models, judges, settings, progress=False)
    assert (mp4.stat().st_mtime_ns, (out / "runs/storymem/s0/metrics.json").stat().st_mtime_ns) == before
    assert again["means"] == report["means"]

    browser = chromium()
    if browser is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium); report files checked above")
    page = (out / "report.html").resolve().as_uri()
    dom = subprocess.run([browser, *CHROME_FLAGS, f"--user-data-dir={tmp_path / 'chrome'}", "--virtual-time-budget=10000",
                          "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    plots = len(list((out / "plots").glob("*.png")))  # the metrics, and the entity gap curve (Zed recurs)
    assert plots == 2
    n_images = plots + 2 * len(scripts) * len(methods)  # + a storyboard and a memory sheet per run
    assert f'data-images-ok="{n_images}"' in dom, dom[:500]
    assert "data-js-error" not in dom
    assert dom.count('class="storyboard"') == len(scripts) * len(methods)
    shot = tmp_path / "report.png"
    subprocess.run([browser, *CHROME_FLAGS, f"--user-data-dir={tmp_path / 'chrome'}", "--window-size=1200,1600",
                    f"--screenshot={shot}", page], capture_output=True, timeout=120)
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


@pytest.mark.slow
def test_benchmark_shards_share_the_work_and_rank0_reports(tmp_path):
    from filmweaver.eval.benchmark import run_benchmark
    from filmweaver.models import load_models
    from filmweaver.synth.stories import make_story

    p = tmp_path / "s.json"
    p.write_text(json.dumps(make_story(1_000_300, min_shots=2, max_shots=2, frames=(4,)).to_script()))
    models, judges = load_models(), Judges(EvalConfig())
    out = tmp_path / "b"
    args = ([p], out, ["independent", "filmweaver"], models, judges, {"sampler": {"num_inference_steps": 1}})
    with pytest.raises(RuntimeError, match="runs/filmweaver/s/metrics.json is missing"):
        run_benchmark(*args, progress=False, shard=(0, 2), wait=lambda: None)  # rank 1 has not run yet
    assert (out / "runs/independent/s/metrics.json").is_file() and not (out / "runs/filmweaver/s").exists()
    assert run_benchmark(*args, progress=False, shard=(1, 2), wait=lambda: None) is None
    report = run_benchmark(*args, progress=False, shard=(0, 2), wait=lambda: None)
    assert set(report["stories"]["s"]) == {"independent", "filmweaver"} and (out / "report.html").is_file()


def test_recurrence_points_and_gap_curve():
    a, b = torch.eye(2)
    emb = {0: a[None], 1: b[None], 3: a[None], 20: torch.stack([a, b])}
    points = M.recurrence_points(list(emb.items()))
    assert points == [(1, 1, 0.0), (3, 2, 1.0), (20, 17, 0.5)]  # gap: shots since last seen; vs the first
    assert M.recurrence_points([(4, a[None])]) == []
    curve = M.gap_curve(points + [(5, 2, 0.0)])
    assert curve == [{"gap": "1", "mean": 0.0, "n": 1}, {"gap": "2-3", "mean": 0.5, "n": 2},
                     {"gap": "16-31", "mean": 0.5, "n": 1}]


@pytest.mark.slow
def test_benchmark_runs_entitybench_scripts_with_their_entity_sheets(tmp_path):
    """A folder of EntityBench-format scripts (written here) through the one benchmark runner: the
    entity method's memory follows each script's schedule, the report has per-entity consistency, the
    gap curve, and says the generator is the built-in model."""
    from helpers import entitybench_story

    from filmweaver.eval.benchmark import run_benchmark
    from filmweaver.models import load_models

    scripts = []
    for k, layout in enumerate([(2, 1, 2), (1, 2, 1, 1)]):
        p = tmp_path / "entitybench" / f"episode{k}.json"
        p.parent.mkdir(exist_ok=True)
        p.write_text(json.dumps(entitybench_story(layout)))
        scripts.append(p)
    judges = Judges(EvalConfig(detector="test_entities:fake_detector"))
    out = tmp_path / "bench"
    report = run_benchmark(scripts, out, ["entity"], load_models(), judges,
                           {"sampler": {"num_inference_steps": 2}, "keyframes": {"dedupe_threshold": 1.01}},
                           progress=False)
    metrics = report["stories"]["episode0"]["entity"]["metrics"]["entity_consistency"]
    assert metrics["value"] is not None and set(metrics["per_entity"]) == {"Mira", "Tomas"}
    assert "crops from detector halves" in metrics["preprocessing"]
    assert report["entity_gap"]["entity"] and all(b["n"] > 0 for b in report["entity_gap"]["entity"])
    md = (out / "report.md").read_text()
    assert "entity_consistency" in md and "Entity consistency by recurrence gap" in md
    assert (out / "plots" / "entity_gap.png").is_file()
    assert any("built-in model" in n for n in report["notes"])
    manifest = json.loads((out / "runs" / "entity" / "episode0" / "manifest.json").read_text())
    assert any(e["role"] == "entity" for s in manifest["shots"] for e in s["shot_cache"])
    assert manifest["shots"][1]["entities"]["characters"] == ["Mira", "Tomas"]


def test_entity_consistency_says_why_it_has_no_crops():
    """No crops is explained by what was missing: named characters, a detector's finds, or (without a
    detector) a shot of one character."""
    from types import SimpleNamespace as View

    from filmweaver.eval.run import _no_crops_reason

    two = [View(characters=["Mira", "Tomas"]), View(characters=[])]
    found_none = _no_crops_reason(two, View(name="opencv-hog"))
    assert "opencv-hog found no character" in found_none and "1 shots" in found_none
    assert "single named character" in _no_crops_reason(two, None)
    assert "no shot shows a character the script names" in _no_crops_reason([View(characters=[])], View(name="x"))
