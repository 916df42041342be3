"""The gathers a training step uses across ranks (2 gloo processes on CPU): rank order, batches of
different sizes, and the gradient the differentiable one carries back to each rank."""
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from orl_bench.engine.distributed import all_gather, all_gather_with_grad


def run_on_gloo(worker, tmp_path, *args, world_size=2):
    """worker(rank, world_size, *args) in `world_size` spawned processes joined in one gloo group."""
    mp.spawn(_join, args=(worker, world_size, str(tmp_path / "gloo_store"), args), nprocs=world_size)


def _join(rank, worker, world_size, store, args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        worker(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def _rows(rank):
    """Rank r holds r + 2 rows, as when a batch lost an unreadable image."""
    return torch.arange(3.0 * (rank + 2)).reshape(rank + 2, 3) + 100 * rank


def _gather_worker(rank, world_size, out):
    x = _rows(rank).requires_grad_()
    plain, plain_rows = all_gather(x)
    gathered, rows = all_gather_with_grad(x)
    # rank r's loss weighs global row i by (r + 1) * (i + 1): every rank's loss uses every row
    weights = (rank + 1) * torch.arange(1.0, len(gathered) + 1)
    (gathered.sum(dim=1) * weights).sum().backward()
    torch.save({"plain": plain, "plain_grad": plain.requires_grad, "gathered": gathered.detach(),
                "rows": [(r.start, r.stop) for r in (plain_rows, rows)], "grad": x.grad}, out / f"{rank}.pt")


def test_gathers_concatenate_uneven_batches_in_rank_order_and_sum_gradients_over_ranks(tmp_path):
    run_on_gloo(_gather_worker, tmp_path, tmp_path)
    everything = torch.cat([_rows(0), _rows(1)])
    for rank, (start, stop) in ((0, (0, 2)), (1, (2, 5))):
        got = torch.load(tmp_path / f"{rank}.pt")
        assert torch.equal(got["plain"], everything) and not got["plain_grad"]
        assert torch.equal(got["gathered"], everything)
        assert got["rows"] == [(start, stop), (start, stop)]
        # d(loss of rank 0 + loss of rank 1) / d(row i) = (1 + 2) * (i + 1), on this rank's rows only
        expected = 3 * torch.arange(1.0, 6)[start:stop, None].expand(-1, 3)
        assert torch.equal(got["grad"], expected)


def test_without_a_process_group_the_gathers_return_the_rows_themselves():
    x = torch.randn(4, 2, requires_grad=True)
    plain, rows = all_gather(x)
    assert torch.equal(plain, x) and not plain.requires_grad and rows == slice(0, 4)
    gathered, rows = all_gather_with_grad(x)
    assert gathered is x and rows == slice(0, 4)
