"""The supervised ceiling: labels straight from the instances JSON, and multi-label BCE."""
import json
import math

import numpy as np
import pytest
import torch

from orl_bench import pipeline
from orl_bench.data.pretrain_dataset import ViewsDataset
from orl_bench.data.sources import pretrain_images
from orl_bench.methods.base import Progress
from orl_bench.methods.supervised import LabelledViews, Supervised, multi_hot


def test_label_matrix_lists_each_images_categories(workdir):
    images = pretrain_images(pipeline.load_pretrain_config("supervised", "tiny", []).data, workdir)
    labels = multi_hot(images)
    ann = json.loads(images.coco[0].ann_file.read_text())
    ids = sorted(c["id"] for c in ann["categories"])
    expected = np.zeros((len(ann["images"]), len(ids)), np.uint8)
    row = {im["id"]: i for i, im in enumerate(ann["images"])}
    for a in ann["annotations"]:
        expected[row[a["image_id"]], ids.index(a["category_id"])] = 1
    assert labels.shape == expected.shape and np.array_equal(labels, expected)
    assert labels.sum(1).min() >= 1  # every embedded scene holds an object


def test_loss_is_multilabel_binary_cross_entropy(tmp_path):
    path = tmp_path / "labels.npy"
    np.save(path, np.zeros((4, 3), np.uint8))
    method = Supervised(pipeline.load_pretrain_config("supervised", "tiny", []), {"labels": path})
    method.eval()  # fixed BN statistics: the same logits in both computations
    g = torch.Generator().manual_seed(0)
    images, targets = torch.randn(4, 3, 32, 32, generator=g), torch.tensor([[1., 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1]])
    loss = method.training_step((images, targets), Progress(0, 1, 0))["loss"].item()
    logits = method.classifier(method.backbone(images)).tolist()
    expected = -sum(t * math.log(1 / (1 + math.exp(-z))) + (1 - t) * math.log(1 - 1 / (1 + math.exp(-z)))
                    for zs, ts in zip(logits, targets.tolist()) for z, t in zip(zs, ts)) / 12
    assert loss == pytest.approx(expected, rel=1e-5)


def test_labels_of_another_image_list_are_refused(tmp_path):
    views = ViewsDataset([tmp_path / f"{i}.jpg" for i in range(5)], lambda im: im, seed=0)
    with pytest.raises(ValueError, match="4 label rows for 5 images"):
        LabelledViews(views, np.zeros((4, 3), np.uint8))


def _class_folders(root, per_class):
    from PIL import Image
    for name, count in per_class.items():
        (root / "train" / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (40, 36), (40 * i, 80, 120)).save(root / "train" / name / f"{name}_{i}.JPEG")


def test_class_folders_train_with_cross_entropy_on_their_class_indices(tmp_path, capsys):
    from orl_bench.engine.checkpoint import load_backbone
    from tests.conftest import run_main
    _class_folders(tmp_path / "imagenet", {"n02": 10, "n01": 10})
    images = pretrain_images(pipeline.load_pretrain_config(
        "supervised", "tiny", ["data.source=imagenet", f"data.root={tmp_path / 'imagenet'}"]).data, tmp_path)
    assert images.paths[0].parent.name == "n01" and images.class_index.tolist() == [0] * 10 + [1] * 10
    run_main(capsys, "pretrain", "--method", "supervised", "--recipe", "tiny", "--set", "data.source=imagenet",
             "--set", f"data.root={tmp_path / 'imagenet'}", "--workdir", str(tmp_path / "home"))
    folder = next((tmp_path / "home" / "artifacts").glob("supervised-*"))
    assert np.load(next((tmp_path / "home" / "artifacts").glob("labels-*/labels.npy"))).tolist() == [0] * 10 + [1] * 10
    load_backbone(folder)  # strict
    method = Supervised(pipeline.load_pretrain_config("supervised", "tiny", []),
                        {"labels": next((tmp_path / "home" / "artifacts").glob("labels-*/labels.npy"))})
    method.eval()
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([1, 0, 1])
    expected = torch.nn.functional.cross_entropy(method.classifier(method.backbone(x)), y).item()
    assert method.classifier.out_features == 2
    assert method.training_step((x, y), Progress(0, 1, 0))["loss"].item() == pytest.approx(expected, rel=1e-6)


def test_missing_class_folders_name_the_expected_layout(tmp_path):
    from orl_bench.data.images import DatasetLayoutError
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetLayoutError, match="(?s)holds no class folders.*n01440764"):
        pretrain_images(pipeline.load_pretrain_config(
            "supervised", "tiny", ["data.source=imagenet", f"data.root={tmp_path}"]).data, tmp_path)


def test_labels_file_follows_the_dataset_it_is_built_from(workdir):
    from orl_bench.data.sources import ImageList
    from orl_bench.engine.distributed import DistInfo
    from orl_bench.methods.base import StageContext
    cfg = pipeline.load_pretrain_config("supervised", "tiny", [])
    ctx = lambda classes: StageContext(workdir, ImageList([], "same-key", [], np.array(classes)),  # noqa: E731
                                       DistInfo(0, 1, 0, torch.device("cpu")), None, None)
    path = Supervised.build_inputs(cfg, ctx([0, 1, 1]))[0]["labels"]
    assert np.load(path).tolist() == [0, 1, 1]
    assert np.load(Supervised.build_inputs(cfg, ctx([1, 0, 1]))[0]["labels"]).tolist() == [1, 0, 1]
