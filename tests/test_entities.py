"""Entity-aware memory: the bank knows whom each keyframe shows, the ``entity`` policy represents every
entity a shot shows, detectors say where they are."""

import json

import pytest
import torch
from helpers import entitybench_story

from filmweaver.engine import EngineConfig, StoryEngine
from filmweaver.memory.detect import (
    Box,
    OpenCVFaceDetector,
    OpenCVPeopleDetector,
    assign_boxes,
    make_detector,
    name_boxes,
)
from filmweaver.memory.keyframes import Keyframe, KeyframeBank
from filmweaver.memory.shot_cache import EntityMemory, best_appearance, make_shot_cache_policy
from filmweaver.script import parse_story


def _kf(shot, entities, emb=None, boxes=None, kind="keyframe", label=""):
    emb = torch.nn.functional.normalize(torch.randn(8) if emb is None else emb, dim=0)
    return Keyframe(torch.zeros(3, 4, 4), emb, None, source_shot=shot, frame_index=shot, kind=kind, label=label,
                    entities=tuple(entities), boxes=boxes or {})


def test_best_appearance_prefers_a_reference_then_the_least_crowded_then_the_largest_then_the_first():
    bank = KeyframeBank([_kf(0, ["A", "B", "C"]), _kf(1, ["A", "B"]), _kf(2, ["A", "B"], boxes={"A": (0, 0, 1, 1)}),
                         _kf(3, ["B"]), _kf(4, ["B"])])
    assert best_appearance(bank, "A") == 2  # two as crowded as it; its box is larger than an even share
    assert best_appearance(bank, "B") == 3  # alone, and first of the two solo appearances
    assert best_appearance(bank, "C") == 0
    assert best_appearance(bank, "D") is None
    bank.entries.append(_kf(-1, ["C"], kind="reference", label="C"))
    assert best_appearance(bank, "C") == 5


def test_the_entity_policy_represents_every_entity_then_fills_by_prompt_similarity():
    prompt = torch.nn.functional.normalize(torch.ones(8), dim=0)
    bank = KeyframeBank([_kf(0, ["A"]), _kf(1, ["B", "A"]), _kf(2, ["loc"]), _kf(3, ["B"], emb=-torch.ones(8)),
                         _kf(4, [], emb=torch.ones(8))])
    chosen = EntityMemory(k=3).select(bank, prompt, entities=["A", "B"])
    roles = {r.bank_index: r.role for r in chosen}
    assert roles[0] == "entity" and roles[3] == "entity"  # B's solo frame, though it is the least similar
    assert roles[4] == "retrieved" and len(chosen) == 3  # the free slot: the most similar of the rest
    # more entities than k: each is still there
    many = EntityMemory(k=1).select(bank, prompt, entities=["A", "B", "loc"])
    assert sorted(r.bank_index for r in many) == [0, 2, 3]
    # topk, given the same, follows the prompt alone
    top = make_shot_cache_policy("topk", k=2).select(bank, prompt, entities=["A", "B"])
    assert 3 not in [r.bank_index for r in top]


def test_boxes_are_named_by_the_best_overall_assignment():
    sim = torch.tensor([[0.9, 0.8], [0.85, 0.1]])  # greedy would give box 0 to entity 0
    assert assign_boxes(sim) == {0: 1, 1: 0}
    assert assign_boxes(torch.tensor([[0.2], [0.7], [0.1]])) == {0: 1}
    assert assign_boxes(torch.zeros(0, 2)) == {}
    assert assign_boxes(torch.tensor([[0.1]]), min_similarity=0.5) == {}


class _ColourEmbedder:
    """Embeds an image by its mean colour and a text by the colour it names: enough to name crops."""

    COLOURS = {"red": (1.0, 0, 0), "green": (0, 1.0, 0), "blue": (0, 0, 1.0)}

    def embed_images(self, images):
        return torch.nn.functional.normalize(images.mean(dim=(2, 3)), dim=1)

    def embed_texts(self, texts):
        vecs = [next((torch.tensor(v) for c, v in self.COLOURS.items() if c in t), torch.ones(3)) for t in texts]
        return torch.nn.functional.normalize(torch.stack(vecs), dim=1)


