"""benchmarks/embedded_ranges.py: the targets an embedded classification task must meet, read from
records at each artifact's best layer, the current benchmark configuration only, every seed present."""
import importlib.util
from pathlib import Path

from orl_bench import plan

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "embedded_ranges.py"


def load_script():
    spec = importlib.util.spec_from_file_location("embedded_ranges", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def records(method, task, values, config=None, data="synth"):
    config = config or plan.task_recipe_hash(task, "tiny", {})
    out = []
    for seed, value in enumerate(values):
        base = {"method": method, "task": task, "metric": "top1", "recipe": "tiny", "seed": seed,
                "task_config_hash": config, "dataset": "d", "pretrain_data": data,
                "artifact_sha256": f"{method}-{data}-{seed}".ljust(64, "0")}
        out += [base | {"layer": "res5", "value": value}, base | {"layer": "conv1", "value": value - 30}]
    return out


def test_targets_are_judged_from_every_seeds_best_layer_and_the_current_config():
    script = load_script()
    stored = [*records("random", "linear_imagenet", [50.0, 52.0, 54.0]),          # 52 ± 2
              *records("supervised", "linear_imagenet", [80.0, 80.5, 81.0]),     # +28.5, 14x the larger sd
              *records("byol", "linear_imagenet", [57.0, 58.0, 59.0]),           # +6 = 6 of its sd
              *records("mocov2", "linear_imagenet", [52.0, 56.0, 60.0]),         # +4 = 1 of its sd
              *records("mocov2", "linear_imagenet", [99.0, 99.0, 99.0], config="an older protocol"),
              *records("byol", "linear_imagenet", [99.0, 99.0, 99.0], data="synth_plus"),  # COCO+: its own row
              *records("random", "semi_imagenet_10pct", [20.0, 21.0, 22.0]),
              *records("byol", "semi_imagenet_10pct", [15.0, 18.0, 19.0]),
              *records("random", "knn", [30.0, 31.0, 32.0]), *records("byol", "knn", [40.0, 41.0]),
              {"method": "chance", "task": "linear_imagenet", "metric": "top1", "dataset": "d", "value": 5.0}]
    found = script.ranges(stored, "tiny", seeds=3)
    assert found["linear_imagenet"]["chance"] == 5.0
    assert found["linear_imagenet"]["rows"]["byol (COCO+)"]["mean"] == 99.0
    verdict = {(c["task"], c["target"]): c["holds"] for c in script.targets(found, seeds=3)}
    assert verdict["linear_imagenet", "supervised - random >= 20 and >= 5 sd"] is True
    assert verdict["linear_imagenet", "byol - random >= 2 of byol's sd"] is True
    assert verdict["linear_imagenet", "mocov2 - random >= 2 of mocov2's sd"] is False
    assert verdict["linear_places205", "supervised - random >= 20 and >= 5 sd"] is None  # no records
    assert verdict["semi_imagenet_10pct", "byol > random"] is False
    assert verdict["knn", "byol > random"] is None  # two of three seeds: not judged yet
