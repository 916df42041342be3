import re
from dataclasses import replace

import pytest

from orl_bench import pipeline
from orl_bench.cli import main
from orl_bench.config import (ConfigError, PretrainConfig, apply_overrides, config_hash, find_recipe, from_dict,
                              load_yaml_recipe, recipe_root, to_dict)


def test_unknown_key_names_the_closest_valid_key():
    with pytest.raises(ConfigError, match=r"unknown key 'config.optim.weight_dacay'.*did you mean 'weight_decay'"):
        from_dict(PretrainConfig, {"optim": {"weight_dacay": 0.1}})


def test_unknown_method_option_is_checked_against_the_plugin_schema():
    with pytest.raises(ConfigError, match=r"'method.hiden_dim'.*did you mean 'hidden_dim'"):
        pipeline.load_pretrain_config("byol", "tiny", ["method.hiden_dim=8"])


def test_unknown_task_option_names_the_closest_as_the_user_typed_it(capsys, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'task.params.fold'.*did you mean 'folds'"):
        pipeline.load_task_config("voc07_svm", "tiny", ["params.fold=2"])
    # `run` sends task.* overrides to the benchmark recipe: the error echoes the prefix the user typed
    assert main(["run", "--method", "random", "--recipe", "tiny", "--task", "voc07_svm", "--set",
                 "task.params.n_job=2", "--workdir", str(tmp_path)]) == 2
    assert "unknown key 'task.params.n_job'; did you mean 'n_jobs'?" in capsys.readouterr().err


def test_overrides_parse_yaml_scalars_and_nest():
    data = apply_overrides({"a": {"b": 1, "c": 2}}, ["a.b=0.5", "a.d=[1, 2]", "e=true", "f=null"])
    assert data == {"a": {"b": 0.5, "c": 2, "d": [1, 2]}, "e": True, "f": None}
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["no_equals_sign"])


def test_type_errors_are_reported_with_their_location():
    with pytest.raises(ConfigError, match=r"config.train.epochs: expected int, got 'many'"):
        from_dict(PretrainConfig, {"train": {"epochs": "many"}})


# (key, a value that makes a run meaningless, what the error says is expected)
BAD_PRETRAIN_VALUES = [
    ("train.epochs", 0, ">= 1"), ("train.epochs", -1, ">= 1"), ("train.batch_size", 0, ">= 1"),
    ("train.checkpoint_every_steps", 0, ">= 1"), ("train.log_every_steps", -5, ">= 1"),
    ("optim.lr", 0, "> 0"), ("optim.lr", -0.1, "> 0"), ("optim.weight_decay", -1e-4, ">= 0"),
    ("optim.momentum", 1.0, "in [0, 1)"), ("optim.momentum", -0.5, "in [0, 1)"), ("optim.warmup_epochs", -1, ">= 0"),
    ("optim.final_lr_fraction", 1.5, "in [0, 1]"), ("optim.final_lr_fraction", -0.1, "in [0, 1]"),
]


@pytest.mark.parametrize("method", ["byol", "random"])
@pytest.mark.parametrize("key, value, expected", BAD_PRETRAIN_VALUES)
def test_a_meaningless_training_value_is_refused_when_the_recipe_is_read(method, key, value, expected):
    with pytest.raises(ConfigError, match=re.escape(f"{key} must be {expected}, got ")):
        pipeline.load_pretrain_config(method, "tiny", [f"{key}={value}"])


def test_the_edges_of_the_training_ranges_are_accepted():
    cfg = pipeline.load_pretrain_config("byol", "tiny", ["train.epochs=1", "optim.momentum=0", "optim.warmup_epochs=0",
                                                         "optim.weight_decay=0", "optim.final_lr_fraction=1"])
    assert cfg.train.epochs == 1 and cfg.optim.warmup_epochs == 0 and cfg.optim.final_lr_fraction == 1