def test_name_boxes_matches_crops_with_descriptions():
    image = torch.zeros(3, 20, 40)
    image[0, :, :20] = 1.0  # red on the left
    image[2, :, 20:] = 1.0  # blue on the right
    boxes = [Box(0.5, 0.0, 1.0, 1.0), Box(0.0, 0.0, 0.5, 1.0)]
    named = name_boxes(_ColourEmbedder(), image, boxes, ["Mira", "Tomas"], {"Mira": "in red", "Tomas": "in blue"})
    assert named == {"Mira": boxes[1], "Tomas": boxes[0]}
    assert name_boxes(_ColourEmbedder(), image, boxes[:1], ["Mira"], {}) == {"Mira": boxes[0]}  # alone: no question


def test_the_bundled_opencv_detectors_load_and_run_offline():
    frames = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    for detector in (OpenCVPeopleDetector(), OpenCVFaceDetector(), make_detector("opencv-hog")):
        found = detector.detect(frames)
        assert len(found) == 2 and all(0 <= v <= 1 for boxes in found for b in boxes for v in b.as_list())
    assert make_detector("none") is None
    with pytest.raises(ValueError, match="entity detector"):
        make_detector("yolo")


def fake_detector(model=None, device="cpu"):
    """A plug-in detector (``tests.test_entities:fake_detector``): a box on each half of every frame."""

    class Halves:
        name = "halves"

        def detect(self, images):
            return [[Box(0.0, 0.0, 0.5, 1.0, 0.9), Box(0.5, 0.0, 1.0, 1.0, 0.8)] for _ in images]

    return Halves()


def test_the_engine_keeps_whom_each_keyframe_shows_and_retrieves_every_scheduled_entity(tiny_models, tmp_path):
    story = parse_story(entitybench_story())
    cfg = EngineConfig(shot_cache={"policy": "entity", "k": 2},
                       keyframes={"entity_detector": "test_entities:fake_detector", "max_per_shot": 2,
                                  "dedupe_threshold": 1.01})  # every keyframe enters the bank
    engine = StoryEngine(tiny_models, tmp_path / "p", story=story, config=cfg, progress=False)
    engine.generate()
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    shots = manifest["shots"]
    assert shots[1]["entities"] == {"characters": ["Mira", "Tomas"], "locations": ["The Harbour"], "objects": []}
    first = shots[0]["keyframes"][0]
    assert first["entities"] == ["Mira", "The Harbour", "the brass lantern"] and set(first["boxes"]) == {"Mira"}
    assert set(shots[1]["keyframes"][0]["boxes"]) == {"Mira", "Tomas"}  # two people, two halves
    bank = engine.bank.before(len(shots))
    for rec, shot in zip(shots, story.shots(), strict=True):
        shown = {name for entry in rec["shot_cache"] for name in
                 next(e.entities for e in bank if e.name == entry["keyframe"])}
        seen_before = {n for e in bank if 0 <= e.source_shot < rec["index"] for n in e.entities}
        assert set(shot.entities.names()) & seen_before <= shown, rec["number"]
    assert any(entry["role"] == "entity" for rec in shots for entry in rec["shot_cache"])
    # the bank rebuilt from the shots alone knows the same
    rebuilt = StoryEngine(tiny_models, tmp_path / "p", progress=False).bank._from_shots(len(shots))
    assert [(e.name, e.entities, e.boxes) for e in rebuilt] == [(e.name, e.entities, e.boxes) for e in bank]


