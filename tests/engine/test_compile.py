"""train.compile: the backbones run compiled, under the eager module's parameter names, computing
the eager step's loss and gradients within rounding; the setting keys its own artifact."""
import pytest
import torch

from orl_bench import pipeline
from orl_bench.config import config_hash
from orl_bench.engine.distributed import DistInfo
from orl_bench.engine.trainer import build_method
from orl_bench.methods.base import Progress
from orl_bench.models.backbones import ResNet


def test_compile_keys_its_own_artifact_and_leaves_other_hashes_alone():
    eager = pipeline.load_pretrain_config("byol", "tiny", [])
    compiled = pipeline.load_pretrain_config("byol", "tiny", ["train.compile=true"])
    assert config_hash(compiled) != config_hash(eager)
    assert config_hash(pipeline.load_pretrain_config("byol", "tiny", ["train.compile=false"])) == config_hash(eager)


@pytest.mark.slow  # compiling takes one to two minutes on two busy cores
def test_compiled_step_matches_the_eager_step_under_the_same_names():
    """One step from the same weights and batch. Over many steps the two drift apart like any two
    runs that round differently (BN statistics amplify a 1e-6 change to ~0.5 within 8 steps here),
    so one step is what can be compared."""
    from torch._dynamo.utils import counters
    steps = {}
    for compiled in (False, True):
        cfg = pipeline.load_pretrain_config("byol", "tiny", [f"train.compile={str(compiled).lower()}"])
        method = build_method(cfg, DistInfo(0, 1, 0, torch.device("cpu")))
        size = cfg.method["views"]["size"]
        generator = torch.Generator().manual_seed(0)
        views = tuple(torch.randn(16, 3, size, size, generator=generator).contiguous(memory_format=torch.channels_last)
                      for _ in range(2))
        backbones = [m for m in method.modules() if isinstance(m, ResNet)]
        assert len(backbones) == 2 and all((m._compiled_call_impl is not None) == compiled for m in backbones), \
            "the online and the target backbone compiled exactly when asked"
        graphs_before = counters["stats"]["unique_graphs"]
        loss = method(views, Progress(0, 10, 0))["loss"]
        loss.backward()
        steps[compiled] = (loss.item(), {n: p.grad for n, p in method.named_parameters() if p.grad is not None},
                           counters["stats"]["unique_graphs"] - graphs_before)
    (eager_loss, eager_grads, eager_graphs), (loss, grads, graphs) = steps[False], steps[True]
    assert eager_graphs == 0 and graphs >= 1, "the compiled step ran through dynamo"
    assert grads.keys() == eager_grads.keys()
    assert loss == pytest.approx(eager_loss, rel=1e-5)
    scale = max(g.abs().max().item() for g in eager_grads.values())
    assert max((grads[n] - eager_grads[n]).abs().max().item() for n in grads) < 1e-4 * scale
