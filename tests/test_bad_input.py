"""Bad input gets a one-line error naming the place (file and JSON path, or option), checked before any
model loads; nothing finished is lost when the disk fails. Each case of the reliability review is here,
plus a fuzz test (hypothesis, derandomized: the same examples every run) over scripts and options."""

import errno
import json
import math
import os

import pytest
from helpers import small_story
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from filmweaver import cli
from filmweaver.cli import app
from filmweaver.script import MAX_SEED, ScriptError, load_story, parse_story
from filmweaver.synth.architecture import synth_architecture


def _errors(data, **kw) -> str:
    with pytest.raises(ScriptError) as e:
        parse_story(data, file="story.json", **kw)
    return str(e.value)


# -- scripts ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("options, where, says", [
    ({"num_frames": 1_000_000_000}, "scenes[0].shots[0].num_frames", "expected 1 to 10000 frames"),
    ({"duration_s": math.nan}, "scenes[0].shots[0].duration_s", "got nan"),
    ({"duration_s": math.inf}, "scenes[0].shots[0].duration_s", "got inf"),
    ({"duration_s": 3600.0}, "scenes[0].shots[0].duration_s", "at most 600 s"),
    ({"seed": 10**30}, "scenes[0].shots[0].seed", "from 0 to 2**63-1"),
    ({"seed": -1}, "scenes[0].shots[0].seed", "from 0 to 2**63-1"),
])
def test_shot_options_out_of_bounds_name_their_json_path(options, where, says):
    story = small_story()
    story["scenes"][0]["shots"] = [options, {}]
    text = _errors(story)
    assert f"{where}: " in text and says in text


def test_story_seed_bounds():
    assert "seed: expected a seed from 0 to 2**63-1" in _errors(small_story(seed=2**64))
    assert parse_story(small_story(seed=MAX_SEED)).seed == MAX_SEED


def _with_reference(tmp_path, ref: str) -> tuple:
    story = small_story(characters=[{"name": "Fox", "reference_images": [ref]}])
    path = tmp_path / "story" / "story.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(story))
    return path, "characters[0].reference_images[0]: "


