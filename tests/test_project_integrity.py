"""A project remembers how its film was made, and cannot be silently corrupted.

Follow-up commands (``next``, ``extend``, ``regenerate``) reuse the recorded models (LoRA included) and
the project's own copy of its story and reference images; one writer at a time; damaged files are
detected and redone; interrupted writes are cleaned up."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import small_story
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from filmweaver.cli import app


def _latents(project, number):
    # a copy: load_file maps the file, and some tests then damage it in place
    return load_file(str(project / "shots" / f"shot_{number:03d}.safetensors"))["latents"].clone()


def _manifest(project):
    return json.loads((project / "manifest.json").read_text())


def _cli(*args, ok=True):
    res = CliRunner().invoke(app, [str(a) for a in args])
    if ok:
        assert res.exit_code == 0, res.output + repr(res.exception)
    return res


@pytest.fixture
def lora_file(tmp_path):
    """A StoryMem-layout LoRA for the tiny preset's transformer."""
    from test_lora import storymem_state_dict

    from filmweaver.models import FilmModels

    path = tmp_path / "memory_lora.pth"
    torch.save(storymem_state_dict(FilmModels.tiny().backbone.transformer, rank=2), path)
    return path


@pytest.fixture
def story_with_reference(tmp_path):
    """A three-shot story (a cut, a continuation, a cut) whose character has a reference image."""
    folder = tmp_path / "script"
    folder.mkdir()
    Image.new("RGB", (40, 40), (200, 40, 40)).save(folder / "fox.png")
    data = small_story(n_scenes=2, shots_per_scene=2)
    data["scenes"][1]["video_prompts"] = data["scenes"][1]["video_prompts"][:1]
    data["scenes"][1]["first_frame_prompt"] = data["scenes"][1]["first_frame_prompt"][:1]
    data["scenes"][1]["cut"] = [True]
    data["characters"] = [{"name": "Fox", "description": "a red fox", "reference_images": ["fox.png"]}]
    path = folder / "story.json"
    path.write_text(json.dumps(data))
    return path


