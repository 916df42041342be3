"""Atomic writes: a failed write leaves the previous file and no temporary behind, and what is
written gets the permissions of a plain open(), so a team's shared work directory stays readable."""
import os
import stat

import pytest
import torch

from orl_bench import pipeline
from orl_bench.engine.distributed import DistInfo
from orl_bench.io import append_jsonl, atomic_write, atomic_write_text


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_get_the_permissions_of_a_plain_open(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "table.md", "x")
        append_jsonl(tmp_path / "records.jsonl", [{"value": 1}])
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(previous)
    assert mode(tmp_path / "plain.txt") == 0o666 & ~umask
    assert mode(tmp_path / "table.md") == mode(tmp_path / "records.jsonl") == mode(tmp_path / "plain.txt")


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_every_file_of_an_artifact_gets_the_permissions_of_a_plain_open(workdir, umask):
    """Whichever writer made it: safetensors' save_file replaces the file it is given with a 0600 one."""
    previous = os.umask(umask)
    try:
        cfg = pipeline.load_pretrain_config("byol", "tiny", ["train.epochs=1"])
        folder, _ = pipeline.ensure_pretrained(cfg, "tiny", workdir, DistInfo(0, 1, 0, torch.device("cpu")))
    finally:
        os.umask(previous)
    files = {p.relative_to(folder).as_posix(): mode(p) for p in folder.rglob("*") if p.is_file()}
    assert {"backbone.safetensors", "manifest.json", "config.yaml", "run.json", "train_state.pt", "log.jsonl",
            "build.lock"} <= set(files)
    assert files == dict.fromkeys(files, 0o666 & ~umask)


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "manifest.json"
    atomic_write_text(target, "complete")

    def fails_half_way(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fails_half_way)
    assert target.read_text() == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]
