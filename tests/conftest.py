import json

import pytest
from helpers import small_story


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