def test_entity_tags_start_as_nothing_and_then_mark_each_memory_frame(tiny_models):
    """Enabled, the zero-initialised tag projection leaves the forward exactly as it was; trained (any
    non-zero weights) it changes what memory frames say, and frames tagged differently differ."""
    from filmweaver.context import ContextFrames

    bb = tiny_models.backbone
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(1, 16, 2, 4, 4, generator=g)
    x, t = torch.randn(1, 16, 1, 4, 4, generator=g), torch.tensor([500.0])
    text = torch.randn(1, 8, bb.config.text_dim, generator=g)
    tags = torch.randn(2, bb.config.text_dim, generator=g)

    def forward(entity_embeddings):
        ctx = [ContextFrames(lat, torch.tensor([-3.0, -2.0]), 0.0, kind="shot", entity_embeddings=entity_embeddings)]
        with torch.no_grad():
            return bb(x, t, text, context=ctx)

    plain = forward(None)
    bb.enable_entity_tags()
    try:
        assert torch.equal(forward(tags), plain)
        with torch.no_grad():
            bb.entity_proj.weight.normal_(generator=g)
        tagged = forward(tags)
        assert not torch.allclose(tagged, plain)
        assert not torch.allclose(forward(tags.flip(0)), tagged)  # whom each frame shows matters
    finally:
        bb.entity_proj = None
    with pytest.raises(ValueError, match="entity embeddings"):
        ContextFrames(lat, torch.tensor([-3.0, -2.0]), entity_embeddings=tags[:1])


def _third_shot_memory(models, tmp_path):
    """Two shots of an EntityBench-format story made with the entity policy; the third shot's plan, bank,
    retrieved keyframes and shot-cache block as the engine builds them."""
    story = parse_story(entitybench_story())
    engine = StoryEngine(models, tmp_path / "p", story=story, config=EngineConfig(shot_cache={"policy": "entity"}),
                         progress=False)
    engine.generate(max_shots=2)
    plan = engine.plan()[2]
    bank = engine.bank.before(2)
    retrieved = engine.memory.retrieve(plan, bank)
    return plan, bank, retrieved, engine.memory.shot_context(bank, retrieved, 0, list(plan.shot.entities.characters))[0]


def test_a_model_with_entity_tags_saves_and_loads_them_and_the_engine_tags_its_memory(tiny_models, tmp_path):
    from filmweaver.models import FilmModels

    tiny_models.backbone.enable_entity_tags()
    with torch.no_grad():
        tiny_models.backbone.entity_proj.weight.normal_(generator=torch.Generator().manual_seed(1))
    tiny_models.save_pretrained(tmp_path / "m")
    loaded = FilmModels.from_pretrained(str(tmp_path / "m"))
    assert torch.equal(loaded.backbone.entity_proj.weight, tiny_models.backbone.entity_proj.weight)
    assert FilmModels.tiny(seed=0).backbone.entity_proj is None  # a model without them has none

    plan, bank, retrieved, block = _third_shot_memory(loaded, tmp_path)
    assert block.entity_embeddings.shape == (len(retrieved), loaded.backbone.config.text_dim)
    assert all(block.entity_embeddings[j].norm() > 0 for j, r in enumerate(retrieved) if bank.entries[r.bank_index].entities)


