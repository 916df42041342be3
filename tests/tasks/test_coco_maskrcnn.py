"""COCO Mask R-CNN pieces (tasks/coco_maskrcnn.py, tasks/detection_data.py): pycocotools AP on a
hand-checked case and on ground truth, the instances check, strict backbone loading, the
schedule, and a resumed fine-tuning equal to an uninterrupted one."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from orl_bench import pipeline
from orl_bench.data.coco import CocoDataset
from orl_bench.data.images import DatasetLayoutError
from orl_bench.data.sources import synth_root
from orl_bench.engine.checkpoint import CheckpointError
from orl_bench.engine.distributed import DistInfo
from orl_bench.models.backbones import build_backbone
from orl_bench.tasks import coco_maskrcnn
from orl_bench.results.records import load_records
from orl_bench.config import ConfigError
from orl_bench.tasks.coco_maskrcnn import (MaskRCNNParams, build_maskrcnn, fine_tune, load_backbone_strict,
                                          lr_factor, prepare_for)
from orl_bench.tasks.detectron2_backend import detectron2_settings, mask_format, maskrcnn_config, resnet_depth
from orl_bench.tasks.detection_data import (InstanceImages, chance_results, check_instances, coco_ap,
                                           ground_truth_as_results)
from tests.conftest import REPO, run_cli, straight_then_killed


def write_coco(root, annotations, categories=({"id": 1, "name": "a"}, {"id": 2, "name": "b"})):
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    Image.new("RGB", (40, 30)).save(root / "val2017" / "1.jpg")
    data = {"images": [{"id": 1, "file_name": "1.jpg", "width": 40, "height": 30}],
            "annotations": annotations, "categories": list(categories)}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    return CocoDataset(root, "val2017")


def square(ann_id, x, y, side, category=1):
    poly = [x, y, x + side, y, x + side, y + side, x, y + side]
    return {"id": ann_id, "image_id": 1, "category_id": category, "bbox": [x, y, side, side],
            "area": side * side, "iscrowd": 0, "segmentation": [poly]}


def test_ap_of_a_hand_checked_case(tmp_path):
    """One object; a false positive ranked above the exact hit: precision 1/2 at every recall up
    to 1, at every IoU threshold, so AP = AP50 = AP75 = 50. The 10 x 10 object is small (< 32^2):
    APs = 50, and there is no medium or large object (None)."""
    coco = write_coco(tmp_path, [square(1, 5, 5, 10)])
    results = [{"image_id": 1, "category_id": 1, "bbox": [25, 15, 10, 10], "score": 0.9},
               {"image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10], "score": 0.8}]
    ap = coco_ap(str(coco.ann_file), results, "bbox")
    assert ap["AP"] == pytest.approx(50) and ap["AP50"] == pytest.approx(50) and ap["AP75"] == pytest.approx(50)
    assert ap["APs"] == pytest.approx(50) and ap["APm"] is None and ap["APl"] is None


def test_ground_truth_scores_100_on_the_embedded_val_split(workdir):
    cfg = pipeline.load_task_config("coco_maskrcnn", "tiny", [])
    val = CocoDataset(synth_root(cfg.data, workdir) / "coco", "val2017")
    boxes, masks = ground_truth_as_results(val)
    assert len(boxes) > 20
    assert coco_ap(str(val.ann_file), boxes, "bbox")["AP"] == pytest.approx(100)
    assert coco_ap(str(val.ann_file), masks, "segm")["AP"] == pytest.approx(100)


def test_chance_level_is_an_uninformed_detector_and_low(workdir):
    cfg = pipeline.load_task_config("coco_maskrcnn", "tiny", [])
    root = synth_root(cfg.data, workdir) / "coco"
    train, val = CocoDataset(root, "train2017"), CocoDataset(root, "val2017")
    boxes, masks = chance_results(train, val, seed=0)
    assert len(boxes) == len(masks) == 100 * len(val) and (boxes, masks) == chance_results(train, val, seed=0)
    categories = {a["category_id"] for i in range(len(train)) for a in train.annotations(i)}
    assert {b["category_id"] for b in boxes} <= categories
    assert all(0 <= x and 0 <= y and x + w <= 64 + 1e-6 and y + h <= 64 + 1e-6 for x, y, w, h in (b["bbox"] for b in boxes))
    for results, kind in ((boxes, "bbox"), (masks, "segm")):
        ap = coco_ap(str(val.ann_file), results, kind)["AP"]
        assert 0 < ap < 10, ap  # far from the ground truth's 100, but boxes from the right prior sometimes hit


@pytest.mark.parametrize("break_it,expected", [
    (lambda a: a.pop("segmentation"), "has no `segmentation`"),
    (lambda a: a.update(bbox=[35, 5, 10, 10]), r"bbox \[35, 5, 10, 10\] outside its 40x30 image"),
    (lambda a: a.update(category_id=7), r"category_id 7, not one of the declared \[1, 2\]"),
])
def test_malformed_instances_are_a_clear_error(tmp_path, break_it, expected):
    ann = square(1, 5, 5, 10)
    break_it(ann)
    coco = write_coco(tmp_path, [ann, square(2, 1, 1, 4)])
    with pytest.raises(DatasetLayoutError, match=f"instances_val2017.json: 1 problems, e.g.\n  annotation 1 .*{expected}"):
        check_instances(coco)


def tiny_params(**changes) -> MaskRCNNParams:
    cfg = pipeline.load_task_config("coco_maskrcnn", "tiny", [])
    return MaskRCNNParams(**{**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.params.items()},
                             **changes})


def test_strict_loading_lists_missing_and_unexpected_keys():
    backbone = build_backbone("resnet18", 16)
    model = build_maskrcnn(backbone, 3, tiny_params())
    state = backbone.state_dict()
    load_backbone_strict(model, state)  # the backbone's own keys fit exactly
    bad = {k: v for k, v in state.items() if k != "layer1.0.conv1.weight"}
    bad["fc.weight"] = torch.zeros(2, 2)
    with pytest.raises(CheckpointError, match=r"1 missing keys \['layer1.0.conv1.weight'\], 1 unexpected keys "
                                              r"\['fc.weight'\]"):
        load_backbone_strict(model, bad)


def test_schedule_warms_up_then_steps():
    p = MaskRCNNParams()
    assert lr_factor(0, p) == pytest.approx(0.001) and lr_factor(500, p) == pytest.approx(0.5005)
    assert lr_factor(1000, p) == 1.0 and lr_factor(60_000, p) == pytest.approx(0.1)
    assert lr_factor(89_999, p) == pytest.approx(0.01)


CPU = DistInfo(0, 1, 0, torch.device("cpu"))


class Killed(Exception):
    pass


def test_resumed_fine_tuning_equals_uninterrupted(tmp_path, workdir, monkeypatch):
    cfg = pipeline.load_task_config("coco_maskrcnn", "tiny", [])
    train = InstanceImages(CocoDataset(synth_root(cfg.data, workdir) / "coco", "train2017"), flip_seed=0)
    p = tiny_params(iterations=4, checkpoint_every=1)

    def fresh_model():  # what a new process builds before it resumes
        torch.manual_seed(0)
        return build_maskrcnn(build_backbone("resnet18", 16), len(train.label_of), p)

    straight = fresh_model()
    losses = fine_tune(straight, train, p, tmp_path / "straight" / "state.pt", CPU)
    checkpoints = []

    def die_after_second(point):  # the process dies right after its second checkpoint
        checkpoints.append(point)
        if len(checkpoints) == 2:
            raise Killed

    monkeypatch.setattr(coco_maskrcnn, "fault_point", die_after_second)
    with pytest.raises(Killed):
        fine_tune(fresh_model(), train, p, tmp_path / "killed" / "state.pt", CPU)
    monkeypatch.undo()
    resumed = fresh_model()
    resumed_losses = fine_tune(resumed, train, p, tmp_path / "killed" / "state.pt", CPU)
    assert resumed_losses == losses and len(losses) == 4 and np.isfinite(losses).all()
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


RUN = ["run", "--method", "random", "--recipe", "tiny", "--task", "coco_maskrcnn"]


def _final_state(home):
    return torch.load(next((home / "evals").rglob("state.pt")), weights_only=True)


def test_killed_cli_fine_tuning_resumes_to_the_uninterrupted_weights(tmp_path, tiny_data):
    """SIGKILL right after the first of two checkpoints, then the same command: the rerun trains
    iterations 3-4 only and ends with the uninterrupted run's weights, losses and records."""
    homes = dict(zip(("straight", "killed"), straight_then_killed(RUN, "detection.checkpoint:1", tmp_path, tiny_data)))
    assert _final_state(homes["killed"])["iteration"] == 2 and not load_records(homes["killed"])
    resumed = run_cli(*RUN, "--workdir", str(homes["killed"]))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight, again = _final_state(homes["straight"]), _final_state(homes["killed"])
    assert again["iteration"] == 4 and again["losses"] == straight["losses"]
    for key, value in straight["model"].items():
        assert torch.equal(value, again["model"][key]), key
    log = [json.loads(line) for line in next((homes["killed"] / "evals").rglob("log.jsonl")).read_text().splitlines()]
    assert [row["resumed_at"] for row in log if row.get("event") == "fine_tune"] == [0, 2]
    same = ("method", "metric", "value", "final_train_loss")
    assert [{k: r.get(k) for k in same} for r in load_records(homes["killed"])] == \
        [{k: r.get(k) for k in same} for r in load_records(homes["straight"])]


