import torch
import torch.nn.functional as F

from filmweaver.backbone.wan import ContextWanTransformer
from filmweaver.memory.keyframes import ContrastScorer, Keyframe, KeyframeBank, KeyframeSelector
from filmweaver.memory.shot_cache import SinkWindowMemory, TopKRetrieval, make_shot_cache_policy
from filmweaver.memory.temporal_cache import TemporalCache


def unit(*v):
    return F.normalize(torch.tensor(v, dtype=torch.float32), dim=-1)


def kf(emb, shot, frame=0, kind="keyframe", label=""):
    return Keyframe(torch.zeros(3, 4, 4), emb, torch.zeros(16, 1, 2, 2), shot, frame, kind, label)


# -- temporal cache ---------------------------------------------------------------------------------
def test_temporal_cache_token_count_constant_as_shot_grows(tiny_models):
    backbone: ContextWanTransformer = tiny_models.backbone
    for chunk in (1, 3):
        for schedule in ([(1, 2), (2, 2), (4, 4)], [(1, 1), (2, 2)], [(1, 3)]):
            cache = TemporalCache(schedule)
            counts = []
            for _ in range(20):  # a shot growing from 1 to 20 chunks
                blocks = cache.context()
                counts.append(backbone.count_tokens(blocks, (8, 8)))
                cache.push(torch.randn(1, 16, chunk, 8, 8))
                assert len(cache) <= cache.capacity
            assert counts[0] == 0  # the first chunk of a cut shot has no temporal context
            assert len(set(counts[1:])) == 1 and counts[1] > 0, (chunk, schedule, counts)
    # default schedule at 8x8 latents: 2 frames x 16 tokens + one 2x group (4) + one 4x group (1)
    cache = TemporalCache()
    cache.push(torch.randn(1, 16, 1, 8, 8))
    assert backbone.count_tokens(cache.context(), (8, 8)) == 37 and cache.capacity == 8


def test_temporal_cache_positions_and_order():
    cache = TemporalCache([(1, 2), (2, 2)])
    frames = torch.arange(6, dtype=torch.float32).view(1, 1, 6, 1, 1).expand(1, 16, 6, 2, 2)
    cache.push(frames)  # frames 0..5; the window keeps 2..5
    full, half = cache.context(timestep=0.0)
    assert full.compression == 1 and half.compression == 2
    assert full.positions.tolist() == [-2.0, -1.0] and full.latents[0, 0, :, 0, 0].tolist() == [4.0, 5.0]
    assert half.positions.tolist() == [-4.0, -3.0] and half.latents[0, 0, :, 0, 0].tolist() == [2.0, 3.0]


def test_short_history_is_padded_with_the_oldest_frame():
    cache = TemporalCache([(1, 1), (4, 4)])
    frames = torch.tensor([7.0, 8.0]).view(1, 1, 2, 1, 1).expand(1, 16, 2, 2, 2)
    cache.push(frames)
    full, quarter = cache.context()
    assert full.latents[0, 0, :, 0, 0].tolist() == [8.0] and full.positions.tolist() == [-1.0]
    assert quarter.num_frames == 4 and quarter.positions.tolist() == [-5.0, -4.0, -3.0, -2.0]
    assert quarter.latents[0, 0, :, 0, 0].tolist() == [7.0, 7.0, 7.0, 7.0]


# -- shot cache policies ------------------------------------------------------------------------------
def test_topk_retrieves_by_prompt_similarity():
    bank = KeyframeBank([kf(unit(1, 0, 0), 0), kf(unit(0, 1, 0), 1), kf(unit(0, 0, 1), 2), kf(unit(1, 1, 0), 3)],
                        dedupe_threshold=2)
    chosen = TopKRetrieval(k=2).select(bank, unit(0.9, 0.1, 0))
    assert [c.bank_index for c in chosen] == [0, 3]  # bank order, most similar two
    assert chosen[0].similarity > chosen[1].similarity > 0.7
    # required entries (e.g. a named character's reference) always make it in
    chosen = TopKRetrieval(k=2).select(bank, unit(0.9, 0.1, 0), required=[2])
    assert [c.bank_index for c in chosen] == [0, 2] and chosen[1].role == "required"