def test_reference_images_must_be_images_inside_the_story_folder(tmp_path):
    story_dir = tmp_path / "story"
    story_dir.mkdir()
    (story_dir / "empty.png").write_bytes(b"")
    (story_dir / "text.png").write_text("not an image")
    os.symlink("/etc/passwd", story_dir / "link.png")
    outside = tmp_path / "outside.png"
    Image.new("RGB", (8, 8), "red").save(outside)
    cases = {"empty.png": "is empty (0 bytes)", "text.png": "is not a readable image",
             "link.png": "lies outside the story's folder", "/etc/hostname": "lies outside the story's folder",
             "../outside.png": "lies outside the story's folder"}
    for ref, says in cases.items():
        path, where = _with_reference(tmp_path, ref)
        with pytest.raises(ScriptError) as e:
            load_story(path)
        assert where in str(e.value) and says in str(e.value), ref
    # the explicit flag lets an outside image in, and only a real image
    path, _ = _with_reference(tmp_path, "../outside.png")
    assert load_story(path, allow_external_references=True).references()[0][2].name == "outside.png"
    path, where = _with_reference(tmp_path, "link.png")
    with pytest.raises(ScriptError, match="is not a readable image"):
        load_story(path, allow_external_references=True)
    res = CliRunner().invoke(app, ["validate", str(_with_reference(tmp_path, "../outside.png")[0]),
                                   "--allow-external-references"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("content, says", [
    ('{"story_name": "caf\xe9", "scenes": []}'.encode("latin-1"), "not UTF-8 text (byte 0xe9 at offset 19)"),
    (b"[" * 100_000 + b"]" * 100_000, "nested more than"),
    (b'{"scenes": [], "seed": ' + b"9" * 5000 + b"}", "invalid JSON: Exceeds the limit"),
    (b'{"story_name": "\\ud800", "scenes": []}', "story_name: unpaired surrogate"),
    (json.dumps({"scenes": [{"a": {"b": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}]}).encode(),
     "nested more than 32 levels deep"),
    (b"", "invalid JSON at line 1 column 1"),
])
def test_unreadable_files_are_script_errors(tmp_path, content, says):
    path = tmp_path / "story.json"
    path.write_bytes(content)
    with pytest.raises(ScriptError) as e:
        load_story(path)
    assert says in str(e.value) and str(path) in str(e.value)


def test_a_utf8_byte_order_mark_loads(tmp_path):
    path = tmp_path / "story.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(small_story()).encode())
    assert load_story(path).story_name == "Fox"


# -- options: a one-line error naming the option, before any model loads --------------------------
class _ModelsWouldLoad(Exception):
    pass


@pytest.fixture
def no_models(monkeypatch):
    """Model loading raises: a case that passes every check reaches it, a bad one never does."""
    def refuse(*_):
        raise _ModelsWouldLoad

    monkeypatch.setattr(cli, "_load_models", refuse)


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _one_line_error(res, *says):
    """Exit code 2, no traceback, and the error is the output's last line, whole."""
    out = res.output.strip()
    assert res.exit_code == 2 and not isinstance(res.exception, _ModelsWouldLoad), out
    last = out.splitlines()[-1]
    assert "Traceback" not in out and last.startswith("error: "), out
    for s in says:
        assert s in last, out


@pytest.mark.parametrize("args, says", [
    (["--steps", "0"], "--steps 0"), (["--height", "0"], "--height 0"),
    (["--height", "100000", "--width", "100000"], "--height 100000"), (["--width", "100"], "--width 100"),
    (["--policy", "bogus"], "--policy 'bogus'"), (["--scheduler", "x"], "--scheduler 'x'"),
    (["--continuation", "x"], "--continuation 'x'"), (["--step-cache", "x"], "--step-cache 'x'"),
    (["--dtype", "x"], "--dtype 'x'"), (["--memory-compression", "3"], "--memory-compression 3"),
    (["--max-shots", "-1"], "--max-shots -1"), (["--k", "-1"], "--k -1"), (["--k", "0"], "--k 0"),
    (["--seed", str(2**70)], "--seed"), (["--seed", "-1"], "--seed -1"), (["--guidance", "nan"], "--guidance nan"),
    (["--shift", "inf"], "--shift inf"), (["--chunks", "0"], "--chunks 0"), (["--device", "tpu"], "--device tpu"),
    (["--offload", "x"], "--offload 'x'"), (["--quality-scorer", "x y"], "--quality-scorer"),
])
def test_generate_options_are_checked_before_models_load(tmp_path, story_file, no_models, args, says):
    _one_line_error(_invoke("generate", story_file, "-o", tmp_path / "p", "--preset", "tiny", *args), says)
    assert not (tmp_path / "p").exists()  # nothing was made


def test_device_cuda_on_a_cpu_torch(tmp_path, story_file, no_models):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _one_line_error(_invoke("generate", story_file, "-o", tmp_path / "p", "--device", "cuda"), "--device cuda")


def test_output_path_that_is_a_file(tmp_path, story_file, no_models):
    (tmp_path / "f").write_text("x")
    _one_line_error(_invoke("generate", story_file, "-o", tmp_path / "f"), "is a file, not a project directory")


def test_follow_up_options_are_checked_against_the_project_before_models_load(tmp_path, story_file, monkeypatch):
    out = tmp_path / "p"
    assert _invoke("-q", "generate", story_file, "-o", out, "--preset", "tiny", "--max-shots", "1").exit_code == 0
    monkeypatch.setattr(cli, "_load_models", lambda *_: (_ for _ in ()).throw(_ModelsWouldLoad()))
    cases = [(["extend", out, "--shot", "1", "--chunks", "-2"], "--chunks -2"),
             (["extend", out, "--shot", "0"], "--shot 0"), (["extend", out, "--shot", "99"], "the story has 4 shots"),
             (["extend", out, "--shot", "2"], "not finished"), (["regenerate", out, "--shot", "9"], "--shot 9"),
             (["regenerate", out, "--shot", "1", "--seed", "-5"], "--seed -5"),
             (["regenerate", out, "--shot", "1", "--prompt", " "], "--prompt"),
             (["next", tmp_path / "nothing"], "is not a filmweaver project")]
    for args, says in cases:
        _one_line_error(_invoke(*args), says)


# -- the disk fails ---------------------------------------------------------------------------------
def _fail_writes_after(monkeypatch, n_ok: int, err: int):
    """The n_ok-th atomic write on succeeds no more: ``err`` (ENOSPC: disk full, EROFS: read-only)."""
    from filmweaver import io

    real = io.atomic_path
    calls = {"n": 0}

    def flaky(path, *a, **k):
        calls["n"] += 1
        if calls["n"] > n_ok:
            raise OSError(err, os.strerror(err), str(path))
        return real(path, *a, **k)

    for module in ("filmweaver.io", "filmweaver.project", "filmweaver.engine"):
        if hasattr(__import__(module, fromlist=["x"]), "atomic_path"):
            monkeypatch.setattr(f"{module}.atomic_path", flaky)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS])
def test_a_failing_disk_is_one_line_and_loses_nothing_finished(tmp_path, story_file, monkeypatch, err):
    out = tmp_path / "p"
    assert _invoke("-q", "generate", story_file, "-o", out, "--preset", "tiny", "--max-shots", "2").exit_code == 0
    done = json.loads((out / "manifest.json").read_text())
    with monkeypatch.context() as m:
        _fail_writes_after(m, 3, err)
        res = _invoke("-q", "generate", story_file, "-o", out, "--preset", "tiny")
    _one_line_error(res, str(out), os.strerror(err), "nothing finished was lost")
    after = json.loads((out / "manifest.json").read_text())
    assert [r["status"] for r in after["shots"][:2]] == [r["status"] for r in done["shots"]] == ["done", "done"]
    res = _invoke("generate", story_file, "-o", out, "--preset", "tiny")
    assert res.exit_code == 0 and "generated 2 shot(s); 4/4 done" in res.output, res.output


# -- a closed vocabulary says what it cannot read -----------------------------------------------------
def test_the_built_in_vocabulary_reports_unknown_words_and_cut_prompts(tmp_path, caplog):
    from helpers import ST_BENCH

    from filmweaver.engine import EngineConfig, StoryEngine
    from filmweaver.engine import story_engine as engine_module
    from filmweaver.eval.judges import load_clip_judge
    from filmweaver.eval.run import EvalConfig, Judges, judge_notes

    story = load_story(ST_BENCH / "dog.json")
    prompts = [s.prompt for s in story.shots()]
    models = synth_architecture(size="test")
    cov = models.prompt_encoder.coverage(prompts)
    assert 0.3 < cov.unknown_share < 1 and cov.truncated > 0 and cov.prompts == len(set(prompts))
    assert "outside its vocabulary" in cov.warning("x") and f"cut at {cov.max_length} tokens" in cov.warning("x")
    # the synthetic world's own prompts are fully seen
    from filmweaver.synth.stories import make_story

    own = [s.prompt for s in parse_story(make_story(7, min_shots=3, max_shots=3, frames=(4,)).to_script()).shots()]
    assert models.prompt_encoder.coverage(own).warning("x") is None
    engine_module._VOCABULARY_WARNED.discard(models.model_id)
    with caplog.at_level("WARNING", logger="filmweaver"):
        StoryEngine(models, tmp_path / "p", story=story, config=EngineConfig(), progress=False)
    assert any("outside its vocabulary" in r.getMessage() for r in caplog.records)
    judges = Judges(EvalConfig(clip=None))
    judges.clip = load_clip_judge("builtin")
    notes = judge_notes(judges, prompts)
    assert "synthetic world's CLIP" in notes[0] and "outside its vocabulary" in notes[1]


# -- fuzz ---------------------------------------------------------------------------------------------
_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12)
_keys = st.sampled_from(["story_name", "scenes", "seed", "characters", "locations", "negative_prompt"])
_scene_keys = st.sampled_from(["scene_num", "video_prompts", "first_frame_prompt", "cut", "shots"])
_shot_keys = st.sampled_from(["duration_s", "num_frames", "seed", "characters", "location", "negative_prompt"])
_FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@_FUZZ
@given(st.data())
def test_fuzzed_scripts_load_or_raise_a_script_error(data):
    story = small_story()
    kind = data.draw(st.sampled_from(["story", "scene", "shot", "whole"]))
    if kind == "whole":
        story = data.draw(_json)
    elif kind == "story":
        story[data.draw(_keys)] = data.draw(_json)
    elif kind == "scene":
        story["scenes"][0][data.draw(_scene_keys)] = data.draw(_json)
    else:
        story["scenes"][0]["shots"] = [{data.draw(_shot_keys): data.draw(_json)}, {}]
    try:
        parse_story(story, file="fuzz.json")
    except ScriptError as e:
        assert str(e).startswith("fuzz.json: ")