def test_entity_slots_say_which_of_the_shots_characters_a_memory_frame_shows(tiny_models, tmp_path):
    """Slots by the shot's order: zero at first (the forward as it was), then frames marked for different
    characters differ; saved and loaded with the model; the engine marks each retrieved keyframe with
    the current shot's characters it shows; the trainer's batches mark them the same way, and a
    keyframe of another story (a negative) shows none of the shot's characters."""
    import numpy as np

    from filmweaver.backbone.entity_tags import SLOTS, entity_slots
    from filmweaver.context import ContextFrames
    from filmweaver.models import FilmModels

    assert entity_slots(["Bo", "Ada"], [("Ada",), ("Ada", "Bo"), ()]).tolist() == [
        [0, 1] + [0] * (SLOTS - 2), [1, 1] + [0] * (SLOTS - 2), [0] * SLOTS]
    bb = tiny_models.backbone
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(1, 16, 2, 4, 4, generator=g)
    x, t = torch.randn(1, 16, 1, 4, 4, generator=g), torch.tensor([500.0])
    text = torch.randn(1, 8, bb.config.text_dim, generator=g)
    slots = entity_slots(["Ada", "Bo"], [("Ada",), ("Bo",)])

    def forward(s):
        with torch.no_grad():
            return bb(x, t, text, context=[ContextFrames(lat, torch.tensor([-3.0, -2.0]), 0.0, kind="shot",
                                                         entity_slots=s)])

    plain = forward(None)
    bb.enable_entity_slots()
    try:
        assert torch.equal(forward(slots), plain)
        with torch.no_grad():
            bb.slot_proj.weight.normal_(generator=g)
        assert not torch.allclose(forward(slots), plain) and not torch.allclose(forward(slots.flip(0)), forward(slots))
        tiny_models.save_pretrained(tmp_path / "m")
    finally:
        bb.slot_proj = None
    loaded = FilmModels.from_pretrained(str(tmp_path / "m"))
    assert loaded.backbone.slot_proj is not None and loaded.backbone.entity_proj is None
    plan, bank, retrieved, block = _third_shot_memory(loaded, tmp_path)
    for j, r in enumerate(retrieved):
        shown = bank.entries[r.bank_index].entities
        want = [float(c in shown) for c in plan.shot.entities.characters]
        assert block.entity_slots[j, : len(want)].tolist() == want

    # the trainer: two stories that both have an "Ada"; shot 1 of story 0 shows Bo then Ada
    from types import SimpleNamespace

    from filmweaver.train.data import LatentStore

    table = SimpleNamespace(shot_story=np.array([0, 0, 1]), shot_start=np.array([0, 2, 4]),
                            shot_length=np.array([2, 2, 2]), shot_cut=np.ones(3, bool), shot_location=np.zeros(3, int),
                            cast_names=[["Ada"], ["Bo", "Ada"], ["Ada"]], num_shots=3)
    store = LatentStore(torch.zeros(6, 4, 2, 2), table)
    hits = store.memory_slots(np.array([1, 1]), np.array([[0, 2], [1, 0]]))
    assert hits[0, 0, :2].tolist() == [0, 1] and hits[0, 1].sum() == 0  # story 1's Ada is another Ada
    assert hits[1, 0, :2].tolist() == [1, 1] and hits[1, 1, :2].tolist() == [0, 1]