def test_topk_per_shot_cap_lets_other_shots_in():
    """Three near-duplicate keyframes of shot 1 would take every slot; with ``per_shot=1`` the best of
    each shot comes first, and free slots still fill from the rest when there are too few shots."""
    bank = KeyframeBank([kf(unit(0.6, 0.8, 0), 0), kf(unit(1, 0.1, 0), 1), kf(unit(1, 0.12, 0), 1),
                         kf(unit(1, 0.14, 0), 1), kf(unit(0, 0, 1), 2)], dedupe_threshold=2)
    prompt = unit(1, 0, 0)
    assert [c.bank_index for c in TopKRetrieval(k=3).select(bank, prompt)] == [1, 2, 3]
    assert [c.bank_index for c in TopKRetrieval(k=3, per_shot=1).select(bank, prompt)] == [0, 1, 4]
    assert [c.bank_index for c in TopKRetrieval(k=4, per_shot=1).select(bank, prompt)] == [0, 1, 2, 4]
    assert [c.bank_index for c in TopKRetrieval(k=3, per_shot=2).select(bank, prompt)] == [0, 1, 2]
    # required entries stay, and user references (source_shot -1) are not capped
    refs = KeyframeBank([kf(unit(1, 0, 0), -1), kf(unit(1, 0.05, 0), -1), *bank.entries], dedupe_threshold=2)
    chosen = TopKRetrieval(k=3, per_shot=1).select(refs, prompt, required=[6])
    assert [c.bank_index for c in chosen] == [0, 1, 6] and chosen[2].role == "required"
    assert make_shot_cache_policy("topk", k=3, per_shot=1).per_shot == 1


def test_sink_window():
    bank = KeyframeBank([kf(unit(1, 0), s) for s in range(12)], dedupe_threshold=2)
    chosen = SinkWindowMemory(sink=3, max_size=6).select(bank)
    assert [c.bank_index for c in chosen] == [0, 1, 2, 9, 10, 11]
    assert [c.role for c in chosen] == ["sink"] * 3 + ["window"] * 3
    small = KeyframeBank(bank.entries[:4], dedupe_threshold=2)
    assert [c.bank_index for c in SinkWindowMemory(3, 10).select(small)] == [0, 1, 2, 3]
    assert make_shot_cache_policy("none").select(bank) == []


# -- keyframe selection and the bank --------------------------------------------------------------------
def test_adaptive_threshold_selection():
    # a shot that drifts slowly: consecutive cosines ~0.95, so 0.9 picks few; a hard change picks more
    angles = torch.linspace(0, 1.5, 16)
    embs = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    sel = KeyframeSelector(max_per_shot=3).select(embs)
    assert sel.frame_indices[0] == 0 and len(sel.frame_indices) <= 3
    assert sel.threshold <= 0.9
    # with max 10 and a 0.9 threshold: a new keyframe each time the angle moved past acos(0.9)
    many = KeyframeSelector(max_per_shot=10).select(embs)
    assert sel.threshold < many.threshold == 0.9
    steps = [float(embs[a] @ embs[b]) for a, b in zip(many.frame_indices, many.frame_indices[1:], strict=False)]
    assert all(s < 0.9 for s in steps)
    # identical frames: only the first
    assert KeyframeSelector().select(unit(1, 0).expand(8, 2)).frame_indices == [0]


def test_quality_threshold_skips_bad_frames():
    images = torch.zeros(4, 3, 8, 8)
    images[2:, :, :, :4] = 1.0  # frames 2, 3 have contrast; 0, 1 are flat
    embs = torch.stack([unit(1, 0), unit(0, 1), unit(1, 0), unit(0, 1)])
    sel = KeyframeSelector(max_per_shot=3, quality_scorer=ContrastScorer(), quality_threshold=0.1).select(embs, images)
    assert sel.frame_indices == [2, 3]


def test_bank_dedupe_persistence_and_rebuild(tmp_path):
    bank = KeyframeBank()
    assert bank.add(kf(unit(1, 0), 0))
    assert not bank.add(kf(unit(1, 0.05), 1))  # cosine > 0.9 to an existing keyframe
    assert bank.add(kf(unit(0, 1), 1))
    assert bank.add(kf(unit(1, 1), -1, kind="reference", label="Fox"), dedupe=False)
    bank.save(tmp_path)
    again = KeyframeBank.load(tmp_path)
    assert [(e.source_shot, e.kind, e.label) for e in again] == [(0, "keyframe", ""), (1, "keyframe", ""), (-1, "reference", "Fox")]
    assert torch.allclose(again.embeddings, bank.embeddings)
    assert again.entries[0].latent.shape == (16, 1, 2, 2)
    assert [e.source_shot for e in again.before_shot(1)] == [0, -1]