BAD_TASK_VALUES = [
    ("linear_imagenet", "epochs", 0, ">= 1"), ("linear_places205", "lr", 0, "> 0"),
    ("linear_inat18", "batch_size", -2, ">= 1"), ("semi_imagenet_1pct", "epochs", -1, ">= 1"),
    ("semi_imagenet_10pct", "batch_size", 0, ">= 1"), ("semi_imagenet_1pct", "backbone_lr", 0, "> 0"),
    ("semi_imagenet_1pct", "head_lr_multiplier", -10, "> 0"), ("coco_maskrcnn", "iterations", 0, ">= 1"),
    ("coco_maskrcnn", "batch_size", 0, ">= 1"), ("coco_maskrcnn", "base_lr", -0.02, "> 0"),
    ("knn", "k", 0, ">= 1"), ("knn", "temperature", 0, "> 0"),
]


@pytest.mark.parametrize("task, key, value, expected", BAD_TASK_VALUES)
def test_a_meaningless_benchmark_schedule_is_refused_when_the_recipe_is_read(task, key, value, expected):
    with pytest.raises(ValueError, match=re.escape(f"params.{key} must be {expected}, got ")):
        pipeline.load_task_config(task, "tiny", [f"params.{key}={value}"])


def test_milestones_beyond_the_epochs_are_refused_when_the_recipe_is_read():
    with pytest.raises(ValueError, match="milestones within 1..epochs"):
        pipeline.load_task_config("linear_imagenet", "tiny", ["params.epochs=2", "params.milestones=[5]"])


def test_run_with_negative_epochs_writes_no_artifact(tmp_path, capsys):
    code = main(["run", "--method", "byol", "--recipe", "tiny", "--workdir", str(tmp_path), "--set", "train.epochs=-1"])
    assert code == 2 and "orl-bench: error: train.epochs must be >= 1, got -1" in capsys.readouterr().err
    assert not (tmp_path / "artifacts").exists()


def test_recipe_inheritance_merges_bases_first(tmp_path):
    (tmp_path / "base.yaml").write_text("optim: {lr: 0.1, momentum: 0.8}\ntrain: {epochs: 3}\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\noptim: {lr: 0.5}\n")
    data = load_yaml_recipe(tmp_path / "child.yaml")
    assert data == {"optim": {"lr": 0.5, "momentum": 0.8}, "train": {"epochs": 3}}
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_yaml_recipe(tmp_path / "loop.yaml")


def test_missing_recipe_lists_the_available_ones():
    with pytest.raises(ConfigError, match=r"available: default, default_5e_epochs16, .*paper, .*tiny"):
        find_recipe("pretrain", "byol", "huge")


def test_hash_ignores_volatile_fields_only():
    cfg = pipeline.load_pretrain_config("byol", "tiny", [])
    same = replace(cfg, train=replace(cfg.train, num_workers=7, log_every_steps=99))
    other = replace(cfg, train=replace(cfg.train, seed=cfg.train.seed + 1))
    assert config_hash(cfg) == config_hash(same)
    assert config_hash(cfg) != config_hash(other)


def test_a_field_added_later_keeps_old_hashes_at_its_default():
    """train.augment came after artifacts existed: left at "loader" it is not hashed, so those
    artifacts keep their keys; set to "device" it is a different config."""
    cfg = pipeline.load_pretrain_config("byol", "tiny", [])
    assert "augment" not in to_dict(cfg, for_hash=True)["train"]
    device = replace(cfg, train=replace(cfg.train, augment="device"))
    assert to_dict(device, for_hash=True)["train"]["augment"] == "device"
    assert config_hash(device) != config_hash(cfg)
    with pytest.raises(ConfigError, match="train.augment must be one of loader, device, got 'gpu'"):
        pipeline.load_pretrain_config("byol", "tiny", ["train.augment=gpu"])


def test_every_shipped_recipe_resolves():
    """Every recipe file of every method and task (ablations included) fits its schema."""
    shipped = 0
    for kind, load in (("pretrain", pipeline.load_pretrain_config), ("benchmarks", pipeline.load_task_config)):
        for path in recipe_root(kind).glob("*/*.yaml"):
            if not path.parent.name.startswith("_"):  # _data, _scales: partial bases
                load(path.parent.name, path.stem, [])
                shipped += 1
    assert shipped >= 3 * 4


def test_recipe_method_must_match_the_requested_method(tmp_path):
    (tmp_path / "r.yaml").write_text("method: {name: random}\n")
    with pytest.raises(ConfigError, match="recipe is for method 'random'"):
        pipeline.load_pretrain_config("byol", str(tmp_path / "r.yaml"), [])
