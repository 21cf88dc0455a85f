import json

import pytest
from helpers import small_story


@pytest.fixture(scope="session")
def tiny_models():
    from filmweaver.models import FilmModels

    return FilmModels.tiny(seed=0)


@pytest.fixture
def story_file(tmp_path):
    path = tmp_path / "story.json"
    path.write_text(json.dumps(small_story()))
    return path
