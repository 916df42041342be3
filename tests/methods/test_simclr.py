"""SimCLR: NT-Xent against lightly's implementation, the step's wiring, and the loss and gradient
of a 2-process run against one process holding the whole batch."""
import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from orl_bench import pipeline
from orl_bench.methods.base import Progress
from orl_bench.methods.contrastive import nt_xent
from orl_bench.methods.simclr import SimCLR
from tests.engine.test_gather import run_on_gloo

N, DIM, T = 8, 5, 0.1


def fixed_batch():
    """Two views' embeddings of N images, and the inputs and weights of a linear projector."""
    g = torch.Generator().manual_seed(0)
    z1, z2, x1, x2 = (torch.randn(N, DIM, generator=g) for _ in range(4))
    return z1, z2, x1, x2, torch.randn(4, DIM, generator=g)


def loss_and_grads(z1, z2, temperature=T):
    z1, z2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    loss = nt_xent(z1, z2, temperature)
    loss.backward()
    return loss.detach(), z1.grad, z2.grad


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_equals_lightlys_loss_and_gradient(temperature):
    from lightly.loss import NTXentLoss  # only where needed: spawned test workers skip its import
    z1, z2, *_ = fixed_batch()
    loss, g1, g2 = loss_and_grads(z1, z2, temperature)
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    # memory_bank_size=0: negatives are the batch's other 2N - 2 embeddings, both views
    reference = NTXentLoss(temperature=temperature, memory_bank_size=0)(a, b)
    reference.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    assert torch.allclose(g1, a.grad, atol=1e-7) and torch.allclose(g2, b.grad, atol=1e-7)


def test_nt_xent_is_low_when_views_agree_and_negatives_differ():
    views = torch.eye(4)
    assert nt_xent(views, views, T).item() < 1e-3
    assert nt_xent(views, views.roll(1, dims=0), T).item() > 9  # the positive is orthogonal, a negative equal


def test_step_scores_both_views_of_one_forward_pass():
    method = SimCLR(pipeline.load_pretrain_config("simclr", "tiny", []))
    g = torch.Generator().manual_seed(1)
    view1, view2 = torch.randn(4, 3, 32, 32, generator=g), torch.randn(4, 3, 32, 32, generator=g)
    loss = method.training_step((view1, view2), Progress(0, 1, 0))["loss"]
    # BN statistics over all 2N crops, as the official code: one pass, then split by view
    z1, z2 = method.projector(method.backbone(torch.cat((view1, view2)))).chunk(2)
    assert loss.item() == pytest.approx(nt_xent(z1, z2, T).item(), rel=1e-6)


def test_temperature_must_be_positive():
    with pytest.raises(ValueError, match="method.temperature must be > 0, got 0.0"):
        pipeline.load_pretrain_config("simclr", "tiny", ["method.temperature=0"])


def _two_rank_worker(rank, world_size, out):
    z1, z2, x1, x2, weight = fixed_batch()
    mine = slice(rank * N // world_size, (rank + 1) * N // world_size)
    loss, g1, g2 = loss_and_grads(z1[mine], z2[mine])
    projector = torch.nn.Linear(DIM, 4, bias=False)
    with torch.no_grad():
        projector.weight.copy_(weight)
    ddp = DistributedDataParallel(projector)
    nt_xent(ddp(x1[mine]), ddp(x2[mine]), T).backward()  # DDP averages the ranks' gradients
    torch.save({"loss": loss, "grads": (g1, g2), "weight_grad": projector.weight.grad}, out / f"{rank}.pt")


@pytest.mark.slow  # each spawned process imports the methods package: 10-40 s on 2 busy cores
def test_two_ranks_give_the_loss_and_gradients_of_one_process_on_the_whole_batch(tmp_path):
    run_on_gloo(_two_rank_worker, tmp_path, tmp_path)
    z1, z2, x1, x2, weight = fixed_batch()
    loss, g1, g2 = loss_and_grads(z1, z2)
    projector = torch.nn.Linear(DIM, 4, bias=False)
    with torch.no_grad():
        projector.weight.copy_(weight)
    nt_xent(projector(x1), projector(x2), T).backward()

    ranks = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]
    # each rank's loss is over its own anchors; their mean (what DDP optimises) is the whole loss
    assert torch.stack([r["loss"] for r in ranks]).mean().item() == pytest.approx(loss.item(), rel=1e-6)
    # each rank's rows get the gradient of every rank's loss: the sum over ranks, i.e. world size x
    # the gradient of the mean, which DDP's averaging over ranks brings back to the whole batch's
    for rank, r in enumerate(ranks):
        mine = slice(rank * N // 2, (rank + 1) * N // 2)
        assert torch.allclose(r["grads"][0] / 2, g1[mine], atol=1e-7)
        assert torch.allclose(r["grads"][1] / 2, g2[mine], atol=1e-7)
        assert torch.allclose(r["weight_grad"], projector.weight.grad, atol=1e-6)