def test_text_slots_mark_the_words_that_speak_of_each_character(tiny_models, tmp_path):
    """Each mention of a shot's character starts a span to the next mention or its sentence's end;
    tokens take their span's slot by the shot's order (word-level and byte-level tokenizers alike); the
    slots' map starts at zero (the forward as it was) and, once trained, which words carry which slot
    matters; saved and loaded with the model; the engine marks each shot's prompt by its characters."""
    from filmweaver.models import FilmModels
    from filmweaver.synth.stories import grammar_words
    from filmweaver.text import WanPromptEncoder, entity_spans, entity_token_slots, word_level_tokenizer

    prompt = "wide shot: Ada, a purple round creature, and Bo walk in the forest. The camera pans."
    spans = entity_spans(prompt, ["Ada", "Bo"])
    assert [(j, prompt[s:e]) for j, s, e in spans] == [(0, "Ada, a purple round creature, and "), (1, "Bo walk in the forest")]
    assert [(j, "x Bo Li and Bo. Bo"[s:e]) for j, s, e in entity_spans("x Bo Li and Bo. Bo", ["Bo", "Bo Li"])] == [
        (1, "Bo Li and "), (0, "Bo"), (0, "Bo")]  # the longer name at one place; a sentence ends a span
    assert entity_spans("Adam waves", ["Ada"]) == []  # whole words only

    words = WanPromptEncoder(word_level_tokenizer(grammar_words(cast=True), 32), None, max_sequence_length=32)
    slots = entity_token_slots(words, [prompt, prompt], [["Ada", "Bo"], ["Bo", "Ada"]])
    tokens = words.tokenizer(prompt).input_ids
    by_word = {words.tokenizer.convert_ids_to_tokens(i): int(s) for i, s in zip(tokens, slots[0, :len(tokens)], strict=True)}
    assert by_word["purple"] == by_word["ada"] == 0 and by_word["walk"] == by_word["bo"] == 1
    assert by_word["wide"] == by_word["camera"] == -1 and slots[0, len(tokens):].eq(-1).all()  # padding: none
    assert torch.equal(slots[1], torch.where(slots[0] >= 0, 1 - slots[0], -1))  # the shot's order decides
    enc = tiny_models.prompt_encoder  # byte level: a name is several tokens, all of its slot
    byte_slots = entity_token_slots(enc, ["Ada and Bo meet."], [["Ada", "Bo"]])[0]
    assert byte_slots[:8].tolist() == [0] * 8 and byte_slots[8:15].tolist() == [1] * 7 and byte_slots[15] == -1

    bb = tiny_models.backbone
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 16, 1, 4, 4, generator=g), torch.tensor([500.0])
    text = torch.randn(1, 12, bb.config.text_dim, generator=g)
    marks = torch.tensor([[0, 0, 0, 1, 1, -1] + [-1] * 6])

    def forward(s):
        with torch.no_grad():
            return bb(x, t, bb.add_text_slots(text, s))

    plain = forward(None)
    bb.enable_text_slots()
    try:
        assert torch.equal(forward(marks), plain)
        with torch.no_grad():
            bb.text_slot_proj.weight.normal_(generator=g)
        assert not torch.allclose(forward(marks), plain)
        assert not torch.allclose(forward(torch.where(marks >= 0, 1 - marks, -1)), forward(marks))
        assert torch.equal(bb.add_text_slots(text.repeat(2, 1, 1), marks)[1], bb.add_text_slots(text, marks)[0])  # CFG batch
        tiny_models.save_pretrained(tmp_path / "m")
    finally:
        bb.text_slot_proj = None
    loaded = FilmModels.from_pretrained(str(tmp_path / "m"))
    assert loaded.backbone.text_slot_proj is not None and loaded.backbone.slot_proj is None

    seen = []
    add = loaded.backbone.add_text_slots
    loaded.backbone.add_text_slots = lambda text, slots: seen.append(slots) or add(text, slots)
    plan = _third_shot_memory(loaded, tmp_path)[0]
    assert len(seen) == 2  # one prompt per generated shot (not the negative one)
    engine_plan = StoryEngine(loaded, tmp_path / "p", story=parse_story(entitybench_story()), progress=False).plan()[1]
    want = entity_token_slots(loaded.prompt_encoder, [engine_plan.prompt], [list(engine_plan.shot.entities.characters)])
    assert torch.equal(seen[1], want) and (want >= 0).any()
    assert plan.shot.entities.characters  # the story's shots name characters


