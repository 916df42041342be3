"""A two-node Slurm cluster on this machine, started once per session for the tests that submit
real jobs; they skip, saying why, where Slurm is not installed or we are not root."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.slurm_cluster import LocalSlurm, unavailable_reason


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Iterator[LocalSlurm]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with LocalSlurm(tmp_path_factory.mktemp("slurm"), nodes=2) as cluster:
        yield cluster
