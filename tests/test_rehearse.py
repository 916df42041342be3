"""`orl-bench rehearse`: the step budget, the report's attribution of a failure, the protocol's
feature dimensions, and the rehearsal itself at the tiny recipe (the paper recipe's rehearsal of
every method and task is in tests/test_rehearse_paper.py)."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from orl_bench import cli, rehearse
from orl_bench.config import FeatureConfig, TaskConfig
from orl_bench.engine import rehearsal
from orl_bench.methods.byol import BYOL, BYOLParams
from orl_bench.models.backbones import build_backbone
from orl_bench.models.heads import MLP
from orl_bench.registry import METHODS
from orl_bench.tasks.features import tap_features


def test_step_budget_stops_the_innermost_loop_and_records_it():
    recorder = rehearsal.Recorder(steps=3, device=torch.device("cpu"))
    done = []
    with rehearsal.recording(recorder):
        with rehearsal.section("outer"):
            with rehearsal.section("train"):
                for step in range(10):
                    done.append(step)
                    if rehearsal.step_done(images=4):
                        break
                assert rehearsal.spent()
            assert not rehearsal.spent()  # the outer section took no steps
    train, outer = recorder.take()
    assert done == [0, 1, 2]
    assert (train.name, train.steps, train.images, train.depth) == ("train", 3, 12, 1)
    assert (outer.name, outer.steps, outer.depth) == ("outer", 0, 0)
    assert outer.peak_bytes >= train.peak_bytes > 0
    assert train.seconds_per_step() is not None


def test_outside_a_rehearsal_nothing_stops_or_records():
    with rehearsal.section("pretrain byol") as s:
        assert not any(rehearsal.step_done(images=1) for _ in range(100))
    assert s.steps == 0 and not rehearsal.spent()


def test_a_section_keeps_the_error_that_left_it():
    recorder = rehearsal.Recorder(steps=1, device=torch.device("cpu"))
    with rehearsal.recording(recorder), pytest.raises(RuntimeError):
        with rehearsal.section("stage"):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied\nsecond line")
    (s,) = recorder.take()
    assert s.error == "RuntimeError: mat1 and mat2 shapes cannot be multiplied"


def test_cpu_peak_memory_is_measured_per_section():
    recorder = rehearsal.Recorder(steps=1, device=torch.device("cpu"))
    with rehearsal.recording(recorder):
        with rehearsal.section("big"):
            block = torch.ones(64 * 2 ** 20, dtype=torch.uint8)  # 64 MiB, touched
            del block
        with rehearsal.section("small"):
            pass
    big, small = recorder.take()
    assert big.peak_bytes - small.peak_bytes > 48 * 2 ** 20


@pytest.mark.parametrize(("error", "keys"), [
    ("mat1 and mat2 shapes cannot be multiplied (4x2048 and 100x64)", ["method.head_in"]),
    ("unknown key 'method.hiden_dim'; did you mean 'hidden_dim'?", ["method.hiden_dim"]),
    ("the loss is not finite at step 1", []),
])
def test_implicated_keys(error, keys):
    config = {"method": {"head_in": 100, "hidden_dim": 64, "proj_dim": 64, "views": {"size": 224}},
              "model": {"arch": "resnet50", "width": 64}, "train": {"seed": 0}}
    assert rehearse.implicated_keys(error, config, ("method", "model")) == keys


def test_resnet50_feature_dimensions_at_224_match_the_protocol_table():
    # docs/protocols.md 5.1 (OpenSelfSup's pooling): conv1 9216, res2 9216, res3 8192, res4 9216, res5 8192
    backbone = build_backbone("resnet50").eval()
    with torch.no_grad():
        dims = {k: v.shape[1] for k, v in tap_features(backbone, torch.zeros(1, 3, 224, 224),
                                                       ("conv1", "res2", "res3", "res4", "res5", "res5_gap")).items()}
    assert dims == {"conv1": 9216, "res2": 9216, "res3": 8192, "res4": 9216, "res5": 8192, "res5_gap": 2048}
    cfg = TaskConfig(features=FeatureConfig(layers=tuple(dims), size=224))
    checked = rehearse.feature_dims(backbone, "resnet50", cfg)
    assert all(v["dim"] == v["protocol"] for v in checked.values())


def test_two_measured_batches_never_go_below_two():
    assert rehearse.batches(64, None) == (64, 32)
    assert rehearse.batches(256, 4) == (4, 2)
    assert rehearse.batches(2, 4) == (2, 4)
    assert rehearse.batches(1, None) == (2, 4)


@dataclass(frozen=True)
class BrokenParams(BYOLParams):
    head_in: int = 100  # the defect: a projector width that is not the backbone's


class BrokenHead(BYOL):
    """BYOL whose projector takes a recipe-given width instead of the backbone's."""
    Params = BrokenParams

    def __init__(self, cfg, inputs=None):
        super().__init__(cfg, inputs)
        self.projector = MLP(self.params.head_in, self.params.hidden_dim, self.params.proj_dim)
        self.online = torch.nn.Sequential(self.backbone, self.projector)