_OPTIONS = ["--steps", "--k", "--height", "--width", "--seed", "--guidance", "--shift", "--chunks", "--policy",
            "--scheduler", "--continuation", "--memory-compression", "--per-shot", "--memory-guidance",
            "--max-shots", "--step-cache", "--step-cache-threshold", "--method", "--quality-threshold", "--dtype",
            "--device", "--offload"]
_values = (st.integers(min_value=-2**66, max_value=2**66).map(str) | st.sampled_from(["nan", "inf", "-inf", "", "x"])
           | st.floats(allow_nan=False).map(repr) | st.sampled_from(["topk", "euler", "mm2v", "storymem", "cpu"]))


@_FUZZ
@given(st.lists(st.tuples(st.sampled_from(_OPTIONS), _values), min_size=1, max_size=3))
def test_fuzzed_generate_options_are_an_error_or_reach_model_loading(tmp_path, story_file, no_models, opts):
    args = [x for pair in opts for x in pair]
    res = _invoke("generate", story_file, "-o", tmp_path / "p", "--preset", "tiny", *args)
    if isinstance(res.exception, _ModelsWouldLoad):
        return
    # typer's own usage errors (a value that is not a number) are boxed, exit code 2; ours are one line
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit | None), (args, res.output, res.exception)
    assert "Traceback" not in res.output


