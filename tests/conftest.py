import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _clear_hydra():
    from hydra.core.global_hydra import GlobalHydra

    yield
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One feature-cache folder for the whole session (FSDD features are computed once)."""
    return tmp_path_factory.mktemp("data_cache")
