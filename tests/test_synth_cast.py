"""The multi-character synthetic world: casts side by side with exact ground truth of who is where,
stories of 1-4 characters with similar pairs and long recurrence gaps, in valid scripts."""

import numpy as np
import pytest
import torch

from filmweaver.script import parse_story
from filmweaver.synth.stories import grammar_words, make_cast_story, make_story, split_words
from filmweaver.synth.world import (
    Character,
    Location,
    ShotSpec,
    cast_labels,
    character_boxes,
    render_shot,
    render_shot_with_mask,
)

RED = Character("round", "red", "plain", "hat")
BLUE = Character("square", "blue", "striped", "none")
GREEN = Character("triangle", "green", "dotted", "scarf")
PLACE = Location("forest", "snow", "day", 3)


def _colour_share(frame: np.ndarray, box, rgb) -> float:
    """How much of ``box`` (fractions) is close to colour ``rgb``."""
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = box
    patch = frame[int(y0 * h) : int(np.ceil(y1 * h)), int(x0 * w) : int(np.ceil(x1 * w))].astype(int)
    return float((np.abs(patch - np.array(rgb)).sum(-1) < 60).mean())


def test_a_cast_is_drawn_left_to_right_where_its_boxes_say():
    spec = ShotSpec(RED, PLACE, "wide", "static", "wave", 3, companions=(BLUE, GREEN))
    frame = render_shot(spec)[0]
    boxes = character_boxes(spec, 0)
    assert len(boxes) == 3 and all(b is not None for b in boxes)
    assert [b[0] for b in boxes] == sorted(b[0] for b in boxes)  # left to right in cast order
    colours = [(215, 40, 40), (45, 80, 220), (40, 170, 60)]
    for j, box in enumerate(boxes):  # each box holds its own character's colour, not its neighbours'
        own = _colour_share(frame, box, colours[j])
        others = max(_colour_share(frame, box, c) for k, c in enumerate(colours) if k != j)
        assert own > 0.1 and others < 0.02, (j, own, others)
    assert cast_labels(spec)[2].tolist() == list(GREEN.labels().values()) and cast_labels(spec).shape == (3, 4)
    assert (cast_labels(ShotSpec(RED, PLACE, "close", "static", "walk", 2))[1:] == -1).all()
    # the character coverage layer covers all three
    _, cover = render_shot_with_mask(spec)
    assert all(cover[0, 0][int(b[1] * 64):int(b[3] * 64), int(b[0] * 64):int(b[2] * 64)].mean() > 40 for b in boxes)


def test_a_framing_holds_only_the_cast_that_fits():
    with pytest.raises(ValueError, match="fits 1"):
        ShotSpec(RED, PLACE, "close", "static", "walk", 2, companions=(BLUE,))
    # a spec written before casts existed (no companions) reads back as one character
    d = ShotSpec(RED, PLACE, "medium", "static", "walk", 2, companions=(BLUE,)).to_dict()
    assert ShotSpec.from_dict(d).companions == (BLUE,)
    d.pop("companions")
    assert ShotSpec.from_dict(d).cast == (RED,)


def test_single_character_stories_are_unchanged_by_casts():
    """make_story (the shipped model's world) draws exactly what it did: one character, no companions."""
    story = make_story(1_000_000)
    assert all(s.companions == () for s in story.shots)
    assert "cast" not in story.to_script()["ground_truth"]


@pytest.mark.parametrize("seed", range(6))
def test_cast_stories_are_valid_scripts_with_every_shots_cast(seed):
    story = make_cast_story(seed)
    script = story.to_script()
    parsed = parse_story(script)
    gt = script["ground_truth"]
    names = [c["name"] for c in gt["cast"]]
    assert 1 <= len(names) <= 4 and len(set(names)) == len(names)
    for shot, g, prompt in zip(parsed.shots(), gt["shots"], story.prompts, strict=True):
        assert shot.entities.characters == g["cast"]  # the engine knows whom each shot shows
        assert 1 <= len(g["cast"]) <= 3
        # named left to right in the prompt, each described where the ground truth says it is restated
        positions = [prompt.index(n) for n in g["cast"]]
        assert positions == sorted(positions)
        for n, restated in zip(g["cast"], g["restates_cast"], strict=True):
            assert (f"{n}, a " in prompt) == restated
    first = {}
    for i, g in enumerate(gt["shots"]):
        for n, r in zip(g["cast"], g["restates_cast"], strict=True):
            if n not in first:
                first[n] = i
                assert r  # a character is described where it first appears
    assert set(split_words(" ".join(story.prompts))) <= set(grammar_words(cast=True))


