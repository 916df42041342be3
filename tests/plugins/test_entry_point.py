"""SimSiam from another package (simsiam_plugin here): found through its entry point, listed, run
from its own recipes, with its views made by the loader or on the device, and held to the same
checks as every built-in method."""
from pathlib import Path

import pytest
import torch

from orl_bench import pipeline
from orl_bench.config import ConfigError
from orl_bench.engine.checkpoint import read_manifest
from orl_bench.registry import METHODS
from orl_bench.results.paper import load_reference
from orl_bench.testing import check_method, train_tiny
from tests.conftest import run_main

PLUGINS = Path(__file__).resolve().parent


@pytest.fixture
def simsiam(monkeypatch):
    """The plugin's folder on sys.path and METHODS discovering entry points again; both undone after."""
    monkeypatch.syspath_prepend(str(PLUGINS))
    with METHODS.scope():
        yield METHODS.get("simsiam")


def test_simsiam_is_found_through_its_entry_point_and_listed(simsiam, capsys):
    assert simsiam.__module__ == "simsiam_plugin.method"
    listed = run_main(capsys, "list", "methods")
    assert "entry point 'simsiam = simsiam_plugin.method:SimSiam' of simsiam-plugin" in listed
    recipes = run_main(capsys, "list", "recipes")
    assert f"pretrain/simsiam/tiny ({PLUGINS / 'simsiam_plugin' / 'recipes'})" in recipes


def test_simsiam_passes_the_checks_every_method_passes(simsiam, workdir):
    check_method("simsiam", workdir)


def test_simsiam_trains_with_its_views_made_on_the_device(simsiam, workdir):
    assert read_manifest(train_tiny("simsiam", workdir, "train.augment=device"))["augment"] == "device"


def test_recipes_come_from_the_plugin_and_inherit_the_shipped_scales(simsiam):
    assert pipeline.recipe_folder("simsiam") == PLUGINS / "simsiam_plugin" / "recipes"
    cfg, byol = (pipeline.load_pretrain_config(m, "tiny", []) for m in ("simsiam", "byol"))
    assert (cfg.data, cfg.model, cfg.train) == (byol.data, byol.model, byol.train)
    assert cfg.optim.lr == 0.05 and cfg.method["pred_hidden_dim"] == 8
    with pytest.raises(ConfigError, match=r"no pretrain recipe 'paper' for 'simsiam'.*available: default, tiny"):
        pipeline.load_pretrain_config("simsiam", "paper", [])


def test_loss_is_the_negative_cosine_through_the_predictor_only(simsiam):
    from simsiam_plugin.method import negative_cosine
    g = torch.Generator().manual_seed(0)
    p, z = torch.randn(5, 7, generator=g, requires_grad=True), torch.randn(5, 7, generator=g, requires_grad=True)
    loss = negative_cosine(p, z)
    a, b = p.detach(), z.detach()
    expected = -sum(float(a[i] @ b[i]) / float(a[i].norm() * b[i].norm()) for i in range(5)) / 5
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert p.grad is not None and z.grad is None  # the stop-gradient on the projection
    method = simsiam(pipeline.load_pretrain_config("simsiam", "tiny", []))
    assert not any(name.startswith("target") for name, _ in method.named_modules())  # no momentum encoder


def test_the_predictor_keeps_the_peak_learning_rate_while_the_encoders_decays(simsiam):
    from orl_bench.engine.optim import build_optimizer, set_lr
    cfg = pipeline.load_pretrain_config("simsiam", "tiny", [])
    method = simsiam(cfg)
    optimizer = build_optimizer(method, cfg.optim, peak_lr=0.05)
    set_lr(optimizer, 0.001)  # late in the cosine decay
    encoder, predictor = optimizer.param_groups
    assert encoder["lr"] == 0.001 and predictor["lr"] == 0.05
    assert {id(q) for q in predictor["params"]} == {id(q) for q in method.predictor.parameters()}
    unfixed = simsiam(pipeline.load_pretrain_config("simsiam", "tiny", ["method.fix_pred_lr=false"]))
    optimizer = build_optimizer(unfixed, cfg.optim, peak_lr=0.05)
    set_lr(optimizer, 0.001)
    assert [group["lr"] for group in optimizer.param_groups] == [0.001, 0.001]


def test_the_plugin_ships_its_own_papers_numbers_for_its_rows(simsiam):
    ref, orl_paper = pipeline.paper_reference(), load_reference()
    assert ref.lookup("linear_imagenet", "top1", "simsiam", pretrain_data="imagenet") == 71.3
    assert ref.lookup("linear_imagenet", "top1", "simsiam", pretrain_data="coco") is None  # SimSiam's paper has none
    assert ref.names["methods"]["simsiam"] == "SimSiam"
    assert ref.lookup("voc07_svm", "mAP", "orl") == orl_paper.lookup("voc07_svm", "mAP", "orl") is not None


def test_a_missing_paper_numbers_file_is_refused_before_any_work(simsiam, monkeypatch, tmp_path, capsys):
    from orl_bench.cli import main
    monkeypatch.setattr(simsiam, "paper_reference", tmp_path / "absent.yaml")
    workdir = tmp_path / "work"
    assert main(["run", "--method", "simsiam", "--recipe", "tiny", "--task", "knn", "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err.strip()
    assert "paper_reference" in err and "is not a file" in err and len(err.splitlines()) == 1
    assert not (workdir / "artifacts").exists() and not (workdir / "results").exists()