def test_a_defect_is_named_by_stage_and_key_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "tiny.yaml").write_text("base: orl_bench:pretrain/byol/tiny.yaml\nmethod: {name: broken_head, "
                                       "head_in: 100, hidden_dim: 48}\n")
    monkeypatch.setattr(BrokenHead, "recipes_dir", recipes)
    monkeypatch.setitem(METHODS._entries, "broken_head", BrokenHead)
    monkeypatch.setitem(METHODS._sources, "broken_head", "tests")
    status = cli.main(["rehearse", "--recipe", "tiny", "--methods", "byol", "broken_head", "--tasks", "voc07_svm",
                       "--steps", "1", "--no-extrapolate", "--workdir", str(tmp_path / "home")])
    assert status == 1
    report = json.loads((tmp_path / "home" / "rehearsal" / "tiny" / "rehearsal.json").read_text())
    rows = {(r["name"], r["stage"]): r for r in report["rows"]}
    broken = rows[("broken_head", "pretrain broken_head")]
    assert broken["status"] == "failed" and "shapes cannot be multiplied" in broken["error"]
    assert broken["keys"] == ["method.head_in"]
    assert rows[("byol", "pretrain byol")]["status"] == "ok"
    assert rows[("voc07_svm", "evaluate")]["status"] == "ok"  # evaluated on byol's artifact
    assert report["failed"] == 1
    out = capsys.readouterr().out
    assert "| broken_head | pretrain broken_head | failed |" in out and "(method.head_in)" in out


def test_tiny_chain_with_memory_extrapolation(tmp_path):
    """ORL's three stages feed each other, a task evaluates ORL's artifact, and the second pass
    gives each training section a memory figure at the per-GPU batch."""
    out = tmp_path / "report"
    status = cli.main(["rehearse", "--recipe", "tiny", "--methods", "orl", "--tasks", "linear_imagenet",
                       "--steps", "2", "--workdir", str(tmp_path / "home"), "--out", str(out)])
    assert status == 0
    report = json.loads(out.with_suffix(".json").read_text())
    stages = [(r["name"], r["stage"]) for r in report["rows"]]
    assert stages == [("orl", "stage 1: pretrain byol"), ("orl", "stage 2: correspondences"),
                      ("orl", "stage 3: pretrain orl"), ("linear_imagenet", "train"), ("linear_imagenet", "evaluate")]
    rows = {s: r for s, r in zip(stages, report["rows"])}
    stage3 = rows[("orl", "stage 3: pretrain orl")]
    assert stage3["steps"] == 2 and stage3["s_per_step"] > 0
    assert stage3["probe_batch"] != stage3["batch"] and stage3["probe_grown_mib"] is not None
    # the peak carried to the per-GPU batch by the slope of what the part added; a negative slope
    # (CPU allocator noise at these tiny batches) gives no figure and says why
    slope = (stage3["grown_mib"] - stage3["probe_grown_mib"]) / (stage3["batch"] - stage3["probe_batch"])
    if slope >= 0:
        expected = stage3["peak_mib"] + slope * (stage3["per_gpu_batch"] - stage3["batch"])
        assert stage3["mib_at_per_gpu_batch"] == pytest.approx(expected, abs=0.1)
    else:
        assert stage3["mib_at_per_gpu_batch"] is None and "no memory extrapolation" in stage3["note"]
    assert rows[("linear_imagenet", "train")]["steps"] == 2
    assert "on orl's artifact" in rows[("linear_imagenet", "evaluate")]["note"]
    assert rows[("linear_imagenet", "evaluate")]["feature_dims"]
    manifest = next((tmp_path / "home" / "rehearsal" / "tiny" / "main" / "methods" / "orl" / "artifacts")
                    .glob("orl-*/manifest.json"))
    assert json.loads(manifest.read_text())["rehearsal_stopped_at_step"] == 2
    assert out.with_suffix(".md").read_text().startswith("Rehearsal of recipe `tiny`")


@pytest.mark.parametrize(("args", "message"), [
    (["--methods", "byoll"], "unknown method 'byoll'. Did you mean 'byol'?"),
    (["--tasks", "voc07"], "unknown task 'voc07'"),
    (["--image-size", "480"], "--image-size takes HEIGHTxWIDTH"),
    (["--steps", "0"], "need --steps >= 1"),
    (["--batch", "1"], "--batch >= 2"),
    (["--out", "/proc/version/report"], "--out folder /proc/version cannot be created: /proc/version is a file"),
])
def test_bad_rehearsal_input_is_one_line_before_any_work(args, message, tmp_path, capsys):
    assert cli.main(["rehearse", "--recipe", "tiny", *args, "--workdir", str(tmp_path / "home")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("orl-bench: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "home").exists()
