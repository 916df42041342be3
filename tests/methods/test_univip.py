"""UniVIP: the Sinkhorn plan has the requested marginals, the instance-instance loss is the OT
loss of its formula, instances lie in both views, and the proposals are ORL's shared artifact."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from orl_bench import pipeline
from orl_bench.data.box_views import BoxView, BoxViewParams, inside, overlap
from orl_bench.data.sources import pretrain_images
from orl_bench.engine.distributed import DistInfo
from orl_bench.methods.base import StageContext
from orl_bench.methods.orl.boxes import scaled
from orl_bench.methods.orl.boxes import load_boxes
from orl_bench.methods.sinkhorn import sinkhorn
from orl_bench.methods.univip import (UniVIP, UniVIPDataset, UniVIPParams, draw_scene_pair, instance_ot_loss,
                                      scene_marginal)

CPU = DistInfo(0, 1, 0, torch.device("cpu"))
EPS, ITERS = 0.1, 50  # the recipes' values


def random_marginal(g: torch.Generator, *shape: int) -> torch.Tensor:
    m = torch.rand(*shape, generator=g, dtype=torch.float64)
    return m / m.sum(dim=-1, keepdim=True)


def test_sinkhorn_plan_has_the_requested_marginals():
    g = torch.Generator().manual_seed(0)
    cost = 2 * torch.rand(3, 4, 5, generator=g, dtype=torch.float64)  # 1 - cos lies in [0, 2]
    a, b = random_marginal(g, 3, 4), random_marginal(g, 3, 5)
    a[0, 1], b[2, 3] = 0.0, 0.0  # an instance without mass gets no transport
    a, b = a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)
    for dtype in (torch.float64, torch.float32):
        plan = sinkhorn(cost.to(dtype), a.to(dtype), b.to(dtype), EPS, ITERS)
        assert (plan >= 0).all()
        assert torch.allclose(plan.sum(-1).double(), a, atol=1e-4)
        assert torch.allclose(plan.sum(-2).double(), b, atol=1e-4)
    assert plan[0, 1].abs().max() == 0 and plan[2, :, 3].abs().max() == 0


def test_sinkhorn_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"cost \(\.\.\., n, m\), a \(\.\.\., n\), b \(\.\.\., m\)"):
        sinkhorn(torch.zeros(2, 3, 4), torch.ones(2, 4) / 4, torch.ones(2, 4) / 4, EPS, ITERS)


def plain_sinkhorn(cost: np.ndarray, a: np.ndarray, b: np.ndarray, eps: float, iters: int) -> np.ndarray:
    """The textbook (non-log) iterations in float64, rows then columns, from v = 1."""
    kernel = np.exp(-cost / eps)
    v = np.ones_like(b)
    for _ in range(iters):
        u = a / (kernel @ v)
        v = b / (kernel.T @ u)
    return u[:, None] * kernel * v[None, :]


def test_instance_loss_is_minus_the_plan_weighted_cosine():
    g = torch.Generator().manual_seed(2)
    online, target = torch.randn(3, 4, 8, generator=g), torch.randn(3, 4, 8, generator=g)
    online_scene, target_scene = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    loss = instance_ot_loss(online, target, online_scene, target_scene, EPS, ITERS)

    expected = 0.0
    for i in range(3):
        o, t = online[i].double().numpy(), target[i].double().numpy()
        cos = np.array([[x @ y / np.linalg.norm(x) / np.linalg.norm(y) for y in t] for x in o])

        def mass(instances, scene):
            sim = np.array([max(x @ scene / np.linalg.norm(x) / np.linalg.norm(scene), 0.0) for x in instances])
            return sim / sim.sum() if sim.sum() > 0 else np.full(len(sim), 1 / len(sim))

        plan = plain_sinkhorn(1 - cos, mass(o, online_scene[i].double().numpy()),
                              mass(t, target_scene[i].double().numpy()), EPS, ITERS)
        expected += -(plan * cos).sum() / 3
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_the_plan_carries_no_gradient():
    online = torch.randn(2, 4, 8, requires_grad=True)
    target, scenes = torch.randn(2, 4, 8), torch.randn(2, 8)
    instance_ot_loss(online, target, scenes, scenes, EPS, ITERS).backward()
    cos = F.normalize(online, dim=-1) @ F.normalize(target, dim=-1).transpose(1, 2)
    with torch.no_grad():
        plan = sinkhorn(1 - cos, scene_marginal(online, scenes), scene_marginal(target, scenes), EPS, ITERS)
    # the gradient of -sum(plan * cos) with the plan held constant
    expected = torch.autograd.grad(-(plan * cos).sum(dim=(1, 2)).mean(), online)[0]
    assert torch.allclose(online.grad, expected, atol=1e-6)


def test_scene_marginal_relu_normalises_and_falls_back_to_uniform():
    scene = torch.tensor([[1.0, 0.0]])
    instances = torch.tensor([[[2.0, 0.0], [1.0, 1.0], [-1.0, 0.0], [0.0, 3.0]]])
    w = 1 / 2 ** 0.5
    assert torch.allclose(scene_marginal(instances, scene), torch.tensor([[1 / (1 + w), w / (1 + w), 0.0, 0.0]]))
    assert torch.allclose(scene_marginal(-instances.abs(), scene), torch.full((1, 4), 0.25))


def image(side: int = 100) -> torch.Tensor:
    return torch.zeros(3, side, side, dtype=torch.uint8)


def test_the_views_overlap_holds_the_instances():
    views = (BoxView(BoxViewParams(size=32), 1), BoxView(BoxViewParams(size=32), 2))
    g = torch.Generator().manual_seed(0)
    corners = torch.rand(40, 2, generator=g, dtype=torch.float64) * 80
    boxes = torch.cat([corners, corners + 5 + 10 * torch.rand(40, 2, generator=g, dtype=torch.float64)], dim=1)
    torch.manual_seed(0)
    for _ in range(10):
        g1, g2, instances, missing = draw_scene_pair(image(), boxes, views, 4, 50)
        assert missing == 0 and len(instances) == 4 and len(set(map(tuple, instances.tolist()))) == 4
        assert inside(instances, overlap(g1, g2)).all()


def test_missing_instances_are_the_overlap_itself():
    whole = BoxViewParams(size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0))  # both views show the whole image
    views = (BoxView(whole, 1), BoxView(whole, 2))
    two = torch.tensor([[10.0, 10.0, 30.0, 40.0], [50.0, 50.0, 90.0, 70.0]], dtype=torch.float64)
    _, _, instances, missing = draw_scene_pair(image(), two, views, 4, 5)
    assert missing == 2
    assert {tuple(b) for b in instances[:2].tolist()} == {tuple(b) for b in two.tolist()}
    assert instances[2:].tolist() == [[0.0, 0.0, 100.0, 100.0]] * 2
    # no proposal in any overlap: every instance is the first pair's overlap (none holds more)
    small = BoxView(BoxViewParams(size=32, scale=(0.1, 0.1)), 1)
    g1, g2, instances, missing = draw_scene_pair(image(), two[:0], (small, small), 4, 3)
    assert missing == 4 and (instances == instances[0]).all()


def test_boxes_input_filters_the_proposals_shared_with_orl(workdir):
    cfg = pipeline.load_pretrain_config("univip", "tiny", [])
    images = pretrain_images(cfg.data, workdir)
    ctx = StageContext(workdir, images, CPU, config=None, pretrained=None)
    inputs, timings = UniVIP.build_inputs(cfg, ctx)
    assert timings["boxes_reused"] is False
    assert (workdir / "artifacts" / f"proposals-{images.key}").is_dir()  # ORL stage 2's folder
    boxes = load_boxes(inputs["boxes"])
    assert len(boxes) == len(images.paths) and sum(map(len, boxes)) > 4 * len(boxes)
    p: UniVIPParams = UniVIP.params_of(cfg)
    for b, path in zip(boxes, images.paths):
        short = min(Image.open(path).size)
        min_side = scaled(p.boxes, short, p.reference_short_side).min_size
        assert len(b) == 1 or ((b[:, 2:] >= min_side).all() and (b[:, 2:].max(1) / b[:, 2:].min(1) <= 3).all())
    again, timings = UniVIP.build_inputs(cfg, ctx)
    assert again == inputs and timings["boxes_reused"] is True


def test_a_sample_is_a_function_of_seed_and_key(tmp_path):
    """What exact resume relies on: a fresh dataset (a resumed run, another loader worker) draws
    the same views, instances and fill for the same sampler key."""
    path = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(path)
    boxes = [np.array([[5, 5, 20, 20], [30, 10, 25, 30], [10, 35, 40, 20], [50, 40, 20, 15], [0, 0, 80, 60]],
                      np.float32)]
    p = UniVIPParams(views=BoxViewParams(size=32), instance_size=16)
    first, again = UniVIPDataset([path], boxes, p, seed=3)[7][1], UniVIPDataset([path], boxes, p, seed=3)[7][1]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    other = UniVIPDataset([path], boxes, p, seed=3)[8][1]
    assert not torch.equal(first[0], other[0])
    assert [x.shape for x in first] == [(3, 32, 32), (3, 32, 32), (4, 3, 16, 16), (4, 3, 16, 16), ()]


def test_transport_runs_in_float32_under_autocast():
    """bf16 would round each cosine by up to ~0.004, which eps magnifies in the plan's exponent."""
    from orl_bench.methods.sinkhorn import similarity_masses, transported_cosine
    g = torch.Generator().manual_seed(0)
    online, target, scene = torch.randn(2, 5, 16, generator=g), torch.randn(2, 4, 16, generator=g), torch.randn(2, 16)

    def both():
        masses = similarity_masses(online, scene), similarity_masses(target, scene)
        return masses[0], transported_cosine(online, target, *masses, 0.05, 50)

    plain = both()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = both()
    assert all(m.dtype == torch.float32 and torch.equal(m, p) for m, p in zip(mixed, plain))
