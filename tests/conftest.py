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


def _torch_threads(n: int):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    """torch on one thread for the test, restored after it."""
    yield from _torch_threads(1)


@pytest.fixture
def two_threads():
    """torch on two threads for the test, restored after it."""
    yield from _torch_threads(2)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One feature-cache folder for the whole session (FSDD features are computed once)."""
    return tmp_path_factory.mktemp("data_cache")
