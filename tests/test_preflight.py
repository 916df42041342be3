"""Bad input is refused before the work: `run` and `table` check every recipe they will run (a
multi-stage method's earlier stages included), the real data it reads and the folders they write
before the first step, so nothing is generated or pretrained for a command that cannot finish."""
import os

import pytest

from orl_bench import pipeline, preflight
from orl_bench.cli import main


def cli(capsys, *args):
    code = main(list(args))
    return code, capsys.readouterr().err


def test_run_refuses_a_missing_task_data_root_before_pretraining(capsys, tmp_path):
    home, missing = tmp_path / "home", tmp_path / "nowhere"
    code, err = cli(capsys, "run", "--method", "simclr", "--task", "voc07_svm", "--recipe", "tiny",
                    "--workdir", str(home), "--set", "task.data.source=voc2007", "--set", f"task.data.root={missing}")
    assert code == 2
    assert err.startswith(f"orl-bench: error: benchmark voc07_svm: VOC2007 dataset not found under {missing}")
    assert "JPEGImages" in err  # the layout expected
    assert not home.exists()  # nothing generated, nothing pretrained


def test_run_checks_the_recipe_of_orl_stage_1_before_any_stage(capsys, tmp_path):
    stage1 = tmp_path / "stage1.yaml"
    stage1.write_text("base: orl_bench:pretrain/byol/tiny.yaml\ntrain: {epochs: 0}\n")
    home = tmp_path / "home"
    code, err = cli(capsys, "run", "--method", "orl", "--task", "voc07_svm", "--recipe", "tiny",
                    "--workdir", str(home), "--set", f"method.stage1={stage1}")
    assert code == 2 and f"orl's earlier stage byol [{stage1}]: train.epochs must be >= 1, got 0" in err
    assert not home.exists()


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_table_refuses_a_missing_data_path_before_building(capsys, tmp_path, dry_run):
    home, missing = tmp_path / "home", tmp_path / "nowhere"
    code, err = cli(capsys, "table", "2", "--recipe", "tiny", "--workdir", str(home), "--data", f"voc07={missing}",
                    "--out", str(tmp_path / "tables"), "--figures", str(tmp_path / "figures"), *dry_run)
    assert code == 2
    assert err.startswith(f"orl-bench: error: benchmark voc07_lowshot: VOC2007 dataset not found under {missing}")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no work directory, table or figure


def test_table_refuses_an_output_folder_it_cannot_create_before_building(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, err = cli(capsys, "table", "2", "--recipe", "tiny", "--workdir", str(tmp_path / "home"),
                    "--out", str(blocker / "tables"), "--figures", str(tmp_path / "figures"))
    assert code == 2 and f"--out {blocker / 'tables'} cannot be created: {blocker} is a file" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_run_refuses_a_work_directory_under_a_file_first(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, err = cli(capsys, "run", "--method", "byol", "--task", "voc07_svm", "--recipe", "tiny",
                    "--workdir", str(blocker / "home"))
    assert code == 2
    assert err == f"orl-bench: error: work directory {blocker / 'home'} cannot be created: {blocker} is a file; " \
                  "expected a writable folder\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder regardless of its mode")
def test_run_refuses_a_read_only_work_directory_first(capsys, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o555)
    try:
        code, err = cli(capsys, "run", "--method", "byol", "--task", "voc07_svm", "--recipe", "tiny",
                        "--workdir", str(home))
    finally:
        home.chmod(0o755)
    assert code == 2 and f"work directory {home} is not writable" in err
    assert not any(home.iterdir())


def test_the_embedded_coco_plus_passes_every_stage_without_generating_anything(tmp_path):
    overrides = ["data.source=synth_plus"]
    cfg = pipeline.load_pretrain_config("orl", "tiny", overrides)
    preflight.check(tmp_path / "home", [(cfg, overrides)])  # ORL's stage 1 reads the same COCO+
    assert [stage.data.source for stage in preflight.stage_configs(cfg, overrides)] == ["synth_plus", "synth_plus"]
    assert not (tmp_path / "home").exists()
