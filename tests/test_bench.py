"""`filmweaver bench`: the harness runs on CPU with the tiny shape; token counts and FLOPs are exact."""

import json

import pytest
from typer.testing import CliRunner

from filmweaver.bench import SHAPES, BenchOptions, forward_flops, run_bench, run_story_bench


def test_release_shape_token_count_and_flops():
    # 480x832x81 -> 21 x 60 x 104 latents -> 21 x 30 x 52 tokens (the SPEC's 32,760)
    cfg = SHAPES["1.3b"]
    n = 21 * 30 * 52
    assert n == 32_760
    d, f, lt = 1536, 8960, 512
    per_block = 8 * n * d * d + 4 * n * n * d + 4 * n * d * d + 4 * lt * d * d + 4 * n * lt * d + 4 * n * d * f
    assert forward_flops(cfg, n, n, 1) == 30 * per_block + 2 * n * d * 16 * 4
    assert forward_flops(cfg, n, n, 2) == 2 * forward_flops(cfg, n, n, 1)
    # reused context keys/values: only the generated tokens run through the blocks, over all keys
    c = 15_600  # 10 keyframes
    reused = forward_flops(cfg, n + c, n, 1, n_query=n)
    per_block = 8 * n * d * d + 4 * n * (n + c) * d + 4 * n * d * d + 4 * lt * d * d + 4 * n * lt * d + 4 * n * d * f
    assert reused == 30 * per_block + 2 * n * d * 16 * 4
    assert forward_flops(cfg, n, n, 1) < reused < forward_flops(cfg, n + c, n, 1)


def test_bench_cases_on_cpu():
    res = run_bench(BenchOptions(shape="tiny", height=64, width=64, frames=9, memory=(0, 3), temporal=(False, True),
                                 device="cpu", dtype="float32", warmup=0, repeats=1))
    cases = {(c["memory"], c["temporal"]): c for c in res["cases"]}
    assert cases[(0, False)]["tokens"] == 3 * 4 * 4 and cases[(0, False)]["vs_no_context"] == 1.0
    assert cases[(3, False)]["context_tokens"] == 3 * 16  # one latent frame per keyframe
    # default temporal schedule [(1,2),(2,2),(4,4)] over 8 x 8 latents: 2*16 + 1*4 + 1*1 tokens
    assert cases[(0, True)]["context_tokens"] == 2 * 16 + 4 + 1
    assert all(c["seconds"] > 0 and c["tflops"] > 0 for c in res["cases"])
    assert res["env"]["device"] == "cpu"


def test_bench_cli_writes_json(tmp_path):
    from filmweaver.cli import app

    out = tmp_path / "b.json"
    r = CliRunner().invoke(app, ["bench", "--shape", "tiny", "--device", "cpu", "--dtype", "float32", "--height", "64",
                                 "--width", "64", "--frames", "5", "--memory", "0,2", "--temporal", "no",
                                 "--repeats", "1", "--warmup", "0", "-o", str(out)])
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert [c["memory"] for c in data["cases"]] == [0, 2] and "filmweaver bench" in data["command"]
    assert "| tiny | 64x64x5 | 2 |" in r.output
    r = CliRunner().invoke(app, ["bench", "--shape", "tiny", "--device", "cpu", "--dtype", "float32", "--height", "64",
                                 "--width", "64", "--frames", "5", "--memory", "0,2", "--temporal", "no",
                                 "--repeats", "1", "--warmup", "1", "--context-attention", "causal", "-o", str(out)])
    assert r.exit_code == 0, r.output
    cases = json.loads(out.read_text())["cases"]
    assert [c["context_attention"] for c in cases] == ["causal", "causal"]
    assert cases[0]["first_forward_seconds"] is None and cases[1]["first_forward_seconds"] > 0
    r = CliRunner().invoke(app, ["bench", "--shape", "7b", "--device", "cpu"])
    assert r.exit_code == 2 and "unknown shape" in r.output


