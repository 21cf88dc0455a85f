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