def test_cast_stories_have_similar_pairs_and_long_stories_long_gaps():
    stories = [make_cast_story(s, characters=2) for s in range(200)]
    similar = [st for st in stories if (st.cast[0].shape, st.cast[0].colour, st.cast[0].pattern)
               == (st.cast[1].shape, st.cast[1].colour, st.cast[1].pattern)]
    assert 0.25 <= len(similar) / len(stories) <= 0.55  # 35 % by design, ~2 % by chance
    assert all(st.cast[0] != st.cast[1] for st in stories)  # the accessory tells a similar pair apart
    for seed in range(4):
        long = make_cast_story(seed, characters=3, min_shots=30, max_shots=50)
        assert 30 <= len(long.shots) <= 50
        last, gaps = {}, []
        for i, who in enumerate(long.shot_cast):
            for j in who:
                if j in last:
                    gaps.append(i - last[j])
                last[j] = i
        assert max(gaps) >= 21
    # the ablation's long held-out stories (evaluate --min-shots 30 --max-shots 50)
    from filmweaver.synth.evaluate import eval_cast_stories

    long_scripts = eval_cast_stories(3, 2_000_000, min_shots=30, max_shots=50)
    assert all(30 <= sum(len(sc["video_prompts"]) for sc in s["scenes"]) <= 50 for s in long_scripts)


def _oracle(specs_by_frames):
    """A reader that knows the truth of every frame it was shown rendered (by its bytes)."""
    from filmweaver.synth.probe import cast_targets

    table = {}
    for spec in specs_by_frames:
        frames = render_shot(spec)
        labels = np.repeat(cast_labels(spec)[None], len(frames), axis=0)
        boxes = np.array([[b if b is not None else (np.nan,) * 4 for b in character_boxes(spec, t)]
                          + [(np.nan,) * 4] * (3 - len(spec.cast)) for t in range(len(frames))], dtype=np.float32)
        loc = np.repeat(np.array([list(spec.location.labels().values())]), len(frames), axis=0)
        targets = cast_targets(labels, boxes, loc)
        for t, f in enumerate(frames):
            table[f.tobytes()] = {k: int(v[t]) for k, v in targets.items()}

    def read(frames):
        rows = [table[(f.permute(1, 2, 0) * 255).round().byte().numpy().tobytes()] for f in frames]
        return {k: torch.tensor([max(r[k], 0) for r in rows]) for k in rows[0]}

    return read


def test_cast_metrics_see_identity_swaps_and_missing_characters():
    import dataclasses

    from filmweaver.synth.cast_metrics import cast_records, summarize_cast
    from filmweaver.synth.stories import story_from_script

    story = make_cast_story(3, characters=2, min_shots=8, max_shots=8)
    script = story.to_script()
    _, specs = story_from_script(script)
    multi = next(i for i, s in enumerate(specs) if len(s.cast) == 2 and i > 0)
    swapped = dataclasses.replace(specs[multi], character=specs[multi].companions[0], companions=(specs[multi].character,))
    missing = dataclasses.replace(specs[multi], companions=())
    read = _oracle([*specs, swapped, missing])

    def frames_of(replace):
        return lambda i: torch.from_numpy(render_shot(replace.get(i, specs[i]))).permute(0, 3, 1, 2).float() / 255

    truth = summarize_cast(cast_records(frames_of({}), script, read))
    assert truth["character_identity"] == 1.0 and truth["swap_rate"] in (0.0, None) and truth["presence"] == 1.0
    assert truth["appearances"] > 0 and truth["identity_by_gap"]
    records = cast_records(frames_of({multi: swapped}), script, read)
    at = [r for r in records if r["shot"] == multi]
    distinct = [k for k in ("shape", "colour", "pattern", "accessory") if at[0]["truth"][k] != at[1]["truth"][k]]
    assert distinct and all(not r["match"][k] and r["swap"][k] for r in at for k in distinct)
    assert all(r["present"] for r in at)  # both are there, in each other's place
    records = cast_records(frames_of({multi: missing}), script, read)
    assert not any(r["present"] for r in records if r["shot"] == multi)


