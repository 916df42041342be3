"""The embedded COCO+ (`data.source: synth_plus`): the generator's unlabeled2017 in real COCO layout,
train2017 the same images as in the COCO setting, the image list train2017 then unlabeled2017, the
recipes of the COCO setting keeping their hashes, and what refuses it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from orl_bench import pipeline
from orl_bench.config import ConfigError, DataConfig, config_hash
from orl_bench.data.coco import CocoDataset
from orl_bench.data.sources import check_pretrain_images, pretrain_images
from orl_bench.data.synth import SynthSpec, ensure_synth
from orl_bench.methods.supervised import multi_hot
from tests.conftest import run_main


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_unlabeled_split_is_images_only_in_the_real_coco_layout(small_spec, synth_root):
    annotations = synth_root / "coco" / "annotations"
    info = json.loads((annotations / "image_info_unlabeled2017.json").read_text())
    assert "annotations" not in info and len(info["images"]) == small_spec.coco_unlabeled == 8
    assert len(info["categories"]) == 20  # declared, as in the real file
    assert not (annotations / "instances_unlabeled2017.json").exists()
    unlabeled = CocoDataset(synth_root / "coco", "unlabeled2017")
    assert all(im.path.is_file() and im.path.parent.name == "unlabeled2017" for im in unlabeled.images)
    assert all(not unlabeled.annotations(i) for i in range(len(unlabeled)))
    # ids follow train2017's and val2017's, unique across the splits as in real COCO
    assert [im.id for im in unlabeled.images] == list(range(48 + 8 + 1, 48 + 8 + 8 + 1))


def test_train2017_is_the_same_images_with_and_without_the_unlabeled_split(tmp_path):
    coco = SynthSpec(seed=5, height=48, width=48, coco_train=12, coco_val=2, voc_trainval=0, voc_test=0)
    plus = coco.coco_plus()
    assert plus.coco_unlabeled == coco.coco_train and plus.digest() != coco.digest()
    roots = [ensure_synth(spec, tmp_path) / "coco" for spec in (coco, plus)]
    assert _files(roots[0] / "train2017") == _files(roots[1] / "train2017")
    assert _files(roots[0] / "val2017") == _files(roots[1] / "val2017")
    coco_json, plus_json = (json.loads((root / "annotations" / "instances_train2017.json").read_text())
                            for root in roots)
    assert coco_json.pop("info") != plus_json.pop("info")  # naming each spec's digest
    assert coco_json == plus_json
    assert len(list((roots[1] / "unlabeled2017").glob("*.jpg"))) == 12
    assert not (roots[0] / "unlabeled2017").exists()


def test_synth_plus_adds_as_many_unlabeled_scenes_as_train_unless_set():
    tiny = pipeline.load_pretrain_config("byol", "tiny", [])
    plus = pipeline.load_pretrain_config("byol", "tiny", ["data.source=synth_plus"])
    assert plus.data.synth.coco_unlabeled == tiny.data.synth.coco_train == 64
    assert plus.data.synth == tiny.data.synth.coco_plus() and config_hash(plus) != config_hash(tiny)
    assert pipeline.load_pretrain_config("byol", "tiny", ["data.source=synth_plus", "data.synth.coco_unlabeled=10"]
                                         ).data.synth.coco_unlabeled == 10
    assert DataConfig(source="synth").synth.coco_unlabeled == 0  # the COCO setting is left alone


def test_the_coco_settings_recipes_keep_their_hashes_and_scenes():
    """Committed artifacts and records are keyed by these: adding COCO+ must not move them."""
    expected = {("byol", "default"): ("4d630aa96e2a", "cf4e19076d3f"),
                ("byol", "tiny"): ("86fb20b9961a", "cf73fdd3f6be"),
                ("orl", "default"): ("261a7290dcd7", "cf4e19076d3f"),
                ("orl", "tiny"): ("6a908b934318", "cf73fdd3f6be")}
    for (method, recipe), (hash_, digest) in expected.items():
        cfg = pipeline.load_pretrain_config(method, recipe, [])
        assert (config_hash(cfg)[:12], cfg.data.synth.digest()) == (hash_, digest)


def test_the_image_list_is_train2017_then_unlabeled2017(workdir):
    coco = pretrain_images(pipeline.load_pretrain_config("byol", "tiny", []).data, workdir)
    plus_cfg = pipeline.load_pretrain_config("byol", "tiny", ["data.source=synth_plus"]).data
    check_pretrain_images(plus_cfg)
    plus = pretrain_images(plus_cfg, workdir)
    assert [s.split for s in plus.coco] == ["train2017", "unlabeled2017"]
    assert plus.paths == [im.path for s in plus.coco for im in s.images] and len(plus.paths) == 128
    assert [p.name for p in plus.paths[:64]] == [p.name for p in coco.paths]
    assert all(p.parent.name == "unlabeled2017" for p in plus.paths[64:])
    assert plus.key == f"synth-{plus_cfg.synth.digest()}-train2017+unlabeled2017" and coco.key.endswith("-train2017")
    with pytest.raises(ConfigError, match=r"supervised pretraining cannot use unlabeled2017 \(COCO\+\)"):
        multi_hot(plus)
    assert multi_hot(coco).shape[0] == 64


def test_an_unknown_pretraining_source_lists_the_embedded_coco_plus():
    with pytest.raises(ValueError, match="expected one of .*'synth_plus'"):
        check_pretrain_images(DataConfig(source="voc2007"))


@pytest.mark.parametrize("args, error", [
    (["pretrain", "--method", "supervised", "--set", "data.source=synth_plus"],
     "supervised pretraining cannot use unlabeled2017 (COCO+): use data.source=coco (synth for the embedded scenes)"),
    (["run", "--method", "byol", "--task", "voc07_svm", "--set", "task.data.source=synth_plus"],
     "benchmark voc07_svm: data.source 'synth_plus' is not a VOC07 source; expected one of ('synth', 'voc2007')")])
def test_what_cannot_use_the_embedded_coco_plus_says_so_in_one_line_before_training(capsys, workdir, args, error):
    from orl_bench.cli import main
    assert main([*args, "--recipe", "tiny", "--workdir", str(workdir)]) == 2
    assert capsys.readouterr().err == f"orl-bench: error: {error}\n"
    assert not list(workdir.glob("artifacts/*/manifest.json"))  # nothing trained


def test_byol_pretrains_on_the_embedded_coco_plus(capsys, workdir):
    said = run_main(capsys, "pretrain", "--method", "byol", "--recipe", "tiny", "--set", "data.source=synth_plus",
                    "--set", "train.epochs=1", "--set", "train.batch_size=32", "--workdir", str(workdir))
    folder = next((workdir / "artifacts").glob("byol-*"))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["data"]["source"] == "synth_plus" and manifest["data"]["images"] == 128
    assert manifest["data"]["key"].endswith("-train2017+unlabeled2017") and manifest["steps"] == 128 // 32
    assert str(folder) in said
    assert np.isfinite([json.loads(line)["loss"] for line in (folder / "log.jsonl").read_text().splitlines()]).all()
