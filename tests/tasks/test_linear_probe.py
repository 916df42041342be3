"""Linear evaluation (tasks/linear_probe.py): the frozen backbone stays bit-identical, separable
features reach 100% top-1, and a resumed run equals an uninterrupted one."""
from __future__ import annotations

import pytest
import torch

from orl_bench.models.backbones import build_backbone
from orl_bench.tasks.classify import Schedule, topk_correct
from orl_bench.tasks.features import tap_features
from orl_bench.tasks.linear_probe import LayerHeads, check_unchanged, evaluate_heads, frozen_snapshot, train_linear_heads

LAYERS = ("res4", "res5_gap")


def toy_images(classes: int = 4, per_class: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class a flat colour of its own plus a little noise: distinct points for any backbone."""
    g = torch.Generator().manual_seed(0)
    colours = torch.rand(classes, 3, 1, 1, generator=g) * 2 - 1
    targets = torch.arange(classes).repeat_interleave(per_class)
    images = colours[targets] + 0.05 * torch.randn(len(targets), 3, 32, 32, generator=g)
    return images, targets


def batches(images, targets, size=8):
    def loader_at(epoch: int):
        order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(epoch))
        return [(images[order[i:i + size]], targets[order[i:i + size]]) for i in range(0, len(targets), size)]
    return loader_at


def setup(seed: int = 0):
    torch.manual_seed(seed)
    backbone = build_backbone("resnet18", 16).eval().to(memory_format=torch.channels_last)
    images, targets = toy_images()
    with torch.no_grad():
        dims = {k: v.shape[1] for k, v in tap_features(backbone, images[:2], LAYERS).items()}
    torch.manual_seed(1)
    return backbone, LayerHeads(dims, 4), images, targets


def test_separable_features_reach_full_accuracy_and_the_backbone_does_not_move(tmp_path):
    backbone, heads, images, targets = setup()
    snapshot = frozen_snapshot(backbone)
    losses = train_linear_heads(backbone, heads, batches(images, targets), Schedule(30, (20,), 0.1, 8, 0.9, True),
                                0.1, 1e-4, tmp_path / "state.pt", 0, torch.device("cpu"))
    assert losses[-1] < losses[0]
    accuracy = evaluate_heads(backbone, heads, batches(images, targets)(0), torch.device("cpu"))
    assert all(acc[1] == 100.0 for acc in accuracy.values()), accuracy
    check_unchanged(backbone, snapshot)  # raises if any weight or BN buffer moved
    assert all(torch.equal(v, snapshot[k]) for k, v in backbone.state_dict().items())


def test_a_moved_backbone_is_an_error():
    backbone, _, images, _ = setup()
    snapshot = frozen_snapshot(backbone)
    backbone.train()(images)  # train-mode BN updates its running statistics
    with pytest.raises(RuntimeError, match=r"frozen backbone changed .*'bn1.running_mean'"):
        check_unchanged(backbone, snapshot)


def test_resumed_training_equals_uninterrupted(tmp_path):
    schedule = Schedule(4, (2,), 0.1, 8, 0.9, True)
    backbone, straight, images, targets = setup()
    train_linear_heads(backbone, straight, batches(images, targets), schedule, 0.1, 1e-4, tmp_path / "a.pt", 0,
                       torch.device("cpu"))
    _, resumed, _, _ = setup()
    short = Schedule(2, (2,), 0.1, 8, 0.9, True)  # the first two epochs, then a fresh process resumes
    train_linear_heads(backbone, resumed, batches(images, targets), short, 0.1, 1e-4, tmp_path / "b.pt", 0,
                       torch.device("cpu"))
    _, fresh, _, _ = setup()
    train_linear_heads(backbone, fresh, batches(images, targets), schedule, 0.1, 1e-4, tmp_path / "b.pt", 0,
                       torch.device("cpu"))
    for (name, a), b in zip(straight.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name


def test_topk_correct_counts_and_caps_k_at_the_classes():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5]])
    assert topk_correct(logits, torch.tensor([1, 2, 0])) == {1: 1, 5: 3}
    assert topk_correct(logits, torch.tensor([0, 2, 0]), ks=(1, 2)) == {1: 0, 2: 2}