@pytest.mark.slow
def test_training_on_cast_stories_makes_a_model_with_entity_tags_and_a_cast_probe(tmp_path):
    """The cast recipe in miniature: cast stories in the data, the cast grammar, causal context with
    pooled keyframes, entity tags and slots, text slots, regional prompts, the cast probe beside the
    attribute probe; the model generates
    a cast story with the entity policy (its default: it was trained on entity memory), and its text encoder can start a cast model from a
    one-character one (known words keep their embeddings)."""
    import json

    from typer.testing import CliRunner

    from filmweaver.cli import app
    from filmweaver.models import FilmModels
    from filmweaver.synth.architecture import synth_architecture
    from filmweaver.synth.probe import CastProbe
    from filmweaver.train.run import init_dit_from

    out = tmp_path / "run"
    sets = ["--set", "data.cast_stories=4", "--set", "model.grammar=cast", "--set", "dit.entity_tags=true",
            "--set", "dit.context_attention=causal", "--set", "dit.memory_compression=2", "--set", "dit.entity_slots=true",
            "--set", "dit.augment.entity_memory=0.5", "--set", "dit.text_slots=true",
            "--set", "dit.region_slots=true", "--set", "dit.regional_prompts=true"]
    res = CliRunner().invoke(app, ["train", "configs/synth-test.yaml", "-o", str(out), *sets])
    assert res.exit_code == 0, res.output
    model = FilmModels.from_pretrained(str(out / "model"))
    assert model.backbone.entity_proj is not None and model.backbone.context_attention == "causal"
    assert model.backbone.entity_proj.weight.abs().sum() > 0  # trained: the tags moved off zero
    assert model.backbone.slot_proj.weight.abs().sum() > 0  # and the slots, on memory and on the prompt
    assert model.backbone.text_slot_proj.weight.abs().sum() > 0 and model.backbone.slot_regions
    further = synth_architecture(seed=3, size="test", grammar="cast")  # a further fine-tune starts with all three
    init_dit_from(further, str(out / "model"))
    for name in ("entity_proj", "slot_proj", "text_slot_proj"):
        assert torch.equal(getattr(further.backbone, name).weight, getattr(model.backbone, name).weight), name
    assert CastProbe.load(out / "probe" / "cast").head_names[0] == "count"
    assert "and" in model.prompt_encoder.tokenizer.get_vocab()
    story = make_cast_story(7, characters=2, min_shots=3, max_shots=3, frames=(8,)).to_script()
    (tmp_path / "s.json").write_text(json.dumps(story))
    res = CliRunner().invoke(app, ["generate", str(tmp_path / "s.json"), "-o", str(tmp_path / "film"), "--model",
                                   str(out / "model"), "--steps", "2"])
    assert res.exit_code == 0, res.output
    # trained on memory as the entity policy retrieves it: the model retrieves it so by default
    film_config = json.loads((tmp_path / "film" / "manifest.json").read_text())["config"]
    assert film_config["shot_cache"]["compression"] == 2 and film_config["shot_cache"]["policy"] == "entity"
    assert film_config["regional_prompts"]  # trained with regional prompts: generates with them

    # a one-character model's text encoder into the cast architecture: every word it knew keeps its row
    single = synth_architecture(seed=1, size="test")
    single_dir = tmp_path / "single"
    single.trained = True
    single.save_pretrained(single_dir)
    cast = synth_architecture(seed=2, size="test", grammar="cast")
    init_dit_from(cast, str(single_dir))
    old, new = single.prompt_encoder.tokenizer.get_vocab(), cast.prompt_encoder.tokenizer.get_vocab()
    w_old = single.prompt_encoder.text_encoder.shared.weight
    w_new = cast.prompt_encoder.text_encoder.shared.weight
    assert len(new) > len(old) and all(torch.equal(w_new[new[t]], w_old[i]) for t, i in old.items())


@pytest.mark.slow
def test_the_cast_recipe_starts_from_the_shipped_model_and_keeps_its_embedder_whole(tmp_path):
    """configs/synth-cast.yaml in miniature: VAE and embedder taken from the shipped model (the embedder
    with its own tokenizer: the cast grammar's vocabulary is the text encoder's, not the CLIP's), the
    transformer and text encoder grown from it; the model embeds cast prompts and generates."""
    import json

    from typer.testing import CliRunner

    from filmweaver.cli import app
    from filmweaver.models import BUILTIN_MODEL_DIR, FilmModels

    out = tmp_path / "run"
    sets = ["data.num_stories=1", "data.cast_stories=2", "data.num_long_takes=0", "data.shot_frames=[8]",
            "data.cache_dir=null", "data.workers=1", "probe=null", "dit.batch_size=2", "dit.stages.1.steps=2",
            "dit.compile_blocks=false", "dit.max_minutes=null", 'mixed_precision="no"']
    res = CliRunner().invoke(app, ["train", "configs/synth-cast.yaml", "-o", str(out), *[a for s in sets for a in ("--set", s)]])
    assert res.exit_code == 0, res.output
    model, shipped = FilmModels.from_pretrained(str(out / "model")), FilmModels.from_pretrained(str(BUILTIN_MODEL_DIR))
    assert model.embedder.tokenizer.get_vocab() == shipped.embedder.tokenizer.get_vocab()
    assert "and" in model.prompt_encoder.tokenizer.get_vocab() and model.backbone.entity_proj is not None
    story = make_cast_story(11, characters=3, min_shots=2, max_shots=2, frames=(4,))
    assert model.embedder.embed_texts(story.prompts).shape[0] == 2  # a cast prompt, read by the shipped CLIP
    (tmp_path / "s.json").write_text(json.dumps(story.to_script()))
    res = CliRunner().invoke(app, ["generate", str(tmp_path / "s.json"), "-o", str(tmp_path / "film"), "--model",
                                   str(out / "model"), "--policy", "entity", "--steps", "2"])
    assert res.exit_code == 0, res.output


