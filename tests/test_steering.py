"""Memory steering (pin, ban, references per shot), story edits on a made project, the Python API."""

import json

import numpy as np
import pytest
import torch
from helpers import entitybench_story, small_story
from PIL import Image

from filmweaver import FilmPipeline, script_edit
from filmweaver.models import FilmModels
from filmweaver.script import parse_story


@pytest.fixture
def film(tmp_path):
    pipe = FilmPipeline(FilmModels.tiny(seed=0))
    film = pipe.open(tmp_path / "p", story=small_story(n_scenes=2, shots_per_scene=2))
    film.generate()
    return film


def _memory(film, shot):
    return [(m.keyframe, m.role) for m in film.shots[shot - 1].memory]


def test_generate_returns_frames_and_progress(tmp_path):
    pipe = FilmPipeline(FilmModels.tiny(seed=0))
    events = []
    out = pipe(small_story(), tmp_path / "p", callback=events.append)
    assert out.shots == [1, 2, 3, 4] and len(out.frames) == 4
    on_disk = pipe.open(tmp_path / "p").frames(2)
    assert out.frames[1].shape == on_disk.shape  # [F, 3, H, W]
    assert (out.frames[1] - on_disk).abs().mean() < 0.05  # the H.264 copy of the same frames
    steps = [e for e in events if e.stage == "step"]
    assert {e.shot for e in steps} == {1, 2, 3, 4} and steps[-1].step == steps[-1].num_steps
    assert [e.shot for e in events if e.stage == "shot_done"] == [1, 2, 3, 4]


def test_pin_ban_change_memory_and_fingerprints(film):
    first_kf = film.shots[0].keyframes[0].name
    assert first_kf in [k for k, _ in _memory(film, 3)]
    assert film.ban(3, first_kf) == [3, 4]  # the shot and every later one saw the old memory
    assert [s.status for s in film.shots] == ["done", "done", "stale", "stale"]
    film.generate()
    assert first_kf not in [k for k, _ in _memory(film, 3)]
    assert first_kf in [k for k, _ in _memory(film, 4)]  # a ban of one shot only
    # pin wins over an earlier ban; a pin of one shot does not reach the next
    film.pin(3, first_kf)
    film.generate()
    assert (first_kf, "pinned") in _memory(film, 3)
    # the manifest records the edits and a second run makes nothing (the edits are in the fingerprints)
    assert [e.action for e in film.memory_edits] == ["pin"]
    assert film.generate().shots == []
    film.unpin(3, first_kf)
    assert film.shots[2].status == "stale"


def test_pin_unknown_keyframe_names_the_bank(film):
    with pytest.raises(ValueError, match="not in shot 2's bank.*shot001_f"):
        film.pin(2, "shot003_f0000")  # a later shot's keyframe cannot be in shot 2's memory
    with pytest.raises(ValueError, match="shot 9 does not exist"):
        film.ban(9, "shot001_f0000")


def test_added_reference_is_in_memory_and_confined(film, tmp_path):
    img = tmp_path / "ref.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(img)
    rel = film.add_reference(2, img)
    assert rel.startswith("references/") and (film.project.root / rel).is_file()
    film.generate()
    refs = [(k, r) for k, r in _memory(film, 2) if k.startswith("ref_")]
    assert refs and refs[0][1] == "pinned"
    assert film.picture(refs[0][0]) == film.project.root / rel
    not_image = tmp_path / "evil.png"
    not_image.write_text("#!/bin/sh\n")
    with pytest.raises(ValueError, match="evil.png: not a readable PNG"):
        film.add_reference(2, not_image)
    with pytest.raises(ValueError, match="not an entity"):
        film.add_reference(2, img, label="Nobody")


def test_story_edits_keep_what_holds(film):
    before = {s.number: film.project.shot_record(s.number - 1)["finished_at"] for s in film.shots}
    film.insert_shot(3, "A new shot in the middle.")
    assert [s.status for s in film.shots] == ["done", "done", "stale", "stale", "pending"]
    film.generate()
    assert [s.status for s in film.shots] == ["done"] * 5
    assert film.project.shot_record(0)["finished_at"] == before[1]  # untouched: not made again
    film.move_shot(5, 1)
    assert [s.status for s in film.shots] == ["stale"] * 5
    film.generate()
    film.delete_shot(5)
    assert len(film.shots) == 4 and [s.status for s in film.shots] == ["done"] * 4
    assert not film.project.shot_video(4).exists()  # the dropped shot's files are gone
    film.edit_shot(4, prompt="Another ending.")
    assert [s.status for s in film.shots] == ["done", "done", "done", "stale"]


def test_move_follows_pins_and_overrides(film):
    film.regenerate(4, seed=99)
    film.ban(4, film.shots[0].keyframes[0].name)
    film.move_shot(4, 2)
    m = film.project.manifest
    assert m["overrides"]["1"]["seed"] == 99 and m["memory_edits"][0]["shot"] == 1


def test_script_edits_keep_entitybench_schedule():
    doc = entitybench_story()
    keys = list(doc["entity_schedule"])
    first_scene_second = doc["entity_schedule"][keys[1]]
    new, mapping = script_edit.delete_shot(doc, 0)
    story = parse_story(new)
    assert mapping[0] is None and mapping[1] == 0
    assert story.shots()[0].entities.characters == first_scene_second["characters"]
    moved, mapping = script_edit.move_shot(doc, 0, len(story.shots()))
    assert parse_story(moved).shots()[-1].prompt == parse_story(doc).shots()[0].prompt
    inserted, _ = script_edit.insert_shot(doc, 1, "Tomas waits.", entities={"characters": ["Tomas"]})
    s = parse_story(inserted).shots()[1]
    assert s.prompt == "Tomas waits." and s.entities.characters == ["Tomas"]
    assert json.dumps(doc) == json.dumps(entitybench_story())  # the input document is not changed


def test_cli_pin_needs_no_model_and_reports(film, capsys):
    from typer.testing import CliRunner

    from filmweaver.cli import app

    root = str(film.project.root)
    kf = film.shots[0].keyframes[0].name
    r = CliRunner().invoke(app, ["pin", root, kf, "--shot", "2", "--onward"])
    assert r.exit_code == 0 and "stale now: [2, 3, 4]" in r.output
    r = CliRunner().invoke(app, ["ban", root, "nope", "--shot", "2"])
    assert r.exit_code != 0 and "'nope' is not in shot 2's bank" in r.output
    r = CliRunner().invoke(app, ["info", root])
    assert f"memory edit: pin {kf} for shot 2 onward" in r.output
    assert torch.is_tensor(film.frames(1))
