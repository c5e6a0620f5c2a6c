import os

import pytest

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def prepared_lm(tmp_path_factory):
    """SmolLM2-135M converted once for the whole session (about 20 s)."""
    from pipeline.language_models import prepare_language_model

    directory = tmp_path_factory.mktemp("lm") / "smollm2-135m"
    prepare_language_model("smollm2-135m", directory)
    return directory


@pytest.fixture(scope="session")
def easy_vqa_val():
    from pipeline.datasets import read_manifest

    return read_manifest("easy_vqa", "val", val_size=500, seed=0).manifest
