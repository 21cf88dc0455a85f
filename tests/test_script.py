import json

import pytest
from helpers import ST_BENCH, small_story
from typer.testing import CliRunner

from filmweaver.cli import app
from filmweaver.script import ScriptError, load_story, parse_story

ST_FILES = sorted(ST_BENCH.glob("*.json"))


def test_st_bench_is_present():
    assert len(ST_FILES) >= 10, f"expected the ST-Bench scripts in {ST_BENCH}"


@pytest.mark.parametrize("path", ST_FILES, ids=lambda p: p.name)
def test_every_st_bench_script_validates(path):
    story = load_story(path)
    raw = json.loads(path.read_text())
    shots = story.shots()
    assert len(shots) == sum(len(s["video_prompts"]) for s in raw["scenes"])
    assert shots[0].cut is True
    flat_cuts = [c for s in raw["scenes"] for c in s["cut"]]
    assert [s.cut for s in shots] == flat_cuts
    assert [s.prompt for s in shots] == [p for s in raw["scenes"] for p in s["video_prompts"]]


def _errors(data, tmp_path=None):
    with pytest.raises(ScriptError) as exc:
        parse_story(data, file="story.json", base_dir=tmp_path)
    return exc.value, str(exc.value)


def test_wrong_type_names_json_path():
    data = small_story(n_scenes=3)
    data["scenes"][2]["cut"][1] = "no"
    err, text = _errors(data)
    assert "scenes[2].cut[1]: expected bool" in text
    assert "story.json" in text


def test_length_mismatch():
    data = small_story()
    data["scenes"][1]["cut"] = [True]
    data["scenes"][0]["first_frame_prompt"] = ["only one", "two", "three"]
    err, text = _errors(data)
    assert "scenes[1].cut: expected 2 entries" in text
    assert "scenes[0].first_frame_prompt: expected 2 entries" in text
    assert len(err.issues) == 2  # every problem at once


def test_first_cut_must_be_true():
    data = small_story()
    data["scenes"][0]["cut"][0] = False
    _, text = _errors(data)
    assert "scenes[0].cut[0]" in text and "must be a cut" in text


def test_empty_prompt_and_missing_field():
    data = small_story()
    data["scenes"][1]["video_prompts"][1] = "   "
    del data["scenes"][0]["scene_num"]
    _, text = _errors(data)
    assert "scenes[0].scene_num: required field is missing" in text
    data = small_story()
    data["scenes"][1]["video_prompts"][1] = "   "
    _, text = _errors(data)
    assert "scenes[1].video_prompts[1]: empty prompt" in text


def test_unknown_character_and_missing_reference(tmp_path):
    data = small_story(characters=[{"name": "Fox", "reference_images": ["fox.png"]}])
    data["scenes"][0]["shots"] = [{"characters": ["Fox"]}, {"characters": ["Wolf"], "location": "Lake"}]
    _, text = _errors(data, tmp_path)
    assert "characters[0].reference_images[0]: reference image not found" in text
    assert "scenes[0].shots[1].characters[0]: unknown character 'Wolf' (known: Fox)" in text
    assert "scenes[0].shots[1].location: unknown location 'Lake'" in text


def test_extensions_load(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "fox.png")
    data = small_story(seed=7, negative_prompt="blurry",
                       characters=[{"name": "Fox", "description": "a red fox", "reference_images": ["fox.png"]}],
                       locations=[{"name": "Forest", "reference_images": []}])
    data["scenes"][0]["shots"] = [{"duration_s": 2.5, "seed": 3, "characters": ["Fox"]},
                                  {"num_frames": 33, "location": "Forest", "negative_prompt": "dark"}]
    story = parse_story(data, base_dir=tmp_path)
    shots = story.shots()
    assert shots[0].options.seed == 3 and shots[0].options.duration_s == 2.5
    assert shots[1].negative_prompt == "dark" and shots[2].negative_prompt == "blurry"
    assert story.references() == [("character", "Fox", tmp_path / "fox.png")]


def test_duration_and_frames_conflict():
    data = small_story()
    data["scenes"][0]["shots"] = [{"duration_s": 1.0, "num_frames": 9}, {"duration_s": -1}]
    _, text = _errors(data)
    assert "scenes[0].shots[0]: give duration_s or num_frames" in text
    assert "scenes[0].shots[1].duration_s: expected a positive duration" in text


def test_invalid_json_and_missing_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"scenes": [')
    with pytest.raises(ScriptError, match="invalid JSON at line 1"):
        load_story(bad)
    with pytest.raises(ScriptError, match="file not found"):
        load_story(tmp_path / "nope.json")


def test_cli_validate(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["validate", str(ST_FILES[0])])
    assert ok.exit_code == 0, ok.output
    assert "shot  1" in ok.output
    data = small_story(n_scenes=3)
    data["scenes"][2]["cut"][1] = 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    res = runner.invoke(app, ["validate", str(bad)])
    assert res.exit_code == 1
    assert "scenes[2].cut[1]: expected bool" in res.output and "bad.json" in res.output
