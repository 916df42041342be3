"""Export to detectron2: the key-naming protocol on real backbones, the round trip back, the CLI,
and the Mask R-CNN config of the detectron2 backend."""
import pickle
import re
import sys

import numpy as np
import pytest
import torch
import yaml

from orl_bench.config import ConfigError
from orl_bench.engine.checkpoint import CheckpointError
from orl_bench.engine.export import detectron2_state, export, torchvision_state
from orl_bench.models.backbones import build_backbone
from orl_bench.tasks.detectron2_backend import launch_detectron2, maskrcnn_config, write_maskrcnn_config
from tests.conftest import run_main

# detectron2's ResNet parameter names, written independently of the exporter's own patterns.
BN = r"norm\.(weight|bias|running_mean|running_var)"
D2_NAME = re.compile(rf"stem\.conv1\.(weight|{BN})|res[2-5]\.\d+\.(conv[1-3]|shortcut)\.(weight|{BN})")

# Written out by hand from the rules: stem prefix, layerN -> res(N+1), bnK -> convK.norm,
# downsample.0/1 -> shortcut / shortcut.norm.
COMMON = {
    "conv1.weight": "stem.conv1.weight",
    "bn1.weight": "stem.conv1.norm.weight",
    "bn1.running_var": "stem.conv1.norm.running_var",
    "layer2.0.conv1.weight": "res3.0.conv1.weight",
    "layer2.0.downsample.0.weight": "res3.0.shortcut.weight",
    "layer3.1.bn2.running_mean": "res4.1.conv2.norm.running_mean",
}
BOTTLENECK = {
    "layer1.0.downsample.1.running_mean": "res2.0.shortcut.norm.running_mean",
    "layer1.0.downsample.0.weight": "res2.0.shortcut.weight",
    "layer4.2.bn3.bias": "res5.2.conv3.norm.bias",
    "layer3.5.conv3.weight": "res4.5.conv3.weight",
}
BASIC = {  # resnet18 has no projection in layer1 (64 -> 64 channels), only from layer2 on
    "layer4.1.bn2.weight": "res5.1.conv2.norm.weight",
    "layer4.0.downsample.1.bias": "res5.0.shortcut.norm.bias",
}


def trained_state(arch, width):
    """A backbone's state with non-default BN statistics, so a swapped buffer cannot pass."""
    torch.manual_seed(0)
    model = build_backbone(arch, width)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            for t in (m.weight.data, m.bias.data, m.running_mean, m.running_var):
                t.copy_(torch.rand_like(t))
            m.num_batches_tracked.fill_(7)
    return model.state_dict()


@pytest.mark.parametrize("arch, width, expected", [("resnet50", 64, {**COMMON, **BOTTLENECK}),
                                                   ("resnet18", 16, {**COMMON, **BASIC})])
def test_keys_follow_the_detectron2_rules(arch, width, expected):
    state = trained_state(arch, width)
    d2 = detectron2_state(state)
    for tv_key, d2_key in expected.items():
        assert np.array_equal(d2[d2_key], state[tv_key].numpy()), tv_key
    bad = [k for k in d2 if not D2_NAME.fullmatch(k)]
    assert not bad, bad
    assert not any("num_batches_tracked" in k for k in d2)
    kept = [k for k in state if not k.endswith("num_batches_tracked")]
    assert len(d2) == len(kept)  # a one-to-one renaming, nothing else dropped
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in d2.values())


@pytest.mark.parametrize("arch, width", [("resnet50", 64), ("resnet18", 16)])
def test_round_trip_is_bit_equal(arch, width):
    state = trained_state(arch, width)
    back = torchvision_state(detectron2_state(state))
    assert set(back) == {k for k in state if not k.endswith("num_batches_tracked")}
    for k, v in back.items():
        assert v.dtype == state[k].dtype and torch.equal(v, state[k]), k
    build_backbone(arch, width).load_state_dict(back)  # strict: BatchNorm restarts its count at 0


def test_foreign_keys_are_named():
    state = {**build_backbone("resnet18", 8).state_dict(), "fc.weight": torch.zeros(10, 64),
             "head.bias": torch.zeros(1)}
    with pytest.raises(CheckpointError,
                       match=r"2 key\(s\) are not torchvision ResNet backbone keys.*: fc\.weight, head\.bias$"):
        detectron2_state(state)
    with pytest.raises(CheckpointError, match=r"not detectron2 ResNet keys.*backbone\.res2\.0\.conv1\.weight"):
        torchvision_state({"backbone.res2.0.conv1.weight": np.zeros(1, np.float32)})