def test_slot_regions_mark_each_character_where_it_is_in_a_crowded_keyframe(tiny_models, tmp_path):
    """A frame of n characters marks the i-th one's slot in the i-th vertical strip (a box where a
    detector found one), a lone character on the whole frame; a map that is uniform over a frame is the
    frame-level slot exactly; the trainer marks its keyframes as the engine does; a model trained so
    says so in filmweaver.json and the engine then gives its memory per-pixel slots."""
    import numpy as np

    from filmweaver.backbone.entity_tags import SLOTS, add_entity_tags, entity_slots, slot_regions
    from filmweaver.context import ContextFrames
    from filmweaver.models import FilmModels

    maps = slot_regions(["Bo", "Ada"], [(("Ada", "Bo"), {}), (("Ada",), {}), (("Ivy", "Bo"), {"Bo": (0.0, 0.5, 0.25, 1.0)})],
                        (4, 8))
    assert maps.shape == (3, 4, 8, SLOTS)
    assert maps[0, :, :4, 1].eq(1).all() and maps[0, :, 4:, 1].eq(0).all()  # Ada, named first: the left half
    assert maps[0, :, 4:, 0].eq(1).all() and maps[0, :, :4, 0].eq(0).all()  # Bo: the right half
    assert maps[1, ..., 1].eq(1).all() and maps[1, ..., 0].eq(0).all()  # alone: everywhere
    assert maps[2, 2:, :2, 0].eq(1).all() and maps[2, :2, :, 0].eq(0).all() and maps[2, :, 2:, 0].eq(0).all()  # its box
    assert maps[:, ..., 2:].eq(0).all() and maps[2, ..., 1].eq(0).all()  # Ivy is not in the shot

    bb = tiny_models.backbone
    bb.enable_entity_slots()
    try:
        with torch.no_grad():
            bb.slot_proj.weight.normal_(generator=torch.Generator().manual_seed(0))
        g = torch.Generator().manual_seed(1)
        lat = torch.randn(1, 16, 2, 4, 4, generator=g)
        x, t, text = torch.randn(1, 16, 1, 4, 4, generator=g), torch.tensor([500.0]), torch.randn(1, 8, bb.config.text_dim, generator=g)
        frame = entity_slots(["Ada", "Bo"], [("Ada",), ("Ada", "Bo")])

        def forward(s):
            with torch.no_grad():
                return bb(x, t, text, context=[ContextFrames(lat, torch.tensor([-3.0, -2.0]), 0.0, kind="shot", entity_slots=s)])

        uniform = frame[:, None, None, :].expand(2, 4, 4, SLOTS)
        assert torch.allclose(forward(uniform), forward(frame), atol=1e-6)
        regions = slot_regions(["Ada", "Bo"], [(("Ada",), {}), (("Ada", "Bo"), {})], (4, 4))
        assert not torch.allclose(forward(regions), forward(frame))
        tokens = torch.zeros(1, 8, bb.slot_proj.out_features)
        assert torch.equal(add_entity_tags(bb.slot_proj, tokens, frame[None, 1:]), add_entity_tags(bb.slot_proj, tokens, frame[1:]))
        bb.slot_regions = True
        tiny_models.save_pretrained(tmp_path / "m")
    finally:
        bb.slot_proj, bb.slot_regions = None, False
    loaded = FilmModels.from_pretrained(str(tmp_path / "m"))
    assert loaded.backbone.slot_regions and not FilmModels.tiny(seed=0).backbone.slot_regions
    plan, bank, retrieved, block = _third_shot_memory(loaded, tmp_path)
    assert block.entity_slots.shape == (len(retrieved), *block.latents.shape[3:], SLOTS)
    for j, r in enumerate(retrieved):
        entry = bank.entries[r.bank_index]
        shown = [c for c in plan.shot.entities.characters if entry.shows(c)]
        assert (block.entity_slots[j].sum((0, 1)) > 0).sum() == len(shown)

    # the trainer: shot 1 of story 0 shows Bo then Ada; its keyframe of shot 2 shows Ada then Bo
    from types import SimpleNamespace

    from filmweaver.train.data import LatentStore

    table = SimpleNamespace(shot_story=np.array([0, 0, 0]), shot_start=np.array([0, 2, 4]), shot_length=np.array([2, 2, 2]),
                            shot_cut=np.ones(3, bool), shot_location=np.zeros(3, int),
                            cast_names=[["Ada"], ["Bo", "Ada"], ["Ada", "Bo"]], num_shots=3)
    store = LatentStore(torch.zeros(6, 4, 2, 2), table)
    got = store.memory_slot_regions(np.array([1]), np.array([[2, 0]]), (4, 8))
    want = slot_regions(["Bo", "Ada"], [(("Ada", "Bo"), {}), (("Ada",), {})], (4, 8))
    assert torch.equal(got[0], want)
