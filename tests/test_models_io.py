import json

import pytest
import torch
from helpers import small_story

from filmweaver.io import atomic_path, read_video, write_video
from filmweaver.memory.embedder import CLIPEmbedder, ImageTextEmbedder
from filmweaver.models import FilmModels, ModelLoadError, load_models
from filmweaver.synth.architecture import synth_architecture
from filmweaver.text import byte_level_tokenizer


def test_save_and_load_pretrained_roundtrip(tiny_models, tmp_path):
    tiny_models.save_pretrained(tmp_path / "m")
    loaded = FilmModels.from_pretrained(str(tmp_path / "m"))
    assert loaded.model_id == tiny_models.model_id and loaded.trained is False
    assert loaded.defaults == tiny_models.defaults
    x, t, e = torch.randn(1, 16, 2, 8, 8), torch.tensor([300.0]), torch.randn(1, 7, 32)
    with torch.no_grad():
        assert (loaded.backbone(x, t, e) - tiny_models.backbone(x, t, e)).abs().max() < 1e-5
    prompt = "a fox in the snow"
    assert torch.equal(loaded.prompt_encoder.encode(prompt), tiny_models.prompt_encoder.encode(prompt))
    img = torch.rand(2, 3, 40, 48)
    assert torch.allclose(loaded.embedder.embed_images(img), tiny_models.embedder.embed_images(img), atol=1e-6)
    assert torch.allclose(loaded.embedder.embed_texts([prompt]), tiny_models.embedder.embed_texts([prompt]), atol=1e-6)


def test_a_saved_model_does_not_record_where_it_was_loaded_from(tiny_models, tmp_path):
    """diffusers puts the load path in a model's config; saving again (export-ema, training from a
    shipped model) must not carry a local path into the new model's files."""
    tiny_models.save_pretrained(tmp_path / "a")
    loaded = FilmModels.from_pretrained(str(tmp_path / "a"))
    assert loaded.backbone.transformer.config.get("_name_or_path")  # what would leak
    loaded.save_pretrained(tmp_path / "b", dtype=torch.float16)
    for config in (tmp_path / "b").glob("*/config.json"):
        assert "_name_or_path" not in json.loads(config.read_text()), config
    again = FilmModels.from_pretrained(str(tmp_path / "b"))
    assert again.model_id == tiny_models.model_id


def test_incomplete_directory_names_missing_file(tiny_models, tmp_path):
    tiny_models.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "scheduler" / "scheduler_config.json").unlink()
    for f in (tmp_path / "m" / "vae").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ModelLoadError) as exc:
        load_models(model=str(tmp_path / "m"))
    assert "scheduler/scheduler_config.json" in str(exc.value) and "vae/*.safetensors" in str(exc.value)
    with pytest.raises(ModelLoadError, match="not a directory"):
        load_models(model=str(tmp_path / "nothing-here"))
    with pytest.raises(ModelLoadError, match="unknown preset"):
        load_models(preset="huge")


def test_clip_embedder_protocol_and_normalisation(tiny_models):
    emb = tiny_models.embedder
    assert isinstance(emb, CLIPEmbedder) and isinstance(emb, ImageTextEmbedder)
    same = torch.rand(1, 3, 64, 64).expand(3, -1, -1, -1)
    v = emb.embed_images(same)
    assert torch.allclose(v.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(v @ v.T, torch.ones(3, 3), atol=1e-5)  # identical frames -> similarity 1
    t = emb.embed_texts(["a", "a much longer prompt about a fox"])
    assert t.shape == (2, v.shape[1]) and torch.allclose(t.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_byte_tokenizer_roundtrip(tmp_path):
    tok = byte_level_tokenizer()
    ids = tok("café ✓").input_ids
    assert ids[-1] == tok.eos_token_id and tok.decode(ids, skip_special_tokens=True) == "café ✓"
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path)("café ✓").input_ids == ids


def test_video_roundtrip_and_atomic_write(tmp_path):
    frames = torch.linspace(0, 1, 5).view(5, 1, 1, 1).expand(5, 3, 32, 48).contiguous()
    write_video(tmp_path / "v.mp4", frames, fps=8)
    back, fps = read_video(tmp_path / "v.mp4")
    assert back.shape == frames.shape and fps == 8
    assert (back - frames).abs().mean() < 0.02
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "x.json") as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("crash")
    assert not (tmp_path / "x.json").exists() and not list(tmp_path.glob("*.part"))
    # a finished write has the mode a plain open() gives (mkstemp alone would leave 0600)
    import os

    umask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "y.json") as tmp:
            open(tmp, "w").write("{}")
        assert (tmp_path / "y.json").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(umask)


