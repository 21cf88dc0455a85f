"""Regional prompts: each character's description is read only where that character is drawn."""

import pytest
import torch
from diffusers import WanTransformer3DModel

from filmweaver.backbone.entity_tags import SLOTS
from filmweaver.backbone.regional_text import TextRegions, shot_regions
from filmweaver.backbone.wan import ContextWanTransformer
from filmweaver.context import ContextFrames
from filmweaver.engine import EngineConfig, StoryEngine
from filmweaver.models import TRANSFORMER_SHAPES
from filmweaver.script import parse_story
from filmweaver.text import entity_spans, entity_token_slots


def test_description_spans_are_a_name_and_the_description_set_off_after_it():
    prompt = ("Wide shot: Ada, a purple round creature with stripes, and Ivy (a green square creature) walk "
              "in a canyon. Ivy waves. Ada, Bo and Ivy wave.\nBo: a short man in a green hat\nBo looks.")
    got = [(j, prompt[s:e]) for j, s, e in entity_spans(prompt, ["Ada", "Ivy", "Bo"], "description")]
    assert got == [(0, "Ada, a purple round creature with stripes"), (1, "Ivy (a green square creature)"),
                   (1, "Ivy"), (0, "Ada, "), (2, "Bo"), (1, "Ivy"), (2, "Bo: a short man in a green hat"), (2, "Bo")]
    # the default spans still run to the next name or the sentence's end (what text slots were trained on)
    assert entity_spans("Ivy waves here.", ["Ivy"]) == [(0, 0, 14)]


def test_a_mask_lets_each_region_read_its_own_description_and_the_shared_words():
    slots = torch.tensor([-1, 0, 0, -1, 1, 1, -1, 2])  # slot 2: a character without a region
    regions = shot_regions(["Ada", "Ivy"], (4, 8))
    assert regions.shape == (4, 8, SLOTS) and regions[:, :4, 0].eq(1).all() and regions[:, 4:, 1].eq(1).all()
    mask = TextRegions(slots, regions).mask(frames=2, patch=(2, 2))  # 2 x 4 tokens a frame
    assert mask.shape == (16, 8)
    left, right = mask[[0, 1, 4, 5]], mask[[2, 3, 6, 7]]
    assert left[:, [1, 2]].all() and not left[:, [4, 5]].any()
    assert right[:, [4, 5]].all() and not right[:, [1, 2]].any()
    assert mask[:, [0, 3, 6, 7]].all()  # words of no one, and a character placed nowhere: read everywhere
    assert torch.equal(mask[:8], mask[8:])  # the same in every frame


def test_a_batch_of_regions_is_the_rows_one_by_one():
    from filmweaver.backbone.regional_text import region_masks, strip_regions

    counts = torch.tensor([1, 2, 3, 4])
    strips = strip_regions(counts, (6, 10))
    for n, got in zip(counts.tolist(), strips, strict=True):
        assert torch.equal(got, shot_regions([f"c{i}" for i in range(n)], (6, 10)))  # the engine's layout
    g = torch.Generator().manual_seed(0)
    slots = torch.randint(-1, 4, (4, 9), generator=g)
    batched = region_masks(TextRegions(slots, strips), 4, 2, (2, 2), 15, 9, "cpu")
    rows = region_masks([TextRegions(s, r) for s, r in zip(slots, strips, strict=True)], 4, 2, (2, 2), 15, 9, "cpu")
    assert batched.shape == (4, 30, 9) and torch.equal(batched, rows)
    assert region_masks([None, None], 2, 2, (2, 2), 15, 9, "cpu") is None
    bias = region_masks(TextRegions(slots, strips, strength=3.0), 4, 2, (2, 2), 15, 9, "cpu")
    assert torch.equal(bias, torch.where(rows, 0.0, -3.0))


def _one_block_backbone(context_attention="full"):
    """One block: a generated token's output then depends on the text only through its own
    cross-attention (self-attention runs before it, on text-free inputs)."""
    torch.manual_seed(0)
    shape = {**TRANSFORMER_SHAPES["tiny"], "num_layers": 1}
    bb = ContextWanTransformer(WanTransformer3DModel(**shape).eval(), context_attention=context_attention)
    bb.enable_regional_text()
    return bb