def test_entity_memory_draws_each_characters_least_crowded_appearance_last_in_the_shots_order():
    """The trainer's entity draw is what the `entity` policy retrieves: per character of the shot (in
    its order, nearest the generated frames) a keyframe of an earlier shot showing it with the fewest
    others; the slots before them are ordinary draws."""
    from filmweaver.synth.architecture import synth_architecture
    from filmweaver.synth.dataset import render_dataset
    from filmweaver.train.data import LatentStore

    data = render_dataset(0, 0, first_seed=0, shot_frames=(4,), workers=1, progress=False, cast_stories=6)
    store = LatentStore.encode(data, synth_architecture(size="test").codec, torch.device("cpu"), progress=False,
                               dtype=torch.float32)
    names = data.cast_names
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(20):
        batch = store.sample("shot", 16, 2, 0, 4, rng, negative_sampling=0.5, entity_memory=1.0)
        for shot, sources in zip(batch.shot_index.tolist(), batch.memory_source.tolist(), strict=True):
            story = store.story_shots[int(data.shot_story[shot])]
            earlier = story[: store.position[shot]]
            seen = [n for n in names[shot] if any(n in names[e] for e in earlier)]
            tail = sources[len(sources) - len(seen):]
            for name, src in zip(seen, tail, strict=True):
                assert src in earlier and name in names[src]
                assert len(names[src]) == min(len(names[e]) for e in earlier if name in names[e])
            checked += len(seen)
    assert checked > 100
    # without the entity draw the last slot is often not the shot's own character alone
    plain = store.sample("shot", 64, 2, 0, 1, np.random.default_rng(1), negative_sampling=0.0)
    solo = [len(names[s]) == 1 for s in plain.memory_source[:, -1].tolist()]
    assert not all(solo)


def test_the_entity_policy_places_each_characters_own_look_last_in_the_shots_order():
    from filmweaver.memory.keyframes import Keyframe, KeyframeBank
    from filmweaver.memory.shot_cache import EntityMemory

    def kf(shot, entities, emb):
        return Keyframe(torch.zeros(3, 4, 4), torch.nn.functional.normalize(emb, dim=0), source_shot=shot,
                        entities=tuple(entities))

    prompt = torch.nn.functional.normalize(torch.ones(8), dim=0)
    bank = KeyframeBank([kf(0, ["Bo"], -torch.ones(8)), kf(1, ["Ada", "Bo"], torch.ones(8)),
                         kf(2, ["Ada"], -torch.ones(8)), kf(3, [], torch.ones(8))])
    chosen = EntityMemory(k=3).select(bank, prompt, entities=["Ada", "Bo"])
    # the crowded frame is not Bo's look though it shows him: each has a solo frame
    assert [(r.bank_index, r.role) for r in chosen] == [(1, "retrieved"), (2, "entity"), (0, "entity")]


def _shot_record(story, shot, cast):
    base = {"shot": shot, "restates_character": shot == 0, "restates_location": shot == 0, "story": story,
            "match": {k: True for k in ("shape", "colour", "pattern", "accessory", "props", "ground", "time")},
            "seam_ratio": None, "seconds": 1.0, "cast": cast}
    return base


def _char(shot, name, right, first=False, gap=1, size=2):
    attrs = ("shape", "colour", "pattern", "accessory")
    return {"shot": shot, "name": name, "slot": 0, "cast_size": size, "first": first, "gap": None if first else gap,
            "restated": first, "match": {k: right for k in attrs}, "swap": {k: not right for k in attrs},
            "truth": {k: "x" for k in attrs}, "read": {k: "x" if right else "y" for k in attrs}, "present": True}