def test_follow_ups_reuse_the_lora_and_the_projects_own_story(tmp_path, lora_file, story_with_reference,
                                                              monkeypatch):
    whole, part = tmp_path / "whole", tmp_path / "part"
    common = ["--preset", "tiny", "--lora", lora_file, "--device", "cpu"]
    _cli("generate", story_with_reference, "-o", whole, *common)
    _cli("generate", story_with_reference, "-o", part, *common, "--max-shots", "1")
    setup = _manifest(part)["model"]["setup"]
    assert setup["lora"] == str(lora_file.resolve()) and len(setup["lora_sha256"]) == 64
    # the project holds its story and reference image: the script's folder can go, and follow-ups run
    # from another directory without naming the model again
    (story_with_reference.parent / "fox.png").rename(tmp_path / "moved.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert json.loads((part / "story.json").read_text())["characters"][0]["reference_images"][0].startswith("references/")
    _cli("next", part)
    _cli("next", part)
    for n in (1, 2, 3):
        assert torch.equal(_latents(part, n), _latents(whole, n)), f"shot {n}"
    # regenerate with the shot's own seed gives the same shot back (the LoRA is still on)
    _cli("regenerate", part, "--shot", "2", "--seed", str(_manifest(whole)["shots"][1]["seed"]))
    assert torch.equal(_latents(part, 2), _latents(whole, 2))
    # without the LoRA the same shot differs: the equalities above are the LoRA's doing
    plain = tmp_path / "plain"
    _cli("generate", tmp_path / "part" / "story.json", "-o", plain, "--preset", "tiny", "--max-shots", "1")
    assert not torch.equal(_latents(plain, 1), _latents(whole, 1))


def test_extend_equals_a_longer_shot_generated_at_once(tmp_path, lora_file):
    data = small_story(n_scenes=1, shots_per_scene=1)
    once = tmp_path / "once.json"
    once.write_text(json.dumps({**data, "scenes": [{**data["scenes"][0], "shots": [{"num_frames": 21}]}]}))
    short = tmp_path / "short.json"
    short.write_text(json.dumps(data))
    _cli("generate", once, "-o", tmp_path / "a", "--preset", "tiny", "--lora", lora_file)
    _cli("generate", short, "-o", tmp_path / "b", "--preset", "tiny", "--lora", lora_file)
    _cli("extend", tmp_path / "b", "--shot", "1", "--chunks", "1")
    a, b = _latents(tmp_path / "a", 1), _latents(tmp_path / "b", 1)
    assert a.shape == b.shape and a.shape[2] == 2 * _manifest(tmp_path / "b")["config"]["chunk_frames"]
    assert torch.equal(a, b)


def test_a_different_model_or_a_changed_lora_is_refused(tmp_path, lora_file, story_file):
    out = tmp_path / "p"
    _cli("generate", story_file, "-o", out, "--preset", "tiny", "--lora", lora_file, "--max-shots", "1")
    res = _cli("next", out, "--preset", "synth", ok=False)
    assert res.exit_code == 2 and "made with --preset tiny, not synth" in res.output
    other = tmp_path / "other.pth"
    other.write_bytes(lora_file.read_bytes())
    res = _cli("next", out, "--lora", other, ok=False)
    assert res.exit_code == 2 and "made with --lora" in res.output
    # the file itself edited in place: its hash no longer matches
    sd = torch.load(lora_file, weights_only=True)
    torch.save({k: v * 2 for k, v in sd.items()}, lora_file)
    res = _cli("next", out, ok=False)
    assert res.exit_code == 2 and "changed since the project was made" in res.output
    # generating again with a different model is refused too, unless --force starts over
    res = _cli("generate", story_file, "-o", out, "--preset", "synth", ok=False)
    assert res.exit_code == 2 and "made with --preset tiny" in res.output
    assert len(_manifest(out)["shots"]) == 1


def test_an_edited_story_updates_the_project_and_another_story_is_refused(tmp_path, story_file):
    out = tmp_path / "p"
    _cli("generate", story_file, "-o", out, "--preset", "tiny", "--max-shots", "2")
    before = {n: _latents(out, n) for n in (1, 2)}
    data = json.loads(story_file.read_text())
    data["scenes"][0]["video_prompts"][1] = "scene 0 shot 1: the fox sleeps in a burrow"
    story_file.write_text(json.dumps(data))
    _cli("generate", story_file, "-o", out, "--preset", "tiny", "--max-shots", "2")
    shots = _manifest(out)["shots"]
    assert shots[1]["prompt"].endswith("sleeps in a burrow")
    assert torch.equal(_latents(out, 1), before[1]) and not torch.equal(_latents(out, 2), before[2])
    saved = json.loads((out / "story.json").read_text())
    assert saved["scenes"][0]["video_prompts"][1].endswith("sleeps in a burrow")
    _cli("next", out)  # shot 3, from the edited story the project now holds
    assert _manifest(out)["shots"][2]["status"] == "done"
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**data, "story_name": "Owl"}))
    res = _cli("generate", other, "-o", out, "--preset", "tiny", ok=False)
    assert res.exit_code == 2 and "holds the story 'Fox', not 'Owl'" in res.output
    _cli("generate", other, "-o", out, "--preset", "tiny", "--force", "--max-shots", "1")
    assert _manifest(out)["story"]["name"] == "Owl" and len(_manifest(out)["shots"]) == 1


def test_a_new_reference_image_changes_every_shot(tmp_path, story_file):
    out = tmp_path / "p"
    _cli("generate", story_file, "-o", out, "--preset", "tiny", "--max-shots", "2")
    data = json.loads(story_file.read_text())
    Image.new("RGB", (40, 40), (20, 200, 40)).save(story_file.parent / "fox.png")
    data["characters"] = [{"name": "Fox", "reference_images": ["fox.png"]}]
    story_file.write_text(json.dumps(data))
    res = _cli("generate", story_file, "-o", out, "--preset", "tiny", "--max-shots", "2")
    assert "generated 2 shot(s)" in res.output
    assert [m["kind"] for m in _manifest(out)["shots"][0]["shot_cache"]] == ["reference"]


# -- one writer ------------------------------------------------------------------------------------
HOLD_LOCK = textwrap.dedent("""
    import sys
    from filmweaver.project import ProjectLock
    lock = ProjectLock(sys.argv[1]); lock.acquire()
    print("locked", flush=True)
    sys.stdin.read()
""")