def test_sync_bn_on_a_distributed_cpu_run_is_a_clear_error():
    model = build_maskrcnn(build_backbone("resnet18", 16), 3, tiny_params())
    with pytest.raises(ValueError, match="sync_bn=true needs CUDA.*task.params.sync_bn=false"):
        prepare_for(model, tiny_params(), DistInfo(0, 2, 0, torch.device("cpu")))


@pytest.mark.slow
def test_torchrun_two_processes_fine_tune_and_record_once(workdir):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "orl_bench.cli", *RUN, "--workdir", str(workdir), "--set", "task.params.sync_bn=false"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = load_records(workdir)
    ours = [r for r in rows if r["method"] == "random"]
    assert {"box_AP", "box_AP50", "box_AP75", "mask_AP", "mask_AP50", "mask_AP75"} <= {r["metric"] for r in ours}
    assert all(r["world_size"] == 2 and r["norm"] == "BN" and r["images"]["val"] == 16 for r in ours)
    assert len([r for r in rows if r["method"] == "chance"]) == len({r["metric"] for r in rows if r["method"] == "chance"})


def test_detectron2_backend_without_detectron2_says_how_to_install(monkeypatch, capsys, workdir):
    from orl_bench.cli import main
    monkeypatch.setitem(sys.modules, "detectron2", None)  # not importable, even where it is installed
    assert main([*RUN, "--workdir", str(workdir), "--set", "task.params.backend=detectron2"]) == 2
    err = capsys.readouterr().err
    assert "the detectron2 backend needs detectron2, which is not installed" in err and "pip install" in err
    assert "task.params.backend=torchvision" in err and "Traceback" not in err
    assert not (workdir / "evals").exists() and not load_records(workdir)