def test_the_multi_character_ablation_pairs_arms_on_the_same_appearances_and_reports_them(tmp_path):
    from filmweaver.synth.evaluate import paired_character_difference, summarize, write_report

    def arm(right_later):
        recs = []
        for st in range(6):
            recs.append(_shot_record(f"s{st}", 0, [_char(0, "Ada", True, first=True), _char(0, "Bo", True, first=True)]))
            recs.append(_shot_record(f"s{st}", 1, [_char(1, "Ada", right_later(st, 0)), _char(1, "Bo", right_later(st, 1))]))
            recs.append(_shot_record(f"s{st}", 5, [_char(5, "Ada", right_later(st, 2), gap=4, size=1)]))
        return recs

    good, poor = arm(lambda st, j: True), arm(lambda st, j: j == 0)
    s_good, s_poor = summarize(good)["characters"], summarize(poor)["characters"]
    assert s_good["appearances"] == 18 and s_good["character_identity"] == 1.0
    assert s_poor["character_identity"] == pytest.approx(6 / 18)
    assert s_poor["swap_rate"] == pytest.approx(6 / 12)  # Bo's look swapped in each two-character shot
    assert s_poor["character_identity_as_drawn"] == pytest.approx(6 / 18) and s_poor["character_adherence"] == 1.0
    d = paired_character_difference(poor, good)
    assert d["difference"] == pytest.approx(12 / 18) and d["ci95"][0] > 0
    # arms on other appearances cannot be paired
    assert paired_character_difference(poor, good[:-1]) is None
    results = [{"arm": "entity", "records": good, "summary": summarize(good)},
               {"arm": "topk", "records": poor, "summary": summarize(poor)}]
    write_report(results, tmp_path, {"stories": 6, "first_seed": 0, "world": "cast"})
    md = (tmp_path / "report.md").read_text()
    assert "| entity | 100.0%" in md and "| topk | 33.3%" in md and "-66.7 (" in md
    assert "recurrence gap" in md and (tmp_path / "characters.png").is_file()


def test_swap_rate_comes_with_the_rate_random_wrong_readings_would_give():
    """A wrong reading matches another member's value by chance: with shape (3 values) wrong and the
    others' shapes unlike its own in one value, a random wrong shape is theirs half of the time; colour
    (6) wrong with two other colours among them: 2 of 5. Both wrong: 1 - (1/2)(3/5)."""
    from filmweaver.synth.cast_metrics import summarize_cast, swap_chance

    attrs = ("shape", "colour", "pattern", "accessory")
    ada = {"shape": "round", "colour": "red", "pattern": "plain", "accessory": "none"}
    looks = [{"shape": "square", "colour": "blue", "pattern": "plain", "accessory": "hat"},
             {"shape": "round", "colour": "green", "pattern": "plain", "accessory": "hat"}]

    def rec(shot, wrong=(), swapped=False, name="Ada", truth=ada):
        read = dict(truth)
        for k in wrong:
            read[k] = {"shape": "square" if swapped else "triangle", "colour": "blue" if swapped else "purple"}[k]
        return {"shot": shot, "name": name, "slot": 0, "cast_size": 3, "first": False, "gap": 1, "restated": False,
                "match": {k: k not in wrong for k in attrs}, "swap": {k: k in wrong and swapped for k in attrs},
                "truth": truth, "read": read, "present": True}

    others = [rec(0, name=n, truth=t) for n, t in zip(("Bo", "Cy"), looks, strict=True)]
    assert swap_chance(rec(0), others) == 0.0
    assert swap_chance(rec(0, ("shape",), True), others) == pytest.approx(1 / 2)
    assert swap_chance(rec(0, ("colour",)), others) == pytest.approx(2 / 5)
    assert swap_chance(rec(0, ("shape", "colour"), True), others) == pytest.approx(1 - (1 / 2) * (3 / 5))

    def shot(k, wrong=(), swapped=False):  # Ada with Bo and Cy (both read right) in shot k
        return [rec(k, wrong, swapped), *[rec(k, name=n, truth=t) for n, t in zip(("Bo", "Cy"), looks, strict=True)]]

    # Ada's shape wrong in 2 of 6 appearances, each time Bo's: 2/9 swaps against 1/9 by chance
    confused = summarize_cast([*shot(0, ("shape",), True), *shot(1, ("shape",), True), *shot(2)])
    assert confused["swap_rate"] == pytest.approx(2 / 9) and confused["swap_rate_by_chance"] == pytest.approx(1 / 9)
    assert confused["swap_excess"] == pytest.approx(1 / 9)
    # the same errors, never the others' looks: below chance
    random_errors = summarize_cast([*shot(0, ("shape",)), *shot(1, ("shape",)), *shot(2)])
    assert random_errors["swap_rate"] == 0.0 and random_errors["swap_excess"] == pytest.approx(-1 / 9)
