"""Bad input gets a clear error naming what was wrong and what was expected, and leaves no
half-written artifact or record behind."""
import builtins
import io
import json
import shutil

import pytest

import torch
import torchvision

from orl_bench import pipeline
from orl_bench.cli import main
from orl_bench.engine.checkpoint import read_run_info
from orl_bench.engine.distributed import DistInfo
from orl_bench.engine.threads import training_threads
from orl_bench.results.records import records_path
from tests.conftest import run_cli

CPU = DistInfo(0, 1, 0, torch.device("cpu"))


def cli(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def no_partial_files(workdir):
    leftovers = [p for p in workdir.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.name]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def test_missing_voc_path_names_the_expected_layout(capsys, workdir):
    code, _, err = cli(capsys, "run", "--method", "random", "--task", "voc07_svm", "--recipe", "tiny",
                       "--workdir", str(workdir), "--set", "task.data.source=voc2007",
                       "--set", f"task.data.root={workdir / 'nowhere'}")
    assert code == 2
    assert "VOCdevkit" in err and "JPEGImages" in err and "Annotations" in err
    assert not records_path(workdir).exists()
    no_partial_files(workdir)


def test_missing_coco_location_names_the_setting_and_variable(capsys, workdir, monkeypatch):
    monkeypatch.delenv("ORL_BENCH_COCO", raising=False)
    code, _, err = cli(capsys, "pretrain", "--method", "byol", "--recipe", "tiny", "--workdir", str(workdir),
                       "--set", "data.source=coco")
    assert code == 2 and "data.root" in err and "ORL_BENCH_COCO" in err
    code, _, err = cli(capsys, "pretrain", "--method", "byol", "--recipe", "tiny", "--workdir", str(workdir),
                       "--set", "data.source=coco", "--set", f"data.root={workdir}")
    assert code == 2 and "train2017" in err and "instances_train2017.json" in err


def test_unknown_method_and_task_list_the_valid_names(capsys, workdir):
    code, _, err = cli(capsys, "run", "--method", "byoll", "--task", "voc07_svm", "--recipe", "tiny",
                       "--workdir", str(workdir))
    assert code == 2 and "unknown method 'byoll'" in err and "byol" in err
    code, _, err = cli(capsys, "run", "--method", "byol", "--task", "voc_svm", "--recipe", "tiny",
                       "--workdir", str(workdir))
    assert code == 2 and "voc07_svm" in err


def test_records_out_naming_a_directory_fails_before_any_work(capsys, workdir):
    code, _, err = cli(capsys, "run", "--method", "byol", "--recipe", "tiny", "--workdir", str(workdir),
                       "--records-out", str(workdir))
    assert code != 0 and "--records-out" in err and "is a directory; expected a file path" in err
    assert not (workdir / "artifacts").exists() and not records_path(workdir).exists()


def test_unknown_config_key_names_the_closest(capsys, workdir):
    code, _, err = cli(capsys, "pretrain", "--method", "byol", "--recipe", "tiny", "--workdir", str(workdir),
                       "--set", "optim.lrr=1")
    assert code == 2 and "did you mean 'lr'" in err


def test_checkpoint_with_wrong_keys_is_a_strict_error_listing_them(capsys, workdir, tmp_path):
    state = torchvision.models.resnet18().state_dict()
    state["layer9.weight"] = state.pop("layer4.1.conv2.weight")
    torch.save(state, tmp_path / "bad.pth")
    code, _, err = cli(capsys, "run", "--task", "voc07_svm", "--recipe", "tiny", "--workdir", str(workdir),
                       "--checkpoint", str(tmp_path / "bad.pth"), "--arch", "resnet18")
    assert code == 2
    assert "missing keys (1): layer4.1.conv2.weight" in err and "unexpected keys (1): layer9.weight" in err
    assert not records_path(workdir).exists()


def test_torchvision_checkpoint_with_classifier_is_accepted(capsys, workdir, tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "tv.pth")
    code, out, err = cli(capsys, "run", "--task", "voc07_svm", "--recipe", "tiny", "--workdir", str(workdir),
                         "--checkpoint", str(tmp_path / "tv.pth"), "--arch", "resnet18", "--label", "supervised")
    assert code == 0, err
    records = [json.loads(line) for line in records_path(workdir).read_text().splitlines()]
    records = [r for r in records if r["method"] != "chance"]  # the task's chance row belongs to no backbone
    assert {r["method"] for r in records} == {"supervised"} and all(r["recipe"] == "external" for r in records)


def test_corrupt_images_are_skipped_counted_logged_and_recorded(tmp_path, tiny_data):
    home = tmp_path / "home"
    shutil.copytree(tiny_data, home / "data")
    synth = next((home / "data").glob("synth-*"))
    (sorted((synth / "coco" / "train2017").glob("*.jpg"))[3]).write_bytes(b"\xff\xd8 not a jpeg")
    (sorted((synth / "VOCdevkit" / "VOC2007" / "JPEGImages").glob("*.jpg"))[0]).write_bytes(b"")
    cfg = pipeline.load_pretrain_config("byol", "tiny", ["train.epochs=1"])
    folder, _ = pipeline.ensure_pretrained(cfg, "tiny", home, CPU)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["unreadable_images"] == 1
    run = read_run_info(folder)  # how it ran: the sidecar
    assert run["loader_workers"] == 0 and run["torch_threads"] == training_threads(CPU.device, 0)  # no workers: all cores
    events = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert [e["count"] for e in events if e.get("event") == "unreadable_images"] == [1]
    records, _ = pipeline.evaluate(pipeline.load_task_config("voc07_svm", "tiny", []), pipeline.artifact_ref(folder),
                                home, torch.device("cpu"), {"config_hash": "x"})
    records = [r for r in records if r["method"] != "chance"]  # the chance row counts no images of its own
    assert all(r["unreadable_images"] == 1 for r in records)
    assert all(r["images"]["trainval"] + r["images"]["test"] == 159 for r in records)


def test_failed_pretraining_leaves_no_artifact(capsys, workdir):
    code, _, err = cli(capsys, "pretrain", "--method", "byol", "--recipe", "tiny", "--workdir", str(workdir),
                       "--set", "train.batch_size=4096")
    assert code == 2 and "cannot fill one global batch" in err
    assert not list((workdir / "artifacts").rglob("manifest.json"))
    assert not list((workdir / "artifacts").rglob("backbone.safetensors"))
    no_partial_files(workdir)


def test_sync_bn_on_a_distributed_cpu_run_is_a_clear_error():
    from orl_bench.engine.trainer import build_method
    cfg = pipeline.load_pretrain_config("byol", "tiny", ["train.sync_bn=true"])
    with pytest.raises(ValueError, match="train.sync_bn=false"):
        build_method(cfg, DistInfo(0, 2, 0, torch.device("cpu")))


@pytest.fixture
def wrong_inputs(tmp_path, workdir, monkeypatch):
    """Files of the wrong kind for every path argument, plus one the process may not read."""
    text = tmp_path / "notes.md"
    text.write_text("# not a checkpoint, recipe or artifact\n")
    state = tmp_path / "weights.pth"
    torch.save(torchvision.models.resnet18().state_dict(), state)
    binary_yaml = tmp_path / "weights.yaml"  # a checkpoint under a recipe's name
    binary_yaml.write_bytes(state.read_bytes())
    folder = tmp_path / "a_folder.yaml"
    folder.mkdir()
    records = tmp_path / "records.jsonl"
    records.write_text(json.dumps({"task": "voc07_svm", "metric": "mAP", "value": 1.0, "method": "byol",
                                   "artifact_sha256": "s", "recipe": "tiny", "dataset": "d", "config_hash": "c",
                                   "git_revision": "g", "device": "cpu", "wall_time_s": 0, "timestamp": "t"}) + "\n")
    unreadable = tmp_path / "locked.pth"
    shutil.copy(state, unreadable)
    real_open = io.open

    def guarded_open(file, *args, **kwargs):  # as chmod 000 would, which root ignores
        if str(file) == str(unreadable):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(io, "open", guarded_open)
    monkeypatch.setattr(builtins, "open", guarded_open)
    return {"text": text, "state": state, "binary_yaml": binary_yaml, "folder": folder, "records": records,
            "unreadable": unreadable, "workdir": workdir}


# (command line with {placeholders} from wrong_inputs, what the one-line error must say)
WRONG_INPUT_CASES = {
    "text file as checkpoint": ("eval --task voc07_svm --checkpoint {text} --arch resnet18",
                                "is not a PyTorch checkpoint"),
    "folder as checkpoint": ("run --task voc07_svm --checkpoint {folder} --arch resnet18", "is a directory"),
    "unreadable checkpoint": ("eval --task voc07_svm --checkpoint {unreadable} --arch resnet18",
                              "Permission denied"),
    "file as artifact": ("eval --task voc07_svm --artifact {text}", "is not a folder"),
    "empty folder as artifact": ("eval --task voc07_svm --artifact {folder}", "not a complete artifact"),
    "checkpoint as recipe": ("run --method byol --recipe {state}", "is not a YAML recipe"),
    "checkpoint named .yaml as recipe": ("pretrain --method byol --recipe {binary_yaml}",
                                         "is not a YAML text file"),
    "folder as recipe": ("pretrain --method byol --recipe {folder}", "is a directory"),
    "checkpoint as task recipe": ("run --method random --recipe tiny --task-recipe {binary_yaml}",
                                  "is not a YAML text file"),
    "checkpoint as data recipe": ("data synth --recipe {binary_yaml}", "is not a YAML text file"),
    "folder as viz recipe": ("viz pairs --recipe {folder}", "is a directory"),
    "folder as records": ("report --records {folder}", "is a directory"),
    "checkpoint as records": ("report --records {state}", "is not a JSON-lines record file"),
    "unknown task in records": ("report --task nope --records {records}", "they hold tasks: voc07_svm"),
    "file as export artifact": ("export {text} --out {folder}/x.pth", "is not a folder"),
    "file as diagnose artifact": ("diagnose --artifact {text}", "is not a folder"),
    "file as work directory": ("pretrain --method byol --recipe tiny --workdir {text}", "is a file"),
}


@pytest.mark.parametrize("case", WRONG_INPUT_CASES)
def test_wrong_kind_of_input_is_one_clear_line_and_exit_2(case, wrong_inputs, capsys):
    template, expected = WRONG_INPUT_CASES[case]
    argv = [part.format(**wrong_inputs) for part in template.split()]
    if "--workdir" not in argv and argv[0] not in ("export",):
        argv += ["--workdir", str(wrong_inputs["workdir"])]
    code, _, err = cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("orl-bench: error: "), err
    assert expected in lines[0]


def test_the_installed_command_answers_a_text_checkpoint_without_a_traceback(tmp_path):
    done = run_cli("eval", "--task", "voc07_svm", "--checkpoint", "README.md", "--arch", "resnet18",
                   "--workdir", str(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("orl-bench: error: README.md is not a PyTorch checkpoint")
