"""Self-EMD: the loss against an independent computation (plain Sinkhorn, DeepEMD's cross-reference
weights, BYOL's formula), the detached plan, the node masses, the step's wiring and its EMA, the
paper recipe, bad options, and a 2-process run against one process holding the whole batch."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from orl_bench import pipeline
from orl_bench.config import to_dict
from orl_bench.methods.base import Progress, byol_loss, momentum_at
from orl_bench.methods.selfemd import SelfEMD, SelfEMDParams, emd_loss, node_masses, self_emd_losses
from orl_bench.methods.sinkhorn import sinkhorn
from tests.engine.test_gather import run_on_gloo
from tests.methods.test_univip import plain_sinkhorn

BATCH = 4


def tiny_selfemd(*overrides: str) -> SelfEMD:
    """The tiny recipe (res4 of 32 px views: 2 x 2 nodes); the same weights every call."""
    torch.manual_seed(0)
    return SelfEMD(pipeline.load_pretrain_config("selfemd", "tiny", list(overrides)))


def fixed_views(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 3, size, size, generator=g), torch.randn(BATCH, 3, size, size, generator=g)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def reference_terms(global_preds, global_targets, dense_preds, dense_targets, p: SelfEMDParams):
    """(global, EMD) terms in float64 numpy from their formulas, one image at a time."""
    def masses(nodes, others):
        if p.node_weights == "uniform":
            return np.full(len(nodes), 1 / len(nodes))
        sim = np.maximum(unit(nodes) @ unit(others).mean(axis=0), 0.0)
        return sim / sim.sum() if sim.sum() > 0 else np.full(len(sim), 1 / len(sim))

    def emd(online, target):
        total = 0.0
        for u, v in zip(online, target):
            cos = unit(u) @ unit(v).T
            plan = plain_sinkhorn(1 - cos, masses(u, v), masses(v, u), p.sinkhorn_eps, p.sinkhorn_iters)
            total += 2 - 2 * (plan * cos).sum()
        return total / len(online)

    def byol(prediction, target):
        return np.mean(2 - 2 * (unit(prediction) * unit(target)).sum(axis=1))

    gp, gt, dp, dt = ([x.double().numpy() for x in pair] for pair in
                      (global_preds, global_targets, dense_preds, dense_targets))
    return byol(gp[0], gt[1]) + byol(gp[1], gt[0]), emd(dp[0], dt[1]) + emd(dp[1], dt[0])


@pytest.mark.parametrize("weights", ["cross_reference", "uniform"])
def test_loss_is_byol_on_pooled_embeddings_plus_the_weighted_symmetric_emd(weights):
    g = torch.Generator().manual_seed(2)
    # view 1 with 4 nodes, view 2 with 6: either view's online nodes face the other's target nodes
    global_preds, global_targets = ([torch.randn(3, 8, generator=g) for _ in range(2)] for _ in range(2))
    dense_preds = [torch.randn(3, n, 8, generator=g) for n in (4, 6)]
    dense_targets = [torch.randn(3, n, 8, generator=g) for n in (4, 6)]
    p = SelfEMDParams(node_weights=weights, emd_weight=0.5)
    losses = self_emd_losses(global_preds, global_targets, dense_preds, dense_targets, p)
    global_term, emd_term = reference_terms(global_preds, global_targets, dense_preds, dense_targets, p)
    assert losses["loss_global"].item() == pytest.approx(global_term, abs=1e-5)
    assert losses["loss_emd"].item() == pytest.approx(emd_term, abs=1e-5)
    assert losses["loss"].item() == pytest.approx(global_term + 0.5 * emd_term, abs=1e-5)


def test_identical_node_sets_have_a_near_zero_emd():
    nodes = torch.randn(2, 9, 8, generator=torch.Generator().manual_seed(3))
    # the plan keeps each node on itself but for the entropy term's spread
    assert emd_loss(nodes, nodes, SelfEMDParams()).item() < 0.05


def test_the_plan_carries_no_gradient():
    p = SelfEMDParams()
    g = torch.Generator().manual_seed(4)
    online, target = torch.randn(2, 4, 8, generator=g, requires_grad=True), torch.randn(2, 6, 8, generator=g)
    emd_loss(online, target, p).backward()
    cos = F.normalize(online, dim=-1) @ F.normalize(target, dim=-1).transpose(1, 2)
    plan = sinkhorn(1 - cos, node_masses(online, target, p.node_weights), node_masses(target, online, p.node_weights),
                    p.sinkhorn_eps, p.sinkhorn_iters)
    held, through_plan = (torch.autograd.grad((2 - 2 * (x * cos).sum(dim=(1, 2))).mean(), online, retain_graph=True)[0]
                          for x in (plan.detach(), plan))
    # the gradient of 2 - 2 sum(plan * cos) with the plan held constant, not through the solver
    assert torch.allclose(online.grad, held, atol=1e-6)
    assert not torch.allclose(online.grad, through_plan, atol=1e-4)


def test_cross_reference_masses_relu_normalise_and_fall_back_to_uniform():
    others = torch.tensor([[[5.0, 0.0], [0.0, 1.0]]])  # their unit vectors' mean points at (1, 1)
    nodes = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [-1.0, 0.2]]])
    # the mean of the raw vectors, (2.5, 0.5), would weigh the first node 5x the second
    assert torch.allclose(node_masses(nodes, others, "cross_reference"), torch.tensor([[0.5, 0.5, 0.0]]))
    skewed = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, -1.0]]])
    w = 2 ** 0.5
    assert torch.allclose(node_masses(skewed, torch.tensor([[[1.0, 0.0]]]), "cross_reference"),
                          torch.tensor([[w / (1 + w), 1 / (1 + w), 0.0]]))
    assert torch.allclose(node_masses(-nodes.abs(), others, "cross_reference"), torch.full((1, 3), 1 / 3))
    assert torch.allclose(node_masses(nodes, others, "uniform"), torch.full((1, 3), 1 / 3))


@pytest.mark.parametrize("layer, size", [("res4", 32), ("res5", 64)])  # 2 x 2 nodes either way
def test_step_wires_pooled_res5_to_byol_and_the_dense_layers_positions_to_emd(layer, size):
    method = tiny_selfemd(f"method.dense_layer={layer}", f"method.views.size={size}", "method.emd_weight=0.5")
    views = fixed_views(size)
    losses = method.training_step(views, Progress(0, 10, 0))
    losses["loss"].backward()

    def positions(backbone, head, v):  # (B, C, h, w) -> (B, h * w, d), rows in raster order
        nodes = backbone.taps(v, {layer})[layer].flatten(2).transpose(1, 2)
        return head(nodes.reshape(-1, nodes.shape[-1])).view(BATCH, -1, head[-1].out_features)

    with torch.no_grad():
        global_preds = [method.predictor(method.online(v)) for v in views]
        global_targets = [method.target(v) for v in views]  # BYOL's target network, unchanged
        dense_preds = [method.dense_predictor(positions(method.backbone, method.dense_projector, v).flatten(0, 1))
                       .view(BATCH, 4, -1) for v in views]
        dense_targets = [positions(method.target[0], method.dense_target, v) for v in views]
    assert dense_targets[0].shape == (BATCH, 4, method.params.proj_dim)
    p = method.params
    global_term = byol_loss(global_preds[0], global_targets[1]) + byol_loss(global_preds[1], global_targets[0])
    emd_term = emd_loss(dense_preds[0], dense_targets[1], p) + emd_loss(dense_preds[1], dense_targets[0], p)
    assert losses["loss_global"].item() == pytest.approx(global_term.item(), rel=1e-5)
    assert losses["loss_emd"].item() == pytest.approx(emd_term.item(), rel=1e-5)
    assert losses["loss"].item() == pytest.approx((global_term + 0.5 * emd_term).item(), rel=1e-5)
    channels = method.backbone.num_features // (2 if layer == "res4" else 1)
    assert method.dense_projector[0].in_features == channels
    assert all(p.grad is not None for m in (method.online, method.predictor, method.dense_projector,
                                            method.dense_predictor) for p in m.parameters())
    assert all(not p.requires_grad for m in (method.target, method.dense_target) for p in m.parameters())


def test_both_targets_follow_their_online_networks_on_byols_schedule():
    method = tiny_selfemd()
    assert all(torch.equal(o, t) for o, t in zip(method.dense_projector.parameters(), method.dense_target.parameters()))
    with torch.no_grad():
        for p in [*method.online.parameters(), *method.dense_projector.parameters()]:
            p.add_(1.0)
    pairs = [(method.target, method.online), (method.dense_target, method.dense_projector)]
    before = [[p.clone() for p in target.parameters()] for target, _ in pairs]
    progress = Progress(3, 10, 0)
    tau = momentum_at(method.params.base_momentum, progress)
    method.after_step(progress)
    for old, (target, online) in zip(before, pairs):
        for o, new, src in zip(old, target.parameters(), online.parameters()):
            assert torch.allclose(new, tau * o + (1 - tau) * src, atol=1e-6)


def test_paper_recipe_records_every_default_and_reuses_byols_coco_schedule():
    cfg = pipeline.load_pretrain_config("selfemd", "paper", [])
    byol = pipeline.load_pretrain_config("byol", "paper", [])
    assert (cfg.model, cfg.optim, cfg.train, cfg.data) == (byol.model, byol.optim, byol.train, byol.data)
    assert cfg.train.epochs == 800 and cfg.train.batch_size == 512 and cfg.optim.lr == 0.2
    expected = to_dict(SelfEMDParams())  # ViewParams' defaults are BYOL's 224 px views
    assert {k: v for k, v in cfg.method.items() if k != "name"} == expected
    assert {k: cfg.method[k] for k in ("dense_layer", "node_weights", "sinkhorn_eps", "sinkhorn_iters",
                                       "emd_weight")} == {"dense_layer": "res5", "node_weights": "cross_reference",
                                                          "sinkhorn_eps": 0.05, "sinkhorn_iters": 100,
                                                          "emd_weight": 1.0}


@pytest.mark.parametrize("override, message", [
    ("method.dense_layer=res3", "method.dense_layer must be one of res5, res4, got 'res3'"),
    ("method.node_weights=relu", "method.node_weights must be one of cross_reference, uniform, got 'relu'"),
    ("method.sinkhorn_eps=0", "need method.sinkhorn_eps > 0, sinkhorn_iters >= 1 and emd_weight >= 0, got 0.0, 100, 1.0"),
    ("method.sinkhorn_iters=0", "need method.sinkhorn_eps > 0, .* got 0.05, 0, 1.0"),
    ("method.emd_weight=-1", "need method.sinkhorn_eps > 0, .* got 0.05, 100, -1.0"),
])
def test_bad_options_are_one_line_errors(override, message):
    with pytest.raises(ValueError, match=message) as error:
        pipeline.load_pretrain_config("selfemd", "tiny", [override])
    assert "\n" not in str(error.value)


def step_and_gradients(method: SelfEMD, views) -> tuple[dict, dict]:
    losses = method(views, Progress(0, 10, 0))
    losses["loss"].backward()
    module = method.module if isinstance(method, DistributedDataParallel) else method
    return ({k: v.detach() for k, v in losses.items()},
            {n: p.grad for n, p in module.named_parameters() if p.requires_grad})


def _two_rank_worker(rank, world_size, out):
    method = tiny_selfemd()
    method.eval()  # BN on running statistics: see the test
    mine = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
    losses, grads = step_and_gradients(DistributedDataParallel(method), tuple(v[mine] for v in fixed_views()))
    torch.save({"losses": losses, "grads": grads}, out / f"{rank}.pt")


@pytest.mark.slow  # each spawned process imports the methods package: 10-40 s on 2 busy cores
def test_two_ranks_give_the_loss_and_gradients_of_one_process_on_the_whole_batch(tmp_path):
    """The invariant: nothing but batch norm couples the images of a batch (each image's plan
    and masses come from its own two maps), so the mean of the ranks' losses is the whole batch's
    loss and DDP's averaged gradients are its gradients. In train mode per-rank BN statistics
    differ from the whole batch's, as in every BYOL-family method here, and torch's SyncBatchNorm
    (train.sync_bn) is CUDA-only, so the check runs with BN on its running statistics."""
    run_on_gloo(_two_rank_worker, tmp_path, tmp_path)
    single = tiny_selfemd()
    single.eval()
    losses, grads = step_and_gradients(single, fixed_views())
    ranks = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]
    for name, whole in losses.items():
        assert torch.stack([r["losses"][name] for r in ranks]).mean().item() == pytest.approx(whole.item(), rel=1e-5)
    for r in ranks:
        assert r["grads"].keys() == grads.keys()
        for name, grad in grads.items():
            assert torch.allclose(r["grads"][name], grad, rtol=1e-4, atol=1e-6), name
