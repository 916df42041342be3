"""MoCo v2: InfoNCE and the queue against lightly's memory bank, the step's wiring, the constant key
momentum, the config's conditions, and the queue and shuffled BN of a 2-process run."""
import pytest
import torch
import torch.nn.functional as F

from orl_bench import pipeline
from orl_bench.config import ConfigError
from orl_bench.methods.base import Progress
from orl_bench.methods.contrastive import info_nce
from orl_bench.methods.mocov2 import MoCoV2
from tests.engine.test_gather import run_on_gloo

BATCH, QUEUE, T = 4, 8, 0.2


def tiny_moco(*overrides):
    """The tiny recipe with a queue of two batches of four; the same weights and queue every call."""
    torch.manual_seed(0)
    cfg = pipeline.load_pretrain_config("mocov2", "tiny", [f"train.batch_size={BATCH}",
                                                            f"method.queue_size={QUEUE}", *overrides])
    return MoCoV2(cfg)


def fixed(*shape, steps=3):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(*shape, generator=g) for _ in range(steps)]


def test_loss_and_queue_follow_lightlys_memory_bank():
    from lightly.loss import NTXentLoss  # only where needed: spawned test workers skip its import
    method = tiny_moco()
    dim = method.queue.shape[1]
    # lightly's NT-Xent with a memory bank is MoCo's loss: each query against its key and the bank
    # (as it was before this batch), then the batch's normalised keys replace the oldest entries
    reference = NTXentLoss(temperature=T, memory_bank_size=(QUEUE, dim))
    reference.memory_bank.bank.copy_(method.queue)
    for q, k in zip(fixed(BATCH, dim), fixed(BATCH, dim)):  # three batches: the third wraps around
        ours, theirs = q.clone().requires_grad_(), q.clone().requires_grad_()
        loss = info_nce(ours, k, method.queue.clone(), T)
        method.enqueue(F.normalize(k, dim=1))
        expected = reference(theirs, k)
        loss.backward()
        expected.backward()
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
        assert torch.allclose(ours.grad, theirs.grad, atol=1e-7)
        assert torch.allclose(method.queue, reference.memory_bank.bank, atol=1e-7)
        assert int(method.queue_ptr) == int(reference.memory_bank.bank_ptr)


def test_step_scores_queries_against_their_keys_and_enqueues_the_keys():
    method = tiny_moco()
    view1, view2 = fixed(BATCH, 3, 32, 32, steps=2)
    queue_before = method.queue.clone()
    loss = method.training_step((view1, view2), Progress(0, 10, 0))["loss"]
    with torch.no_grad():
        keys = F.normalize(method.key(view2), dim=1)
    assert loss.item() == pytest.approx(info_nce(method.query(view1), keys, queue_before, T).item(), rel=1e-5)
    assert torch.allclose(method.queue[:BATCH], keys, atol=1e-6)
    assert torch.equal(method.queue[BATCH:], queue_before[BATCH:]) and int(method.queue_ptr) == BATCH
    loss.backward()
    assert all(p.grad is None for p in method.key.parameters())
    assert all(p.grad is not None for p in method.query.parameters())


def test_key_encoder_follows_the_query_at_a_constant_momentum():
    method = tiny_moco("method.momentum=0.9")
    with torch.no_grad():
        for p in method.query.parameters():
            p.add_(1.0)
    before = [p.clone() for p in method.key.parameters()]
    method.after_step(Progress(9, 10, 0))  # BYOL's cosine schedule would be ~1 here
    for old, new, query in zip(before, method.key.parameters(), method.query.parameters()):
        assert torch.allclose(new, 0.9 * old + 0.1 * query, atol=1e-6)


def test_queue_and_pointer_are_part_of_the_saved_state():
    method = tiny_moco()
    method.enqueue(F.normalize(fixed(BATCH, method.queue.shape[1])[0], dim=1))
    restored = tiny_moco()
    assert not torch.equal(restored.queue, method.queue)
    restored.load_state_dict(method.state_dict())
    assert torch.equal(restored.queue, method.queue) and int(restored.queue_ptr) == BATCH


@pytest.mark.parametrize("overrides, message", [
    (["method.queue_size=6"], "method.queue_size 6 must be a multiple of train.batch_size 4"),
    (["train.sync_bn=true"], "method.key_bn=shuffle needs train.sync_bn=false"),
    (["method.key_bn=sync"], "method.key_bn=sync needs train.sync_bn=true"),
])
def test_config_conditions_are_errors_naming_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_moco(*overrides)


def test_bad_options_are_errors():
    with pytest.raises(ValueError, match="method.key_bn must be one of shuffle, sync, local, got 'syncbn'"):
        tiny_moco("method.key_bn=syncbn")
    with pytest.raises(ValueError, match=r"method.momentum must be in \[0, 1\), got 1.0"):
        tiny_moco("method.momentum=1.0")


def _two_rank_worker(rank, world_size, out):
    method = tiny_moco()
    dim = method.queue.shape[1]
    mine = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
    for keys in fixed(BATCH, dim):
        method.enqueue(F.normalize(keys, dim=1)[mine])
    # shuffled key BN: record what this rank's key encoder sees; eval-mode BN makes keys per-sample
    method.key.eval()
    seen = []
    method.key.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        keys = [method.keys(images[mine], step) for step, images in enumerate(fixed(BATCH, 3, 32, 32))]
    torch.save({"queue": method.queue, "ptr": method.queue_ptr, "keys": keys, "seen": seen}, out / f"{rank}.pt")


@pytest.mark.slow  # each spawned process imports the methods package: 10-40 s on 2 busy cores
def test_two_ranks_hold_the_queue_of_one_process_and_shuffle_keys_across_ranks(tmp_path):
    run_on_gloo(_two_rank_worker, tmp_path, tmp_path)
    single = tiny_moco()
    for keys in fixed(BATCH, single.queue.shape[1]):
        single.enqueue(F.normalize(keys, dim=1))
    single.key.eval()
    images = fixed(BATCH, 3, 32, 32)
    ranks = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]
    shuffled_any = False
    for rank, r in enumerate(ranks):
        assert torch.equal(r["queue"], single.queue) and int(r["ptr"]) == int(single.queue_ptr)
        mine = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
        for step, step_images in enumerate(images):
            with torch.no_grad():
                expected = F.normalize(single.key(step_images), dim=1)[mine]
            assert torch.allclose(r["keys"][step], expected, atol=1e-5)  # each key back with its query
            shuffled_any |= not torch.equal(r["seen"][step], step_images[mine])
    for step, step_images in enumerate(images):  # between them, the ranks encoded the whole batch
        seen = torch.cat([r["seen"][step] for r in ranks])
        assert sorted(seen.sum(dim=(1, 2, 3)).tolist()) == sorted(step_images.sum(dim=(1, 2, 3)).tolist())
    assert shuffled_any, "no rank's key encoder ever saw another rank's images"


def test_head_init_kaiming_is_the_official_fan_in_normal_with_zero_bias():
    torch.manual_seed(0)
    head = tiny_moco("method.head_init=kaiming").head
    for linear in head[::2]:
        fan_in = linear.weight.shape[1]
        assert torch.count_nonzero(linear.bias) == 0
        assert linear.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.15)
    default = tiny_moco().head[0]
    assert default.weight.abs().max().item() <= 1 / default.weight.shape[1] ** 0.5  # PyTorch's uniform bound
    assert pipeline.load_pretrain_config("mocov2", "paper", []).method["head_init"] == "kaiming"