# -- engine settings from a file and --set ---------------------------------------------------------------
def test_generate_takes_a_settings_file_and_overrides_under_its_options(tmp_path, story_file):
    settings = tmp_path / "engine.yaml"
    settings.write_text("shot_cache: {k: 2, policy: topk}\nsampler: {num_inference_steps: 3}\nseed: 7\n")
    out = tmp_path / "p"
    res = _invoke("-q", "generate", story_file, "-o", out, "--preset", "tiny", "--max-shots", "1", "--config", settings,
                  "--set", "sampler.num_inference_steps=2", "--set", "keyframes.max_per_shot=1", "--seed", "5")
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "manifest.json").read_text())["config"]
    # the file, then --set over it, then the options over both
    assert cfg["shot_cache"]["k"] == 2 and cfg["sampler"]["num_inference_steps"] == 2
    assert cfg["keyframes"]["max_per_shot"] == 1 and cfg["seed"] == 5


@pytest.mark.parametrize("args, says", [
    (["--set", "shot_cache.kk=3"], "unknown engine setting(s) shot_cache.kk"),
    (["--set", "nonsense"], "expected dotted.key=value"),
    (["--set", "shot_cache.k=0"], "--k 0"),
    (["--config", "missing.yaml"], "cannot read it"),
])
def test_bad_settings_are_one_line_before_models_load(tmp_path, story_file, no_models, args, says):
    _one_line_error(_invoke("generate", story_file, "-o", tmp_path / "p", "--preset", "tiny", *args), says)
