import pytest
import torch


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A tiny checkpoint in upstream's layout, made once per test session (with its fp8 twin)."""
    from ovi.pipeline.random_checkpoint import make_tiny
    return make_tiny(tmp_path_factory.mktemp("tiny_ckpt"), fp8=True)


@pytest.fixture(scope="session")
def tiny_engine(tiny_ckpt):
    import ovi
    # The random tiny preset with the settings the engine tests were written for (SLG on block 1).
    return ovi.Engine.from_config(ovi.load_config(model_name="tiny", ckpt_dir=str(tiny_ckpt), sample_steps=4,
                                                  slg_layer=1))


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.set_num_threads(2)


@pytest.fixture
def queue(tmp_path):
    """A fresh JobQueue in a temp folder."""
    from ovi.queue import JobQueue
    q = JobQueue(tmp_path / "queue.db")
    yield q
    q.close()