def test_story_bench_times_every_shot_and_memory_grows_only_with_sink_window(tmp_path):


    kw = dict(shape="tiny", height=32, width=32, frames=5, story=5, steps=1, device="cpu", dtype="float32")
    topk = run_story_bench(BenchOptions(method="filmweaver", **kw), out_dir=str(tmp_path / "a"))
    sink = run_story_bench(BenchOptions(method="storymem", **kw), out_dir=str(tmp_path / "b"))
    assert [r["shot"] for r in topk["shots"]] == [1, 2, 3, 4, 5]
    assert all(r["denoise_s"] > 0 for r in topk["shots"]) and topk["last_over_second"] is not None
    assert max(r["memory"] for r in topk["shots"]) <= 3  # topk k=3: bounded
    assert sink["shots"][-1]["memory"] > 3 and sink["shots"][-1]["context_tokens"] > topk["shots"][-1]["context_tokens"]


def test_story_bench_with_causal_context_and_pooled_memory(tmp_path):


    kw = dict(shape="tiny", height=64, width=64, frames=5, story=4, steps=2, device="cpu", dtype="float32")
    full = run_story_bench(BenchOptions(**kw), out_dir=str(tmp_path / "a"))
    cheap = run_story_bench(BenchOptions(context_attention="causal", memory_compression=2, **kw),
                            out_dir=str(tmp_path / "b"))
    assert cheap["context_attention"] == "causal" and cheap["memory_compression"] == 2
    assert [4 * r["context_tokens"] for r in cheap["shots"]] == [r["context_tokens"] for r in full["shots"]]


def test_story_bench_warmup_and_model_offload(tmp_path):
    """--story with a warm-up pass (what a compiled run needs) and with --offload model: the measured
    story is the same story, and the warm-up's project is not the measured one."""
    import json



    kw = dict(shape="tiny", height=32, width=32, frames=5, story=3, steps=1, device="cpu", dtype="float32")
    plain = run_story_bench(BenchOptions(**kw), out_dir=str(tmp_path / "a"))
    warm = run_story_bench(BenchOptions(story_warmup=True, offload="model", **kw), out_dir=str(tmp_path / "b"))
    block = run_story_bench(BenchOptions(offload="block", **kw), out_dir=str(tmp_path / "d"))
    assert [r["context_tokens"] for r in block["shots"]] == [r["context_tokens"] for r in plain["shots"]]
    assert not plain["warmed_up"] and warm["warmed_up"] and warm["offload"] == "model"
    assert [r["context_tokens"] for r in warm["shots"]] == [r["context_tokens"] for r in plain["shots"]]
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert len(manifest["shots"]) == 3 and all(s["status"] == "done" for s in manifest["shots"])
    assert plain["peak_gpu_gib"] is None  # CPU: no GPU memory to report
    with pytest.raises(ValueError, match="offload"):
        run_story_bench(BenchOptions(offload="sequential", **kw), out_dir=str(tmp_path / "c"))


def test_markdown_rows_reports_context_parallel_flops_per_gpu():
    from filmweaver.bench import markdown_rows

    case = dict(shape="14b", height=480, width=832, frames=81, memory=0, temporal=False, tokens=32760, seconds=1.839,
                vs_no_context=1.0, tflops=912.4, batch=1)
    env = dict(device="NVIDIA H200", torch="2", dtype="bfloat16", attention_backend="default",
               compile_repeated_blocks=False, repeats=3)
    one = markdown_rows({"env": env, "cases": [case]}, "cmd")
    two = markdown_rows({"env": {**env, "context_parallel": "ulysses", "world_size": 2}, "cases": [case]}, "cmd")
    assert "| 912.4 |" in one and "per GPU" not in one
    assert "2 GPUs together (per GPU)" in two and "| 912.4 (456.2) |" in two and "ulysses x 2" in two
    cfg = markdown_rows({"env": {**env, "cfg_parallel": True, "world_size": 2}, "cases": [{**case, "batch": 2}]}, "cmd")
    assert "CFG parallel: yes x 2, batch 2" in cfg and "context parallel" not in cfg


def test_cfg_parallel_bench_needs_an_even_batch_and_torchrun():

    kw = dict(shape="tiny", height=32, width=32, frames=5, memory=(0,), temporal=(False,), device="cpu",
              dtype="float32", warmup=0, repeats=1)
    with pytest.raises(ValueError, match="odd"):
        run_bench(BenchOptions(batch=1, cfg_parallel=True, **kw))
    with pytest.raises(ValueError, match="do not combine"):
        run_bench(BenchOptions(batch=2, cfg_parallel=True, context_parallel="ulysses", **kw))
    with pytest.raises(RuntimeError, match="torchrun"):
        run_bench(BenchOptions(batch=2, cfg_parallel=True, **kw))


