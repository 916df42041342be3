import pytest
import torch

from orl_bench.engine import threads
from orl_bench.engine.threads import torch_threads, training_threads

CPU = torch.device("cpu")


def test_cpu_training_gets_the_cores_its_loader_workers_leave(monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert training_threads(CPU, 1) == 7
    assert training_threads(CPU, 12) == 1  # never fewer than one
    assert training_threads(CPU, 1, requested=3) == 3  # train.cpu_threads wins
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four torchrun ranks share the node's 8 cores
    assert training_threads(CPU, 1) == 1
    assert training_threads(torch.device("cuda"), 1) == torch.get_num_threads()  # the GPU runs the step


def test_negative_counts_are_refused_when_the_recipe_is_read():
    from orl_bench import pipeline
    from orl_bench.config import ConfigError
    for key in ("train.cpu_threads=-1", "train.num_workers=-2"):
        with pytest.raises(ConfigError, match=r"train.num_workers >= 0 and train.cpu_threads >= 0"):
            pipeline.load_pretrain_config("byol", "tiny", [key])


def test_thread_count_is_restored_after_the_block():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        with torch_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError("the block fails")
    assert torch.get_num_threads() == before