def test_a_second_writer_is_refused_and_readers_still_work(tmp_path, story_file):
    out = tmp_path / "p"
    _cli("generate", story_file, "-o", out, "--preset", "tiny", "--max-shots", "1")
    before = (out / "manifest.json").read_bytes()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for args in (["generate", story_file, "-o", out, "--preset", "tiny", "--steps", "1"], ["next", out],
                     ["regenerate", out, "--shot", "1"], ["extend", out, "--shot", "1"]):
            res = _cli(*args, ok=False)
            assert res.exit_code == 2 and "is being written by filmweaver pid" in res.output, args
        assert (out / "manifest.json").read_bytes() == before  # nothing was touched
        assert "shot  1 done" in _cli("info", out).output
    finally:
        holder.communicate("")
    _cli("next", out)  # the holder is gone, and so is its lock
    res = _cli("regenerate", out, "--shot", "9", ok=False)  # refused under the lock, after taking it
    assert res.exit_code == 2 and "--shot 9" in res.output
    # a command run in this process (the Python API, the studio) holds the lock only while it runs,
    # whether it succeeded or failed: another process takes it at once
    holder = subprocess.run([sys.executable, "-c", HOLD_LOCK, str(out)], input="", capture_output=True, text=True)
    assert holder.returncode == 0 and holder.stdout.strip() == "locked", holder.stderr[-500:]