@pytest.mark.parametrize("context_attention", ["full", "causal"])
def test_a_masked_region_does_not_read_the_other_characters_words(context_attention):
    bb = _one_block_backbone(context_attention)
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 16, 2, 4, 8, generator=g), torch.tensor([500.0, 500.0])
    text = torch.randn(2, 10, bb.config.text_dim, generator=g)
    slots = torch.tensor([-1, 0, 0, 0, -1, 1, 1, 1, -1, -1])
    regions = TextRegions(slots, shot_regions(["Ada", "Ivy"], (4, 8)))
    memory = [ContextFrames(torch.randn(1, 16, 1, 4, 8, generator=g), torch.tensor([-3.0]), timestep=0.0, kind="shot")]
    other = text.clone()
    other[:, 5:8] += torch.randn(2, 3, bb.config.text_dim, generator=g)  # Ivy's description changed

    def run(txt, rows):
        with torch.no_grad():
            return bb(x, t, txt, context=memory, text_regions=rows)

    masked, masked_other = run(text, [regions, None]), run(other, [regions, None])
    # row 0 masked: the left half (Ada's) is blind to Ivy's words, the right half is not
    assert torch.allclose(masked[0, :, :, :, :4], masked_other[0, :, :, :, :4], atol=1e-6)
    assert not torch.allclose(masked[0, :, :, :, 4:], masked_other[0, :, :, :, 4:], atol=1e-4)
    # row 1 unmasked (a negative prompt's row): as without regions, everywhere reads everything
    assert torch.allclose(masked[1], run(text, None)[1], atol=1e-6)
    assert not torch.allclose(masked_other[1, :, :, :, :4], masked[1, :, :, :, :4], atol=1e-4)
    # a layout that places no one masks nothing
    nowhere = TextRegions(slots, torch.zeros(4, 8, SLOTS))
    assert torch.allclose(run(text, [nowhere]), run(text, None), atol=1e-6)


def test_the_engine_masks_only_the_shot_prompt_of_a_shot_of_several_characters(tiny_models, tmp_path):
    from helpers import entitybench_story

    seen = []
    forward = tiny_models.backbone.forward

    def spy(*args, text_regions=None, **kw):
        seen.append(text_regions)
        return forward(*args, text_regions=text_regions, **kw)

    tiny_models.backbone.forward = spy
    story = parse_story(entitybench_story())
    engine = StoryEngine(tiny_models, tmp_path / "p", story=story, config=EngineConfig(regional_prompts=True),
                         progress=False)
    engine.generate(max_shots=2)
    plans = engine.plan()[:2]
    crowded = [len(p.shot.entities.characters) > 1 for p in plans]
    assert any(crowded)
    masked = [r for r in seen if r is not None]
    assert masked and all(sum(x is not None for x in rows) == len(rows) // 2 for rows in masked)  # cond of a CFG pair
    plan = plans[crowded.index(True)]
    want = entity_token_slots(tiny_models.prompt_encoder, [plan.prompt], [list(plan.shot.entities.characters)],
                              spans="attributes")[0]
    assert any(torch.equal(r.token_slots, want) for rows in masked for r in rows if r is not None)
    if not all(crowded):  # a shot of one character: no masks at all
        assert any(r is None for r in seen)


def test_a_shot_layout_places_characters_and_bad_boxes_are_named_with_their_path(tiny_models, tmp_path):
    import json

    from filmweaver.script import ScriptError, load_story

    story = json.loads(open("examples/cast_story.json").read())
    story["scenes"][0]["shots"][0]["layout"] = {"Ivy": [0.0, 0.25, 0.4, 1.0]}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(story))
    parsed = load_story(path)
    engine = StoryEngine(tiny_models, tmp_path / "p", story=parsed, config=EngineConfig(regional_prompts=True),
                         progress=False)
    plan = engine.plan()[0]
    regions = engine._text_regions(plan).regions  # Ivy in her box, Ada (named first of two) in the left half
    h, w = engine.latent_hw
    ivy = shot_regions(["Ada", "Ivy"], (h, w), {"Ivy": (0.0, 0.25, 0.4, 1.0)})[..., 1]
    assert torch.equal(regions[..., 1], ivy) and ivy[: h // 4].eq(0).all() and ivy[h // 2:, 0].eq(1).all()
    assert regions[:, : w // 2, 0].eq(1).all() and regions[:, w // 2:, 0].eq(0).all()
    for box, where in (({"Bo": [0, 0, 1, 1]}, "scenes[0].shots[0].layout.Bo"),
                       ({"Ivy": [0.5, 0, 0.4, 1]}, "scenes[0].shots[0].layout.Ivy")):
        story["scenes"][0]["shots"][0]["layout"] = box
        path.write_text(json.dumps(story))
        with pytest.raises(ScriptError, match=rf"{where.replace('[', '.').replace(']', '.')}"):
            load_story(path)


def test_a_model_recommends_regional_prompts_and_the_user_overrides_it(tiny_models):
    from filmweaver.settings import dotted_keys
    from filmweaver.train.config import TrainConfig

    cfg = TrainConfig.model_validate({"generate": {"regional_prompts": True, "sampler": {"guidance_scale": 4.0}}})
    assert dotted_keys(cfg.generate, depth=1) == {"regional_prompts": True, "sampler.guidance_scale": 4.0}
    assert dotted_keys({"a": {"b": {"c": 1}}, "d": {}}) == {"a.b.c": 1}  # every level; an empty section adds nothing
    with pytest.raises(ValueError, match="unknown engine setting.*regional_prompt"):
        TrainConfig.model_validate({"generate": {"regional_prompt": True}})
    tiny_models.defaults = {**tiny_models.defaults, **dotted_keys(cfg.generate, depth=1)}
    assert EngineConfig().resolve(tiny_models).regional_prompts
    assert EngineConfig().resolve(tiny_models).sampler.guidance_scale == 4.0
    assert not EngineConfig(regional_prompts=False).resolve(tiny_models).regional_prompts  # the user's word wins
