"""orl_bench.testing catches what it claims to: a method whose resume loses state, a method that
trains differently each run; and `registered_method` lasts for its block only."""
import os

import pytest
import torch

from orl_bench.methods.simclr import SimCLR
from orl_bench.registry import METHODS, RegistryError
from orl_bench.testing import check_method, registered_method

# SimCLR's tiny widths: these stand-ins ship no recipe, so the checks start from the tiny scale.
TINY_SIMCLR = ("method.hidden_dim=64", "method.proj_dim=32", "method.views.size=32")


class ForgetfulSimCLR(SimCLR):
    """Weighs its loss by a step count kept outside its state_dict, so a resumed run restarts it."""

    def __init__(self, cfg, inputs=None):
        super().__init__(cfg, inputs)
        self.steps_seen = 0

    def training_step(self, batch, progress):
        self.steps_seen += 1
        return {"loss": super().training_step(batch, progress)["loss"] * self.steps_seen}


class UnseededSimCLR(SimCLR):
    """Weighs its loss by a draw from a generator of its own, seeded by the OS: no two runs alike."""

    def training_step(self, batch, progress):
        own = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little"))
        return {"loss": super().training_step(batch, progress)["loss"] * (1 + torch.rand((), generator=own))}


@pytest.mark.parametrize("cls,diagnosis", [
    (ForgetfulSimCLR, "two uninterrupted runs agree, so the resume is inexact"),
    (UnseededSimCLR, "two uninterrupted runs differ too: training is not deterministic")])
def test_the_checks_fail_a_method_that_resumes_or_repeats_inexactly(cls, diagnosis, workdir):
    with registered_method("flawed_simclr", cls), pytest.raises(AssertionError, match=diagnosis):
        check_method("flawed_simclr", workdir, *TINY_SIMCLR)


def test_a_method_registered_for_a_test_is_gone_after_it():
    with registered_method("flawed_simclr", ForgetfulSimCLR):
        assert METHODS.get("flawed_simclr") is ForgetfulSimCLR
    with pytest.raises(RegistryError, match="unknown method 'flawed_simclr'"):
        METHODS.get("flawed_simclr")
    assert METHODS.get("simclr") is SimCLR
