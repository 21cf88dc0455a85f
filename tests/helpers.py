from pathlib import Path

# ST-Bench scripts are used from ../shared (S-Lab licence: never copied into this repo).
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ST_BENCH = SHARED / "st-bench"


def small_story(n_scenes=2, shots_per_scene=2, **extra) -> dict:
    scenes = []
    for s in range(n_scenes):
        prompts = [f"scene {s} shot {k}: a red fox walks through a snowy forest" for k in range(shots_per_scene)]
        scenes.append({"scene_num": s + 1, "video_prompts": prompts,
                       "first_frame_prompt": [f"first frame {s}.{k}" for k in range(shots_per_scene)],
                       "cut": [True] + [False] * (shots_per_scene - 1)})
    return {"story_name": "Fox", "story_overview": "A fox in winter.", "scenes": scenes, **extra}


def torchrun(nproc: int, *args: str, tmp_dir=None, timeout: float = 600, env: dict | None = None):
    """``python -m torch.distributed.run --standalone`` with ``nproc`` CPU ranks (gloo), one OpenMP
    thread each: the standalone rendezvous takes a free port, so two suites on one machine never
    collide. ``env`` adds variables (``None`` removes one). Returns the finished :class:`subprocess.CompletedProcess`."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}.items() if v is not None}
    if tmp_dir is not None:
        env["TMPDIR"] = str(tmp_dir)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(nproc), *args], capture_output=True, text=True, timeout=timeout, env=env)


def entitybench_story(shots_per_scene=(2, 1, 2)) -> dict:
    """A small script in EntityBench's format (written for the tests): two characters, a place and a
    prop on the sheet, a per-shot schedule keyed "scene:shot", each entity's description prefixing the
    prompt of the shot where it first appears, and one scheduled prop the sheet never describes."""
    sheet = {"Character 1": ("Mira", "a tall woman in a red coat"), "Character 2": ("Tomas", "a short man in a green hat"),
             "Location 1": ("The Harbour", "a grey stone quay with moored boats"),
             "Object 1": ("the brass lantern", "a small lantern with a brass handle")}
    plan = [  # (characters, places, objects) per shot, in film order
        (["Mira"], ["The Harbour"], ["the brass lantern"]), (["Mira", "Tomas"], ["The Harbour"], []),
        (["Tomas"], [], ["the fishing net"]), (["Mira"], ["The Harbour"], []), (["Tomas", "Mira"], [], ["the brass lantern"]),
    ]
    described: set[str] = set()
    scenes, schedule, i = [], {}, 0
    for s, n in enumerate(shots_per_scene, start=1):
        prompts = []
        for k in range(n):
            chars, places, objects = plan[i % len(plan)]
            new = [name for name in chars + places + objects if name not in described
                   and any(v[0] == name for v in sheet.values())]
            described.update(new)
            prefix = "".join(f"{name}: {next(d for nm, d in sheet.values() if nm == name)}\n" for name in new)
            action = f"In `{places[0]}`, " if places else ""
            action += " and ".join(f"`{c}`" for c in chars) + " look around" + (f" holding {objects[0]}" if objects else "")
            prompts.append((prefix + "\n" + action) if prefix else action)
            schedule[f"{s}:{k + 1}"] = {"characters": chars, "places": places, "objects": objects}
            i += 1
        scenes.append({"scene_num": s, "video_prompts": prompts, "cut": [True] + [False] * (n - 1),
                       "action_descriptions": prompts})
    return {"story_name": "harbour", "story_overview": "Mira and Tomas at the harbour.", "scenes": scenes,
            "entity_schedule": schedule,
            "entity_descriptions": {label: {"name": nm, "label": label, "description": d} for label, (nm, d) in sheet.items()},
            "_name_map": {label: nm for label, (nm, _) in sheet.items()}, "_num_scenes": len(scenes), "_num_shots": i}


class BrightBlobCounter:
    """A people detector for curation tests: one box per 8x8 block of the frame whose mean brightness is
    above 0.9 (tests draw "people" as white squares). A real detector of that picture, through the
    same plug-in path as any other (``filters.people_detector=helpers:bright_blob_counter``)."""

    name = "bright-blobs"

    def detect(self, images):
        from filmweaver.memory.detect import Box

        out = []
        for image in images:
            h, w = image.shape[1:]
            blocks = image.mean(0).unfold(0, 8, 8).unfold(1, 8, 8).mean((-1, -2))  # [h/8, w/8]
            out.append([Box(x * 8 / w, y * 8 / h, (x + 1) * 8 / w, (y + 1) * 8 / h)
                        for y, x in (blocks > 0.9).nonzero().tolist()])
        return out


def bright_blob_counter(model=None, device="cpu"):
    return BrightBlobCounter()


def tiny_vlm(directory) -> str:
    """A tiny random LLaVA (CLIP vision tower + Llama, a word-level tokenizer, a chat template) saved
    in ``directory``: a real transformers vision-language model, untrained, built offline."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    words = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "yes", "no", ":", "{", "}", '"', "shots", "a"]
    words += [f"w{i}" for i in range(40)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    template = ("{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image> {% else %}"
                "{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}{% if add_generation_prompt %}: {% endif %}")
    processor = LlavaProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32},
                                                                     crop_size={"height": 32, "width": 32}),
                               tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=template)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       image_size=32, patch_size=8),
        text_config=LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=2, pad_token_id=0, bos_token_id=1,
                                eos_token_id=2),
        image_token_index=4, vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(directory)
    processor.save_pretrained(directory)
    return str(directory)


CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str | None:
    """A headless-capable Chromium on this machine (Debian's ``chromium``), or None."""
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def dump_dom(page, profile, budget_ms: int = 10000) -> str:
    """The DOM of a local HTML page after its scripts ran, as headless Chromium sees it."""
    import subprocess

    return subprocess.run([chromium(), *CHROME_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
                           "--dump-dom", Path(page).resolve().as_uri()], capture_output=True, text=True,
                          timeout=120).stdout
