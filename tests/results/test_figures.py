"""Figures of `orl-bench table`: the activation-map statistic against a hand computation, the loss
curves from logs, and a table's cells drawn as curves."""
import numpy as np
import pytest
import torch

from orl_bench import plan
from orl_bench.results import figures, table_figures, tables
from orl_bench.results.paper import load_reference

PNG = b"\x89PNG\r\n\x1a\n"


class FixedMap(torch.nn.Module):
    """A stand-in backbone whose `res5` map is a given (H, W) array at the image's own size, so the
    upsampling is the identity and the statistic can be computed by hand."""

    def __init__(self, activation: np.ndarray):
        super().__init__()
        self.activation = torch.tensor(activation, dtype=torch.float32)

    def taps(self, x, names):
        assert x.shape[-2:] == self.activation.shape  # the image, at its own size
        return {"res5": torch.stack([self.activation, torch.zeros_like(self.activation)])[None]}  # norm = activation


def test_activation_share_inside_boxes_matches_a_hand_computation(tmp_path):
    image = np.zeros((8, 10, 3), np.uint8)
    box = np.array([[2, 1, 4, 3]], np.float32)  # x, y, w, h: columns 2..5, rows 1..3, 12 of 80 pixels
    on_object = np.zeros((8, 10))
    on_object[1:4, 2:6] = 3.0
    on_object[7, 9] = 1.0  # 36 of 37 inside
    shares = figures.activation_maps({"objects": FixedMap(on_object), "flat": FixedMap(np.ones((8, 10)))},
                                     [image, image], [box, box], tmp_path / "maps.png")
    assert shares["objects"] == pytest.approx(36 / 37)
    assert shares["flat"] == pytest.approx(12 / 80) and shares["box_area"] == pytest.approx(12 / 80)
    assert (tmp_path / "maps.png").read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="need one box array per image, got 2 images and 1 box arrays"):
        figures.activation_maps({"flat": FixedMap(np.ones((8, 10)))}, [image, image], [box], tmp_path / "x.png")


def test_loss_curves_draw_a_line_per_seed_and_say_when_logs_hold_no_loss(tmp_path):
    log = [{"step": s, "loss": 1.0 / s} for s in range(1, 6)]
    runs = {"byol [tiny]": [(0, log), (1, log)], "orl [tiny] (last stage)": [(0, log)], "random": [(0, [{"step": 1}])]}
    assert figures.loss_curves(runs, tmp_path / "loss.png") == 3
    assert (tmp_path / "loss.png").read_bytes()[:8] == PNG
    with pytest.raises(figures.NothingToDraw, match="no training-loss entries"):
        figures.loss_curves({"random": [(0, [{"step": 1}])]}, tmp_path / "none.png")


def test_table2_cells_draw_one_low_shot_line_per_row_run(tmp_path):
    ref = load_reference()
    table = ref.table("table2")
    rows = [r for r in plan.plan_rows(table, "default", ref, {}) if r.method in ("chance", "byol", "orl", "random")]
    records = [{"task": "voc07_lowshot", "metric": "mAP", "value": 20.0 + k + seed, "method": method, "seed": seed,
                "k": k, "layer": "res5", "recipe": "default", "task_config_hash": "h", "dataset": "d", "epochs": 8,
                "artifact_sha256": f"{method}{seed}".ljust(64, "0"), "artifact": f"/nowhere/{method}-{seed}"}
               for method in ("byol", "random") for seed in (0, 1) for k in (1, 2, 4, 8, 16, 32, 64, 96)
               if method == "byol" or k < 96]  # random's benchmark recipe stopped at 64
    records.append({"task": "voc07_lowshot", "metric": "mAP", "value": 13.0, "method": "chance", "seed": None,
                    "k": None, "layer": None, "recipe": None, "task_config_hash": "c", "dataset": "d",
                    "artifact_sha256": None})
    frame = tables.fill(table, rows, records, seeds=2, task_hash={(c.task, "default"): "h" for c in table.columns})
    assert frame[frame["method"] == "byol"]["artifact_dirs"].iloc[0] == ["/nowhere/byol-0", "/nowhere/byol-1"]
    status = frame.set_index(["row", "k"])["status"]
    assert status[("Random init", 96)] == tables.NOT_MEASURED and status[("ORL (COCO)", 96)] == "not run"
    said = table_figures.draw([(table, frame)], tmp_path, tmp_path)
    assert said == [f"{tmp_path / 'table2_lowshot.png'}: 2 lines over k"]  # byol and random; ORL not run
    assert (tmp_path / "table2_lowshot.png").read_bytes()[:8] == PNG
    nothing = tables.fill(table, rows, [], seeds=2, task_hash={})
    assert table_figures.draw([(table, nothing)], tmp_path, tmp_path) == [
        f"{tmp_path / 'table2_lowshot.png'}: skipped: no low-shot report rows (with k) at layer best layer to draw"]
