import json
import os

# One intra-op thread per test process: the suite runs as one pytest-xdist worker per core, and on a
# busy machine several OpenMP threads per process wait on each other at every barrier (measured: the
# suite 4.8x slower beside two CPU-bound processes with two threads, 2.1x with one). Set before torch
# loads; subprocesses (torchrun ranks, the CLI) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import small_story  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core, at most four (each holds a torch and the tiny models)."""
    return max(1, min(4, len(os.sched_getaffinity(0))))


@pytest.fixture
def tiny_models():
    """A fresh tiny preset per test (built in ~30 ms): tests may change its settings (model id,
    attention mode, fusion) without leaking them into others."""
    from filmweaver.models import FilmModels

    return FilmModels.tiny(seed=0)


@pytest.fixture
def story_file(tmp_path):
    path = tmp_path / "story.json"
    path.write_text(json.dumps(small_story()))
    return path
