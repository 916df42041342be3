"""A small synthetic dataset shared by the data tests (generated once per session)."""
from __future__ import annotations

from pathlib import Path

import pytest

from orl_bench.data.synth import SynthSpec, ensure_synth


@pytest.fixture(scope="session")
def small_spec() -> SynthSpec:
    return SynthSpec(seed=3, coco_train=48, coco_val=8, coco_unlabeled=8, voc_trainval=40, voc_test=16)


@pytest.fixture(scope="session")
def synth_root(small_spec, tmp_path_factory) -> Path:
    return ensure_synth(small_spec, tmp_path_factory.mktemp("synth-cache"))
