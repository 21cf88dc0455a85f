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


# -- entities: the sheet, the per-shot schedule, EntityBench's format -----------------------------------
def test_an_entitybench_script_loads_unchanged_with_its_sheet_and_schedule():
    from helpers import entitybench_story

    from filmweaver.script import entity_warnings

    raw = entitybench_story()
    story = parse_story(raw, file="harbour.json")
    sheet = {e.name: e for e in story.entities()}
    assert sheet["Mira"].kind == "character" and sheet["Mira"].label == "Character 1"
    assert sheet["The Harbour"].kind == "location" and sheet["the brass lantern"].kind == "object"
    assert sheet["Tomas"].description == "a short man in a green hat"
    assert sheet["the fishing net"].kind == "object" and not sheet["the fishing net"].description
    shots = story.shots()
    assert [s.entities.characters for s in shots] == [["Mira"], ["Mira", "Tomas"], ["Tomas"], ["Mira"], ["Tomas", "Mira"]]
    assert shots[0].entities.locations == ["The Harbour"] and shots[2].entities.objects == ["the fishing net"]
    assert all(s.entities.scheduled for s in shots)
    # the description lines stay in the prompt; the action is what follows them
    assert shots[0].prompt.startswith("Mira: a tall woman") and shots[0].action.startswith("In `The Harbour`")
    assert shots[3].action == shots[3].prompt  # nobody new: no prefix
    assert [str(w) for w in entity_warnings(story)] == [
        "entity_schedule[\"2:1\"].objects[0]: object 'the fishing net' is scheduled but never described"]
    assert story.model_extra["_name_map"]["Character 2"] == "Tomas"  # unknown keys are kept


@pytest.mark.parametrize("edit, path, words", [
    (lambda d: d["entity_schedule"].update({"3:3": {"characters": ["Mira"]}}), 'entity_schedule["3:3"]',
     "scene 3 has 2 shot(s), not a shot 3"),
    (lambda d: d["entity_schedule"].update({"9:1": {}}), 'entity_schedule["9:1"]', "no scene has scene_num 9"),
    (lambda d: d["entity_schedule"].update({"first": {}}), 'entity_schedule["first"]', 'expected a key "scene_num:shot"'),
    (lambda d: d["entity_schedule"]["1:2"]["characters"].append("Mria"), 'entity_schedule["1:2"].characters[2]',
     "unknown character 'Mria'"),
    (lambda d: d["entity_descriptions"]["Character 1"].update({"name": " "}), 'entity_descriptions["Character 1"].name',
     "non-empty name"),
])
def test_a_bad_schedule_is_reported_with_its_json_path(edit, path, words):
    from helpers import entitybench_story

    raw = entitybench_story()
    edit(raw)
    err, text = _errors(raw)
    assert any(i.path == path and words in i.message for i in err.issues), text


def test_without_a_schedule_a_shot_shows_its_options_and_the_sheet_characters_its_prompt_names():
    raw = small_story(3)
    raw["characters"] = [{"name": "Ada"}, {"name": "Bo"}]
    raw["locations"] = [{"name": "the mill"}]
    raw["objects"] = [{"name": "a kite"}]
    raw["scenes"][0]["video_prompts"][0] = "Ada waves at Bo."
    raw["scenes"][0]["shots"] = [{"location": "the mill", "objects": ["a kite"]}] + [{}] * (len(raw["scenes"][0]["video_prompts"]) - 1)
    story = parse_story(raw)
    first = story.shots()[0].entities
    assert (first.characters, first.locations, first.objects, first.scheduled) == (["Ada", "Bo"], ["the mill"], ["a kite"], False)
    raw["scenes"][0]["shots"][0] = {"objects": ["a kitten"]}
    err, _ = _errors(raw)
    assert [i.path for i in err.issues] == ["scenes[0].shots[0].objects[0]"]


def test_validate_shows_each_shots_entities_and_json_for_tools(tmp_path):
    from helpers import entitybench_story

    path = tmp_path / "harbour.json"
    path.write_text(json.dumps(entitybench_story()))
    res = CliRunner().invoke(app, ["validate", str(path)])
    assert res.exit_code == 0, res.output
    assert "Mira, Tomas @ The Harbour" in res.output and "objects: the brass lantern, the fishing net" in res.output
    assert "warning:" in res.output and "the fishing net" in res.output
    res = CliRunner().invoke(app, ["validate", "--json", str(path)])
    assert res.exit_code == 0, res.output
    parsed = json.loads(res.stdout)
    assert [s["characters"] for s in parsed["shot_list"]][:2] == [["Mira"], ["Mira", "Tomas"]]
    assert parsed["shot_list"][2]["schedule_key"] == "2:1" and parsed["shot_list"][2]["objects"] == ["the fishing net"]
    assert {e["name"]: e["kind"] for e in parsed["entities"]}["The Harbour"] == "location"