def test_bench_options_write_their_command_and_every_shape_builds_from_the_one_table():
    """One list of bench options: the quoted command names what differs from the defaults, in order,
    and reads back through the CLI's parsers to the same options; presets name their shapes."""
    import dataclasses

    from filmweaver.models import TRANSFORMER_SHAPES, WAN_PRESETS, transformer_shape

    opts = BenchOptions(shape="14b", memory=(0, 10), temporal=(False,), context_timestep=None, compile_blocks=True,
                        story_warmup=False, cfg_parallel=True, batch=2)
    cmd = opts.command()
    assert cmd == ("torchrun --nproc_per_node 2 -m filmweaver.cli bench --shape 14b --memory 0,10 --temporal no "
                   "--batch 2 --context-timestep shared --compile --cfg-parallel --no-story-warmup")
    assert BenchOptions().command() == "filmweaver bench --shape 1.3b"
    for f in dataclasses.fields(BenchOptions):
        if f.metadata["parse"]:
            assert f.metadata["parse"](f.metadata["text"](getattr(opts, f.name))) == getattr(opts, f.name)
    assert SHAPES["wan2.1-t2v-14b"] == SHAPES["14b"] == transformer_shape("wan2.2-t2v-a14b")
    assert all(WAN_PRESETS[p]["shape"] in TRANSFORMER_SHAPES for p in WAN_PRESETS)
    with pytest.raises(KeyError, match="unknown shape"):
        transformer_shape("7b")


def test_train_bench_times_a_lora_step_and_refuses_what_it_does_not_time(tmp_path):
    """`filmweaver bench --train`: the trainer's step (LoRA, gradient checkpointing, optimizer) per case."""
    from filmweaver.cli import app

    out = tmp_path / "t.json"
    args = ["bench", "--train", "--shape", "tiny", "--device", "cpu", "--dtype", "float32", "--height", "32",
            "--width", "32", "--frames", "5", "--memory", "1,3", "--temporal", "no,yes", "--lora-rank", "4",
            "--repeats", "1", "--warmup", "1"]
    r = CliRunner().invoke(app, [*args, "-o", str(out)])
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert [(c["memory"], c["temporal"]) for c in data["cases"]] == [(1, False), (3, False), (1, True), (3, True)]
    assert all(c["seconds_per_step"] > 0 for c in data["cases"])
    assert data["cases"][1]["context_tokens"] == 3 * data["cases"][0]["context_tokens"]
    assert data["env"]["trainable_parameters"] > 0 and data["env"]["gradient_checkpointing"]
    assert "--train --lora-rank 4" in data["command"] and "| s / step |" in r.output
    r = CliRunner().invoke(app, [*args, "--story", "2"])
    assert r.exit_code == 2 and "--train times a training step" in r.output
    r = CliRunner().invoke(app, [*args, "--fsdp"])  # outside torchrun
    assert r.exit_code == 2 and "--fsdp runs under torchrun" in r.output
    r = CliRunner().invoke(app, ["bench", "--shape", "tiny", "--device", "cpu", "--fsdp"])
    assert r.exit_code == 2 and "--fsdp shards a training step: with --train" in r.output


@pytest.mark.slow
def test_train_bench_shards_the_step_over_two_ranks(tmp_path):
    """`torchrun --nproc_per_node 2 -m filmweaver.cli bench --train --fsdp` (CPU ranks, gloo): the trainer's
    sharded step timed; rank 0 writes the result."""
    from helpers import torchrun

    out = tmp_path / "t.json"
    r = torchrun(2, "-m", "filmweaver.cli", "bench", "--train", "--fsdp", "--shape", "tiny", "--device", "cpu",
                 "--dtype", "float32", "--height", "32", "--width", "32", "--frames", "5", "--memory", "3",
                 "--temporal", "no", "--lora-rank", "4", "--repeats", "1", "--warmup", "1", "-o", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["env"]["fsdp"] is True and data["env"]["world_size"] == 2
    assert [c["memory"] for c in data["cases"]] == [3] and data["cases"][0]["seconds_per_step"] > 0
    assert data["command"].startswith("torchrun --nproc_per_node 2 -m filmweaver.cli bench --shape tiny")
    assert "sharded over 2 (FSDP2" in r.stdout
