"""DenseCL: both losses against their formulas computed independently (numpy, loops), the two
queues (rings, wrap-around, saved state), the step's wiring and dense-loss warm-up, bad options,
and the queues and shuffled keys of a 2-process run."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from orl_bench import pipeline
from orl_bench.methods.base import Progress
from orl_bench.methods.densecl import DenseCL, correspondence
from tests.engine.test_gather import run_on_gloo

BATCH, QUEUE, T, VIEW = 4, 8, 0.2, 64  # 64 px: res4 is 4 x 4, res5 2 x 2


def tiny_densecl(*overrides):
    """The tiny recipe (dense loss on res4) with a queue of two batches of four; the same weights
    and queues every call."""
    torch.manual_seed(0)
    cfg = pipeline.load_pretrain_config("densecl", "tiny", [f"train.batch_size={BATCH}",
                                                             f"method.queue_size={QUEUE}", *overrides])
    return DenseCL(cfg)


def fixed(*shape, steps=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(steps)]


def view_pairs(steps=3):
    return list(zip(fixed(BATCH, 3, VIEW, VIEW, steps=steps), fixed(BATCH, 3, VIEW, VIEW, steps=steps, seed=2)))


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def nce(query, positive, negatives):
    """-log(exp(q.k+/T) / (exp(q.k+/T) + sum_m exp(q.n_m/T))) for unit vectors."""
    logits = np.concatenate([[query @ positive], negatives @ query]) / T
    return -logits[0] + np.log(np.exp(logits).sum())


def numpy_outputs(encoder, images):
    with torch.no_grad():
        return [t.double().numpy() for t in encoder(images)]


@pytest.mark.parametrize("layer", ["res4", "res5"])
def test_losses_follow_the_formulas(layer):
    method = tiny_densecl(f"method.dense_layer={layer}", "method.loss_lambda=0.3")
    view1, view2 = view_pairs(1)[0]
    queue, queue2 = method.queue.double().numpy().copy(), method.queue2.double().numpy().copy()
    q, q_grid, q_map = numpy_outputs(method.query, view1)
    k, k_grid, k_map = numpy_outputs(method.key, view2)
    losses = method.training_step((view1, view2), Progress(0, 10, 0))

    global_loss = np.mean([nce(unit(q[n]), unit(k[n]), queue) for n in range(BATCH)])
    positions = q_map.shape[2]
    assert positions == (16 if layer == "res4" else 4)
    dense_terms = []
    for n in range(BATCH):
        for i in range(positions):
            # the positive: the key position whose backbone feature is closest to query position i
            cosines = [unit(q_map[n][:, i]) @ unit(k_map[n][:, j]) for j in range(positions)]
            best = int(np.argmax(cosines))
            # the negatives: queue2, one pooled dense projection per earlier key image
            dense_terms.append(nce(unit(q_grid[n][:, i]), unit(k_grid[n][:, best]), queue2))
    dense_loss = np.mean(dense_terms)
    assert losses["loss_global"].item() == pytest.approx(global_loss, rel=1e-5)
    assert losses["loss_dense"].item() == pytest.approx(dense_loss, rel=1e-5)
    assert losses["loss"].item() == pytest.approx(0.7 * global_loss + 0.3 * dense_loss, rel=1e-5)


def test_correspondence_finds_each_query_position_in_the_key_map():
    key_map = torch.randn(2, 8, 9)
    moved = torch.stack([torch.randperm(9) for _ in range(2)])  # query position i shows key position moved[i]
    query_map = 3 * key_map.gather(2, moved[:, None, :].expand(-1, 8, -1)) + 0.01 * torch.randn(2, 8, 9)
    assert torch.equal(correspondence(query_map, key_map), moved)


def test_both_queues_are_rings_of_the_keys_and_their_pooled_dense_projections():
    method = tiny_densecl()
    method.queue2_ptr.fill_(2)  # each queue follows its own pointer
    pairs = view_pairs()
    for step, pair in enumerate(pairs):  # three batches of four into queues of eight: the third wraps
        method.training_step(pair, Progress(step, 10, 0))
    keys, pooled = [], []
    for _, view2 in pairs:  # no optimizer step: the key encoder is still the one the steps used
        with torch.no_grad():
            k, k_grid, _ = method.key(view2)
        keys.append(F.normalize(k, dim=1))
        pooled.append(F.normalize(k_grid.mean(dim=2), dim=1))  # k2: the image's dense projections, averaged
    assert torch.allclose(method.queue, torch.cat([keys[2], keys[1]]), atol=1e-6)
    assert int(method.queue_ptr) == 4
    # queue2 from slot 2: step 0 in 2-5, step 1 in 6, 7, 0, 1, step 2 in 2-5
    expected2 = torch.cat([pooled[1][2:], pooled[2], pooled[1][:2]])
    assert torch.allclose(method.queue2, expected2, atol=1e-6) and int(method.queue2_ptr) == 6
    assert {"queue", "queue_ptr", "queue2", "queue2_ptr"} <= set(method.state_dict())
    restored = tiny_densecl()
    restored.load_state_dict(method.state_dict())
    assert torch.equal(restored.queue2, method.queue2) and int(restored.queue2_ptr) == 6
    assert torch.equal(restored.queue, method.queue) and int(restored.queue_ptr) == 4


def test_step_trains_the_query_encoder_and_both_heads_only():
    method = tiny_densecl()
    # the key encoder starts as a copy of all of it (its momentum update is MoCo v2's, tested there)
    for query, key in zip(method.query.state_dict().values(), method.key.state_dict().values()):
        assert torch.equal(query, key)
    loss = method.training_step(view_pairs(1)[0], Progress(0, 10, 0))["loss"]
    loss.backward()
    assert all(p.grad is None for p in method.key.parameters())
    for part in (method.query.backbone, method.query.head, method.query.dense_head):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert method.backbone is method.query.backbone  # the exported backbone is the query's


def test_dense_loss_joins_after_the_warm_up_steps():
    method = tiny_densecl("method.dense_warmup_steps=2")
    for step, pair in enumerate(view_pairs()):
        losses = method.training_step(pair, Progress(step, 10, 0))
        weight = 0.0 if step < 2 else 0.5
        expected = (1 - weight) * losses["loss_global"] + weight * losses["loss_dense"]
        assert losses["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
        assert losses["loss_dense"].item() > 0  # computed (and logged) during the warm-up too


@pytest.mark.parametrize("override, message", [
    ("method.loss_lambda=1.5", r"method.loss_lambda must be in \[0, 1\], got 1.5"),
    ("method.dense_layer=res3", "method.dense_layer must be one of res5, res4, got 'res3'"),
    ("method.dense_warmup_steps=-1", "method.dense_warmup_steps must be >= 0, got -1"),
    ("method.key_bn=syncbn", "method.key_bn must be one of shuffle, sync, local, got 'syncbn'"),
])
def test_bad_options_are_one_line_errors(override, message):
    with pytest.raises(ValueError, match=message) as error:
        tiny_densecl(override)
    assert "\n" not in str(error.value)


def _two_rank_worker(rank, world_size, out):
    method = tiny_densecl()
    mine = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
    # eval-mode BN in the key encoder makes keys per-sample, so they do not depend on the shuffle
    method.key.eval()
    seen = []  # per step: the training step's key batch, then the one of the encode_keys call below
    method.key.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    outputs = []
    for step, (view1, view2) in enumerate(view_pairs()):
        method.training_step((view1[mine], view2[mine]), Progress(step, 10, 0))
        with torch.no_grad():
            outputs.append(method.encode_keys(method.key, view2[mine], step))
    torch.save({"queues": [method.queue, method.queue_ptr, method.queue2, method.queue2_ptr],
                "outputs": outputs, "seen": seen[::2]}, out / f"{rank}.pt")


@pytest.mark.slow  # each spawned process imports the methods package: 10-40 s on 2 busy cores
def test_two_ranks_hold_the_queues_of_one_process_and_restore_shuffled_keys(tmp_path):
    run_on_gloo(_two_rank_worker, tmp_path, tmp_path)
    single = tiny_densecl()
    single.key.eval()
    pairs = view_pairs()
    for step, pair in enumerate(pairs):
        single.training_step(pair, Progress(step, 10, 0))
    ranks = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]
    shuffled_any = False
    for rank, r in enumerate(ranks):
        queue, queue_ptr, queue2, queue2_ptr = r["queues"]
        assert torch.allclose(queue, single.queue, atol=1e-5) and int(queue_ptr) == int(single.queue_ptr)
        assert torch.allclose(queue2, single.queue2, atol=1e-5) and int(queue2_ptr) == int(single.queue2_ptr)
        mine = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
        for step, (_, view2) in enumerate(pairs):
            with torch.no_grad():
                expected = single.key(view2)
            # global key, dense projections and backbone map each back with their query's rank
            for got, want in zip(r["outputs"][step], expected):
                assert torch.allclose(got, want[mine], atol=1e-5)
            shuffled_any |= not torch.equal(r["seen"][step], view2[mine])
    assert shuffled_any, "no rank's key encoder ever saw another rank's images"
