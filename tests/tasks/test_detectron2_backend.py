"""The detectron2 backend for real (skipped where detectron2 is not installed): a full-width
ResNet-18 fine-tuned and evaluated by detectron2's own trainer on the embedded scenes on CPU,
resumed after kill -9 to the uninterrupted run's weights by its checkpointer; and the generated
`paper` config, read into detectron2's `get_cfg()`, key by key the official R50-FPN 1x config."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("detectron2", reason="detectron2 is not installed (see docs/protocols.md 5.6 for the line)")

from detectron2.config import get_cfg  # noqa: E402

from orl_bench import pipeline  # noqa: E402
from orl_bench.models.backbones import build_backbone  # noqa: E402
from orl_bench.results.records import load_records  # noqa: E402
from orl_bench.config import from_dict  # noqa: E402
from orl_bench.tasks.coco_maskrcnn import MaskRCNNParams  # noqa: E402
from orl_bench.tasks.detectron2_backend import detectron2_settings, write_maskrcnn_config  # noqa: E402
from tests.conftest import run_cli, straight_then_killed  # noqa: E402

RUN = ["run", "--method", "byol", "--recipe", "tiny", "--task", "coco_maskrcnn", "--set", "model.width=64",
       "--set", "task.params.backend=detectron2"]


def _final_weights(home):
    return torch.load(next((home / "evals").rglob("model_final.pth")), weights_only=False)["model"]


@pytest.mark.slow  # three CLI runs of detectron2's trainer, ~2 min on 2 idle cores: .ci/run runs it after the default run
def test_detectron2_trains_on_cpu_and_resumes_after_kill_to_the_same_weights(tmp_path, tiny_data):
    """SIGKILL right after the first of two checkpoints (iteration 2 of 4), then the same command:
    the rerun continues from detectron2's checkpoint and ends with the uninterrupted run's weights
    (precise-BN statistics included) and AP."""
    homes = dict(zip(("straight", "killed"), straight_then_killed(RUN, "detection.checkpoint:1", tmp_path, tiny_data)))
    killed_dir = next((homes["killed"] / "evals").rglob("last_checkpoint")).parent
    assert (killed_dir / "last_checkpoint").read_text() == "model_0000001.pth" and not load_records(homes["killed"])
    resumed = run_cli(*RUN, "--workdir", str(homes["killed"]))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Starting training from iteration 2" in resumed.stderr + resumed.stdout
    straight, again = _final_weights(homes["straight"]), _final_weights(homes["killed"])
    assert straight.keys() == again.keys()
    for key, value in straight.items():
        assert torch.equal(value, again[key]), key
    rows = {r["metric"]: r for r in load_records(homes["straight"]) if r["method"] == "byol"}
    assert {"box_AP", "box_AP50", "box_AP75", "mask_AP", "mask_AP50", "mask_AP75"} <= set(rows)
    assert all(r["backend"] == "detectron2" and r["norm"] == "BN" and r["amp"] == "off" for r in rows.values())
    same = ("method", "metric", "value")
    assert [{k: r[k] for k in same} for r in load_records(homes["killed"])] == \
        [{k: r[k] for k in same} for r in load_records(homes["straight"])]


# The MoCo-style Mask R-CNN R50-FPN 1x config of ORL's benchmarks/detection (R_50_FPN_1x_infomin.yaml
# over R_50_FPN_1x.yaml over Base-RCNN-FPN.yaml): every key it sets, beside detectron2's defaults.
OFFICIAL_1X = {
    "MODEL.META_ARCHITECTURE": "GeneralizedRCNN", "MODEL.MASK_ON": True,
    "MODEL.PIXEL_MEAN": [123.675, 116.280, 103.530], "MODEL.PIXEL_STD": [58.395, 57.120, 57.375],
    "MODEL.BACKBONE.NAME": "build_resnet_fpn_backbone", "MODEL.BACKBONE.FREEZE_AT": 0,
    "MODEL.RESNETS.OUT_FEATURES": ["res2", "res3", "res4", "res5"], "MODEL.RESNETS.DEPTH": 50,
    "MODEL.RESNETS.NORM": "SyncBN", "MODEL.RESNETS.STRIDE_IN_1X1": False,
    "MODEL.FPN.IN_FEATURES": ["res2", "res3", "res4", "res5"], "MODEL.FPN.NORM": "SyncBN",
    "MODEL.ANCHOR_GENERATOR.SIZES": [[32], [64], [128], [256], [512]],
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [[0.5, 1.0, 2.0]],
    "MODEL.RPN.IN_FEATURES": ["p2", "p3", "p4", "p5", "p6"], "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 2000,
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 1000, "MODEL.RPN.POST_NMS_TOPK_TRAIN": 1000, "MODEL.RPN.POST_NMS_TOPK_TEST": 1000,
    "MODEL.ROI_HEADS.NAME": "StandardROIHeads", "MODEL.ROI_HEADS.IN_FEATURES": ["p2", "p3", "p4", "p5"],
    "MODEL.ROI_BOX_HEAD.NAME": "FastRCNNConvFCHead", "MODEL.ROI_BOX_HEAD.NUM_CONV": 4, "MODEL.ROI_BOX_HEAD.NUM_FC": 1,
    "MODEL.ROI_BOX_HEAD.NORM": "SyncBN", "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": 7,
    "MODEL.ROI_MASK_HEAD.NAME": "MaskRCNNConvUpsampleHead", "MODEL.ROI_MASK_HEAD.NUM_CONV": 4,
    "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION": 14, "MODEL.ROI_MASK_HEAD.NORM": "SyncBN",
    "SOLVER.IMS_PER_BATCH": 16, "SOLVER.BASE_LR": 0.02, "SOLVER.STEPS": [60000, 80000], "SOLVER.MAX_ITER": 90000,
    "INPUT.MIN_SIZE_TRAIN": [640, 672, 704, 736, 768, 800], "INPUT.FORMAT": "RGB",
    "TEST.PRECISE_BN.ENABLED": True, "VERSION": 2,
}
# Keys where a run of ours must differ: where the weights and outputs live, the datasets (ours are
# registered under their own names, from data.root), the schedule's bookkeeping (checkpoint every
# params.checkpoint_every; the seed our data order is drawn from).
OURS_BY_DESIGN = {"MODEL.WEIGHTS", "OUTPUT_DIR", "DATASETS.TRAIN", "DATASETS.TEST", "SOLVER.CHECKPOINT_PERIOD", "SEED"}


def flat(node, prefix=""):
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(map(list, value)) if isinstance(value, tuple) and value and \
                isinstance(value[0], (tuple, list)) else (list(value) if isinstance(value, tuple) else value)
    return out


def test_paper_config_is_the_official_r50_fpn_1x_key_by_key(tmp_path):
    official = get_cfg()
    official.merge_from_list([x for key, value in OFFICIAL_1X.items() for x in (key, value)])
    cfg = pipeline.load_task_config("coco_maskrcnn", "paper", ["data.root=/coco"])
    settings = detectron2_settings(from_dict(MaskRCNNParams, cfg.params, "params"), build_backbone("resnet50"), 80, torch.device("cuda"),
                                   "coco_train", "coco_val")
    ours = get_cfg()
    ours.merge_from_file(str(write_maskrcnn_config(tmp_path / "w.pkl", tmp_path, **settings)))
    theirs, mine = flat(official), flat(ours)
    assert theirs.keys() == mine.keys()  # our file sets no key detectron2 does not know
    differ = {k: (theirs[k], mine[k]) for k in theirs if theirs[k] != mine[k] and k not in OURS_BY_DESIGN}
    assert differ == {}
    assert mine["MODEL.DEVICE"] == "cuda" and mine["SOLVER.AMP.ENABLED"] is False