@pytest.mark.slow
def test_two_concurrent_generates_leave_a_manifest_that_tells_the_truth(tmp_path, story_file):
    """Two real processes race on one folder: one writes, the other is refused; the manifest then
    describes exactly the files on disk (a rerun finds everything done)."""
    out = tmp_path / "p"
    cmd = [sys.executable, "-m", "filmweaver.cli", "-q", "generate", str(story_file), "-o", str(out),
           "--preset", "tiny", "--device", "cpu"]
    procs = [subprocess.Popen(cmd + extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for extra in ([], ["--steps", "1"])]
    results = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
    codes = sorted(r[2] for r in results)
    assert codes[0] == 0 and all(c in (0, 2) for c in codes)
    for _, err, code in results:
        if code == 2:
            assert "is being written by" in err
    m = _manifest(out)
    steps = m["config"]["sampler"]["num_inference_steps"]
    res = _cli("generate", story_file, "-o", out, "--preset", "tiny", *([] if steps != 1 else ["--steps", "1"]))
    assert "generated 0 shot(s)" in res.output  # every recorded shot checks out against its files


# -- damaged files ---------------------------------------------------------------------------------
def _finished(tmp_path, story_file, name="p"):
    out = tmp_path / name
    _cli("generate", story_file, "-o", out, "--preset", "tiny")
    return out


@pytest.mark.parametrize("damage", ["garbage_video", "truncated_state", "missing_keyframe", "garbage_keyframe"])
def test_a_damaged_shot_is_detected_and_generated_again(tmp_path, story_file, damage):
    out = _finished(tmp_path, story_file)
    clean = {n: _latents(out, n) for n in (1, 2, 3, 4)}
    rec = _manifest(out)["shots"][1]
    if damage == "garbage_video":
        (out / rec["files"]["video"]["path"]).write_bytes(b"not an mp4")
    elif damage == "truncated_state":
        state = out / rec["files"]["state"]["path"]
        state.write_bytes(state.read_bytes()[:100])
    elif damage == "missing_keyframe":
        (out / rec["files"]["keyframes"][0]["path"]).unlink()
    else:
        (out / rec["files"]["keyframes"][0]["path"]).write_bytes(b"\x89PNG garbage")
    res = _cli("generate", story_file, "-o", out, "--preset", "tiny")
    assert "shot 2:" in res.output and "generating it again" in res.output
    # the shots after it saw it, so they are redone too; the same inputs give the same film back
    assert "generated 3 shot(s)" in res.output
    for n in (1, 2, 3, 4):
        assert torch.equal(_latents(out, n), clean[n])


@pytest.mark.parametrize("damage", ["truncated_index", "garbage_tensors", "removed"])
def test_a_damaged_bank_is_rebuilt_exactly_from_the_shots(tmp_path, story_file, damage):
    whole = _finished(tmp_path, story_file, "whole")
    out = tmp_path / "p"
    _cli("generate", story_file, "-o", out, "--preset", "tiny", "--max-shots", "2")
    bank = out / "memory"
    if damage == "truncated_index":
        (bank / "bank.json").write_text((bank / "bank.json").read_text()[:30])
    elif damage == "garbage_tensors":
        (bank / "bank.safetensors").write_bytes(b"\x00" * 64)
    else:
        for f in bank.iterdir():
            f.unlink()
    res = _cli("generate", story_file, "-o", out, "--preset", "tiny")
    if damage != "removed":
        assert "rebuilding it from the shots" in res.output
    for n in (3, 4):
        assert torch.equal(_latents(out, n), _latents(whole, n))


def test_a_damaged_manifest_falls_back_to_its_copy_then_starts_over(tmp_path, story_file):
    out = _finished(tmp_path, story_file)
    (out / "manifest.json").write_text('{"format": "filmweaver.proj')
    res = _cli("info", out)
    assert "manifest.json is damaged" in res.output and "shot  4 done" in res.output
    assert "generated 0 shot(s)" in _cli("generate", story_file, "-o", out, "--preset", "tiny").output
    (out / "manifest.json").write_bytes(b"\xff\xfe")
    (out / "manifest.backup.json").write_text("")
    res = _cli("info", out, ok=False)
    assert res.exit_code == 2 and "damaged" in res.output and "Traceback" not in res.output
    res = _cli("generate", story_file, "-o", out, "--preset", "tiny")
    assert "generated 4 shot(s)" in res.output


def test_info_and_follow_ups_on_something_that_is_not_a_project(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    for args in (["info", tmp_path / "empty"], ["info", tmp_path / "file"], ["next", tmp_path / "nothing"]):
        res = _cli(*args, ok=False)
        assert res.exit_code == 2 and "is not a filmweaver project" in res.output, args
    (tmp_path / "empty" / "manifest.json").write_text('{"format": "other/1"}')
    res = _cli("info", tmp_path / "empty", ok=False)
    assert res.exit_code == 2 and "not a filmweaver project manifest" in res.output


def test_interrupted_writes_and_unselected_keyframes_are_cleaned_up(tmp_path, story_file):
    out = _finished(tmp_path, story_file)
    leftovers = [out / "shots" / ".shot_002.x1.mp4.part", out / "memory" / ".bank.y2.json.part"]
    for f in leftovers:
        f.write_bytes(b"half")
    old = {p.name for p in (out / "keyframes").glob("shot002_*.png")}
    _cli("regenerate", out, "--shot", "2", "--seed", "12345")
    assert not any(f.exists() for f in leftovers)
    now = {p.name for p in (out / "keyframes").glob("shot002_*.png")}
    assert now == {k["name"] + ".png" for k in _manifest(out)["shots"][1]["keyframes"]}
    assert old  # (whether the names changed depends on the new frames; what is kept is exactly the selection)


@pytest.mark.slow
def test_a_killed_run_resumes_and_leaves_no_partial_files(tmp_path, story_file):
    """SIGKILL in the middle of a story: the rerun keeps every finished shot and removes the leftovers."""
    out = tmp_path / "p"
    code = textwrap.dedent(f"""
        import os, signal
        import filmweaver.engine.finish as e
        real = e.write_video
        calls = []
        def killing(path, *a, **k):
            calls.append(path)
            if len(calls) == 3:  # mid-way through shot 3's files
                os.kill(os.getpid(), signal.SIGKILL)
            return real(path, *a, **k)
        e.write_video = killing
        from filmweaver.cli import app
        app(["-q", "generate", {str(story_file)!r}, "-o", {str(out)!r}, "--preset", "tiny"])
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert p.returncode == -9
    done = [r["number"] for r in _manifest(out)["shots"] if r["status"] == "done"]
    assert done == [1, 2]
    (out / "shots" / ".shot_003.zz.mp4.part").write_bytes(b"x")
    res = _cli("generate", story_file, "-o", out, "--preset", "tiny")
    assert "generated 2 shot(s)" in res.output
    assert not list(out.rglob(".*.part"))