def test_detectron2_config_follows_the_task_params(tmp_path):
    p = MaskRCNNParams(batch_size=8, norm=False, sync_bn=False, min_size_train=(600, 800), iterations=100,
                       steps=(70,), warmup_iters=10)
    settings = detectron2_settings(p, build_backbone("resnet50"), 20, torch.device("cpu"), "tr", "va")
    cfg = maskrcnn_config("w.pkl", "out", **settings)
    assert cfg["MODEL"]["RESNETS"]["DEPTH"] == 50 and cfg["MODEL"]["RESNETS"]["NORM"] == "BN"
    assert cfg["MODEL"]["FPN"]["NORM"] == "" and cfg["MODEL"]["ROI_BOX_HEAD"]["NORM"] == ""
    assert cfg["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 20 and cfg["MODEL"]["ROI_HEADS"]["BATCH_SIZE_PER_IMAGE"] == 512
    assert cfg["SOLVER"] == {"IMS_PER_BATCH": 8, "BASE_LR": 0.01, "MOMENTUM": 0.9, "WEIGHT_DECAY": 1e-4, "STEPS": [70],
                             "MAX_ITER": 100, "WARMUP_FACTOR": 0.001, "WARMUP_ITERS": 10, "CHECKPOINT_PERIOD": 500,
                             "AMP": {"ENABLED": False}}
    assert cfg["MODEL"]["DEVICE"] == "cpu" and cfg["TEST"]["PRECISE_BN"] == {"ENABLED": True, "NUM_ITER": 200}
    assert cfg["INPUT"]["MIN_SIZE_TRAIN"] == [600, 800] and cfg["DATASETS"] == {"TRAIN": ["tr"], "TEST": ["va"]}
    assert maskrcnn_config("w.pkl", "out", **{**settings, "depth": resnet_depth(build_backbone("resnet18"))}
                           )["MODEL"]["RESNETS"]["RES2_OUT_CHANNELS"] == 64
    with pytest.raises(ConfigError, match=r"torchvision's width \(stem 64\); this backbone has blocks \(2, 2, 2, 2\) "
                                          r"and a stem of 16 channels"):
        resnet_depth(build_backbone("resnet18", 16))


def test_detectron2_batches_are_the_built_in_order_split_over_ranks_and_reseeded_per_iteration():
    """Iteration i's global batch is the i-th run of the built-in backend's pass order; each rank
    maps its contiguous share; the mapper's NumPy draws depend on (seed, i) alone."""
    from orl_bench.tasks.detection_data import pass_order
    from orl_bench.tasks.detectron2_backend import _IterationBatches

    def mapper(d):
        return d["i"], np.random.random()

    dicts = [{"i": i} for i in range(10)]
    ranks = [_IterationBatches(dicts, mapper, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    for iteration in range(5):  # two full batches per pass of 10: iterations 2-3 are the second pass
        pass_index, k = divmod(iteration, 2)
        expected = pass_order(10, 3, pass_index)[4 * k:4 * k + 4].tolist()
        got = [item for r in ranks for item in r[iteration]]
        assert [i for i, _ in got] == expected
        np.random.seed(99)  # whatever the process drew before, the batch is the same
        assert ranks[0][iteration] == ranks[0][iteration]
    with pytest.raises(ConfigError, match="batch_size 3 must divide over the 2 processes"):
        _IterationBatches(dicts, mapper, 3, seed=0, rank=0, world_size=2)


def test_detectron2_mask_format_follows_the_annotations(tmp_path):
    assert mask_format(write_coco(tmp_path / "poly", [square(1, 5, 5, 10)])) == "polygon"
    rle = {**square(1, 5, 5, 10), "segmentation": {"size": [30, 40], "counts": "0"}}
    assert mask_format(write_coco(tmp_path / "rle", [rle])) == "bitmask"


@pytest.mark.parametrize("overrides, message", [
    (["task.params.amp=bf16"], "params.amp=bf16: the detectron2 backend autocasts to float16 only"),
    (["task.params.detectron2_train_order=random"], "params.detectron2_train_order must be one of"),
    (["task.params.num_gpus=2"], "params.num_gpus=2 but this machine has 0 CUDA GPUs"),
])
def test_detectron2_options_fail_in_one_line_before_any_work(overrides, message, capsys, workdir):
    from orl_bench.cli import main
    if torch.cuda.is_available() and "num_gpus" in overrides[0]:
        pytest.skip("a machine with CUDA GPUs")
    args = ["run", "--method", "byol", "--recipe", "tiny", "--task", "coco_maskrcnn", "--workdir", str(workdir),
            "--set", "task.params.backend=detectron2"]
    assert main([*args, *[x for o in overrides for x in ("--set", o)]]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (workdir / "artifacts").exists() and not (workdir / "evals").exists()
