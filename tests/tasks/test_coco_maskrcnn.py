"""COCO Mask R-CNN pieces (tasks/coco_maskrcnn.py, tasks/detection_data.py): pycocotools AP on a
hand-checked case and on ground truth, the instances check, strict backbone loading, the
schedule, and a resumed fine-tuning equal to an uninterrupted one."""
from __future__ import annotations

import json

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
from orl_bench.tasks.coco_maskrcnn import MaskRCNNParams, build_maskrcnn, fine_tune, load_backbone_strict, lr_factor
from orl_bench.tasks.detection_data import InstanceImages, check_instances, coco_ap, ground_truth_as_results


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