def test_generate_with_saved_model_directory(tiny_models, tmp_path):
    from typer.testing import CliRunner

    from filmweaver.cli import app

    tiny_models.save_pretrained(tmp_path / "m")
    story = tmp_path / "s.json"
    story.write_text(json.dumps(small_story(n_scenes=1, shots_per_scene=2)))
    res = CliRunner().invoke(app, ["generate", str(story), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["model"]["embedder"] == str(tmp_path / "m" / "embedder")


def test_video_encoding_is_repeatable(tmp_path):
    """The same frames give the same file every time (regression: x264's macroblock-tree rate control
    made 7 of 12 encodes of one rendered shot decode differently, up to 24/255 a pixel, so a
    regenerated shot or a rerun storyboard changed although the latents were identical)."""
    from filmweaver.synth.stories import make_story
    from filmweaver.synth.world import render_shot

    frames = torch.from_numpy(render_shot(make_story(5).shots[0])).permute(0, 3, 1, 2).float() / 255
    for i in range(12):
        write_video(tmp_path / f"v{i}.mp4", frames, fps=8)
    first = read_video(tmp_path / "v0.mp4")[0]
    assert all(torch.equal(first, read_video(tmp_path / f"v{i}.mp4")[0]) for i in range(1, 12))
    assert len({(tmp_path / f"v{i}.mp4").read_bytes() for i in range(12)}) == 1


def test_half_precision_save_covers_embedder_and_context_projections(tmp_path):
    """``save_pretrained(dtype=float16)`` (what training ships) halves every stored weight, the CLIP
    embedder and the context projections included, and they load back in float32 for the CPU."""
    from safetensors import safe_open

    models = synth_architecture(size="test", transformer={"layers": 3, "heads": 3})
    assert len(models.backbone.transformer.blocks) == 3 and models.backbone.config.num_attention_heads == 3
    with pytest.raises(ValueError, match="unknown"):
        synth_architecture(size="test", transformer={"width": 3})
    models.save_pretrained(tmp_path / "m", dtype=torch.float16)
    for f in [tmp_path / "m" / "transformer" / "context_projections.safetensors",
              *(tmp_path / "m" / "embedder").glob("*.safetensors")]:
        with safe_open(str(f), "pt") as sf:
            assert {sf.get_tensor(k).dtype for k in sf.keys()} == {torch.float16}, f
    loaded = FilmModels.from_pretrained(str(tmp_path / "m"))
    assert next(loaded.embedder.model.parameters()).dtype == torch.float32
    assert len(loaded.backbone.transformer.blocks) == 3
    img = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(loaded.embedder.embed_images(img), models.embedder.embed_images(img), atol=2e-3, rtol=0)
    for a, b in zip(loaded.backbone.context_proj.parameters(), models.backbone.context_proj.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def test_captions_are_drawn_with_a_font_that_has_their_letters():
    from PIL import Image, ImageDraw

    from filmweaver.io import _covered, _font, _font_file_for, _wrap, contact_sheet

    text = "Café — naïve Ærø, Ελλάδα, Москва"
    path = _font_file_for(frozenset(ord(c) for c in text if not c.isspace()))
    assert path.endswith("DejaVuSans.ttf") and {ord(c) for c in text if not c.isspace()} <= _covered(path)

    # a letter the font has is drawn as that letter, not as the "missing glyph" box (which every
    # missing letter shares): the default bitmap font draws "—" and "é" as the same box
    def ink(font, ch):
        im = Image.new("L", (40, 40))
        ImageDraw.Draw(im).text((4, 4), ch, fill=255, font=font)
        return im.tobytes()

    font = _font(20, text)
    assert len({ink(font, ch) for ch in "—éø\uffff"}) == 4
    sheet = contact_sheet([(text, [(torch.rand(3, 16, 16), "é — label")])], title=text)
    assert sheet.size[0] > 260
    # unspaced scripts wrap inside the "word"
    assert [len(line) for line in _wrap("東京" * 25, 20)] == [20, 20, 10]


def test_videos_join_by_copying_packets_losslessly(tmp_path):
    from filmweaver.io import concat_videos

    torch.manual_seed(0)
    paths = []
    for k, n in enumerate((9, 13, 6)):
        paths.append(tmp_path / f"s{k}.mp4")
        write_video(paths[-1], torch.rand(n, 3, 32, 48), fps=8)
    concat_videos(paths, tmp_path / "film.mp4")
    film, _ = read_video(tmp_path / "film.mp4")
    assert torch.equal(film, torch.cat([read_video(p)[0] for p in paths]))  # the same packets, decoded
    write_video(tmp_path / "other.mp4", torch.rand(4, 3, 16, 48), fps=8)
    with pytest.raises(ValueError, match="encoded unlike"):
        concat_videos([paths[0], tmp_path / "other.mp4"], tmp_path / "bad.mp4")
    assert not (tmp_path / "bad.mp4").exists()