def test_cli_exports_a_detectron2_pickle(capsys, workdir, tmp_path):
    run_main(capsys, "pretrain", "--method", "random", "--recipe", "tiny", "--workdir", str(workdir))
    artifact = next((workdir / "artifacts").glob("random-*"))
    out = tmp_path / "r18.pkl"
    assert "(detectron2)" in run_main(capsys, "export", str(artifact), "--out", str(out), "--format", "detectron2")
    with open(out, "rb") as f:
        blob = pickle.load(f)
    assert set(blob) == {"model", "__author__", "matching_heuristics"}
    assert blob["__author__"] == "orl-bench" and blob["matching_heuristics"] is True
    assert blob["model"]["stem.conv1.weight"].shape == (8, 3, 7, 7)  # the tiny recipe: resnet18, width 8
    assert all(D2_NAME.fullmatch(k) for k in blob["model"])

    from orl_bench.cli import main
    with pytest.raises(SystemExit):
        main(["export", str(artifact), "--out", str(out), "--format", "onnx"])
    err = capsys.readouterr().err
    assert "invalid choice: 'onnx'" in err and "torchvision" in err and "detectron2" in err
    assert main(["export", str(artifact), "--out", str(tmp_path / "r18.pth"), "--format", "detectron2"]) == 2
    assert "ending in .pkl" in capsys.readouterr().err and not (tmp_path / "r18.pth").exists()


def test_export_names_the_valid_formats(tmp_path):
    with pytest.raises(ValueError, match="unknown export format 'onnx'; expected one of torchvision, detectron2"):
        export(build_backbone("resnet18", 8), {}, "onnx", tmp_path / "x.onnx")


def test_maskrcnn_config_yaml(tmp_path):
    path = write_maskrcnn_config(tmp_path / "w.pkl", tmp_path / "run")
    cfg = yaml.safe_load(path.read_text())
    assert path == (tmp_path / "run" / "config.yaml").resolve()
    model = cfg["MODEL"]
    assert model["WEIGHTS"] == str((tmp_path / "w.pkl").resolve()) and model["MASK_ON"] is True
    assert model["PIXEL_MEAN"] == [123.675, 116.280, 103.530] and model["PIXEL_STD"] == [58.395, 57.120, 57.375]
    assert model["RESNETS"]["STRIDE_IN_1X1"] is False and model["RESNETS"]["NORM"] == "SyncBN"
    assert model["RESNETS"]["DEPTH"] == 50 and model["FPN"]["NORM"] == "SyncBN"
    assert {"NAME": "FastRCNNConvFCHead", "NUM_CONV": 4, "NUM_FC": 1, "NORM": "SyncBN"}.items() <= \
        model["ROI_BOX_HEAD"].items()
    assert model["ROI_MASK_HEAD"]["NORM"] == "SyncBN"
    assert cfg["INPUT"] == {"FORMAT": "RGB", "MIN_SIZE_TRAIN": [640, 672, 704, 736, 768, 800],
                            "MAX_SIZE_TRAIN": 1333, "MIN_SIZE_TEST": 800, "MAX_SIZE_TEST": 1333, "MASK_FORMAT": "polygon"}
    assert cfg["SOLVER"] == {"IMS_PER_BATCH": 16, "BASE_LR": 0.02, "MOMENTUM": 0.9, "WEIGHT_DECAY": 1e-4,
                             "STEPS": [60000, 80000], "MAX_ITER": 90000, "WARMUP_FACTOR": 0.001, "WARMUP_ITERS": 1000,
                             "CHECKPOINT_PERIOD": 5000, "AMP": {"ENABLED": False}}
    assert model["DEVICE"] == "cuda" and cfg["DATALOADER"] == {"NUM_WORKERS": 4}
    assert cfg["TEST"]["PRECISE_BN"]["ENABLED"] is True
    assert cfg["DATASETS"] == {"TRAIN": ["coco_2017_train"], "TEST": ["coco_2017_val"]}
    assert cfg["OUTPUT_DIR"] == str((tmp_path / "run").resolve())


def test_maskrcnn_config_options():
    cfg = maskrcnn_config("w.pkl", "out", box_head="2fc", max_iter=180000, steps=(120000, 160000))
    assert cfg["MODEL"]["ROI_BOX_HEAD"]["NUM_CONV"] == 0 and cfg["MODEL"]["ROI_BOX_HEAD"]["NUM_FC"] == 2
    assert cfg["SOLVER"]["MAX_ITER"] == 180000
    with pytest.raises(ConfigError, match="unknown box head '3conv'; expected one of 4conv1fc, 2fc"):
        maskrcnn_config("w.pkl", "out", box_head="3conv")
    with pytest.raises(ConfigError, match=r"steps \[60000, 80000\] must increase and end before max_iter 50000"):
        maskrcnn_config("w.pkl", "out", max_iter=50000)


def test_launch_without_detectron2_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "detectron2", None)  # not importable, even where it is installed
    with pytest.raises(ConfigError, match=r"needs detectron2, which is not installed.*pip install "
                                         r"'git\+https://github\.com/facebookresearch/detectron2\.git'.*"
                                          r"task\.params\.backend=torchvision"):
        launch_detectron2(write_maskrcnn_config(tmp_path / "w.pkl", tmp_path))
