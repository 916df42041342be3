"""kill -9 anywhere in `orl-bench run --method orl`, then the same command: every artifact, feature
cache and record ends byte-identical to an uninterrupted run's (in another work directory), with
no duplicate record. Each run below is killed at a fault point (orl_bench/faults.py) inside the
next stage, and the next run picks up from there."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from orl_bench.results.records import records_path
from tests.conftest import content_files, fresh_home, run_cli

RUN = ["run", "--method", "orl", "--recipe", "tiny", "--task", "voc07_svm", "--set", "train.deterministic=true",
       "--set", "train.checkpoint_every_steps=1", "--set", "train.epochs=2"]
# In order along the chain: stage 1 mid-training, stage 2 after the bank, during selective search,
# during the RoI embeddings, stage 3 mid-training, evaluation between feature layers and between
# SVM classes. Stage 1 is complete before the stage-3 kill, so that kill's steps are stage 3's.
KILLS = ["train.step:3", "stage2.step:1", "stage2.proposals:5", "stage2.roi:4", "train.step:3",
         "features.layer:1", "svm.class:3"]
# Run facts that differ between two runs by design: when and how long.
VOLATILE_RECORD_KEYS = {"timestamp", "wall_time_s", "pretraining_s"}


def records(home: Path) -> list[dict]:
    rows = [json.loads(line) for line in records_path(home).read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in VOLATILE_RECORD_KEYS} for r in rows]


@pytest.mark.slow
def test_killed_anywhere_in_the_orl_chain_the_rerun_matches_an_uninterrupted_run(tmp_path, tiny_data):
    reference = fresh_home(tmp_path, "reference", tiny_data)
    done = run_cli(*RUN, "--workdir", str(reference), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    home = fresh_home(tmp_path, "killed", tiny_data)
    for point in KILLS:
        killed = run_cli(*RUN, "--workdir", str(home), env={"ORL_BENCH_KILL_AT": point}, timeout=600)
        assert killed.returncode == -signal.SIGKILL, f"not killed at {point}: {killed.stderr[-2000:]}"
    assert not records_path(home).exists() or not records_path(home).read_text().strip()
    finished = run_cli(*RUN, "--workdir", str(home), timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]

    theirs, ours = content_files(reference), content_files(home)
    assert any("correspondences.npz" in f for f in ours) and any(f.endswith("res5.npy") for f in ours)
    assert sorted(ours) == sorted(theirs)
    differing = [f for f in ours if ours[f] != theirs[f]]
    assert not differing, f"differ from the uninterrupted run: {differing}"
    assert records(home) == records(reference)  # the same records, once each
    # and rerunning the finished command adds nothing
    again = run_cli(*RUN, "--workdir", str(home), timeout=600)
    assert again.returncode == 0 and "already stored" in again.stdout
    assert records(home) == records(reference)
