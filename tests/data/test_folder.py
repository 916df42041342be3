"""`data.source=folder`: pretraining on any folder of images, its listing, its key and its errors."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from orl_bench import pipeline
from orl_bench.data.images import DatasetLayoutError
from orl_bench.data.sources import pretrain_images
from orl_bench.engine.distributed import DistInfo

CPU = DistInfo(0, 1, 0, torch.device("cpu"))


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)  # format from the suffix


def _scenes(root: Path) -> list[str]:
    """15 images in nested folders, JPEG and PNG (upper-case suffixes too), one corrupt image and
    a text file; returns the images' relative paths in the expected order."""
    names = [f"a/{i}.jpg" for i in range(5)] + [f"a/b/{i}.PNG" for i in range(5)] + [f"c{i}.png" for i in range(5)]
    for seed, name in enumerate(names):
        _image(root / name, seed)
    (root / "a" / "b" / "broken.jpeg").write_bytes(b"not an image")
    (root / "notes.txt").write_text("not an image either")
    return sorted(names + ["a/b/broken.jpeg"])


def _config(root: Path, *overrides: str):
    return pipeline.load_pretrain_config("byol", "tiny", ["data.source=folder", f"data.root={root}", "train.epochs=1",
                                                          "train.batch_size=8", *overrides])


def test_pretrains_on_nested_mixed_images_and_a_changed_folder_is_a_new_artifact(tmp_path):
    root, home = tmp_path / "photos", tmp_path / "home"
    expected = _scenes(root)
    cfg = _config(root)
    images = pretrain_images(cfg.data, home)
    assert [p.relative_to(root).as_posix() for p in images.paths] == expected
    assert images.coco == [] and images.class_index is None

    folder, timings = pipeline.ensure_pretrained(cfg, "tiny", home, CPU)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["data"] == {"source": "folder", "key": images.key, "images": 16}
    assert manifest["steps"] == 2 and manifest["unreadable_images"] == 1  # every image seen once
    assert pipeline.ensure_pretrained(cfg, "tiny", home, CPU) == (folder, {"pretrain_s": 0.0, "pretrain_reused": True})

    _image(root / "a" / "new.jpg", 99)  # data.root is not hashed: the contents key the artifact
    grown, timings = pipeline.ensure_pretrained(cfg, "tiny", home, CPU)
    assert grown != folder and timings["pretrain_reused"] is False
    # records of the two image sets are two setups, not two seeds of one
    assert pipeline.record_fields(cfg, grown)["setup_hash"] != pipeline.record_fields(cfg, folder)["setup_hash"]


def test_key_follows_the_contents_not_the_listing_call(tmp_path):
    root = tmp_path / "photos"
    _scenes(root)
    data = _config(root).data
    key = pretrain_images(data, tmp_path).key
    assert key.startswith("folder-") and pretrain_images(data, tmp_path).key == key
    _image(root / "z" / "added.png", 7)
    added = pretrain_images(data, tmp_path).key
    assert added != key
    Image.new("RGB", (8, 8)).save(root / "z" / "added.png")  # the same name, other contents
    assert pretrain_images(data, tmp_path).key not in (key, added)


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist or is not a folder"),
    ("empty", r"no images \(.jpg, .jpeg, .png.*\) under"),
    ("unreadable", "none of the 2 images under .* can be read"),
])
def test_unusable_folders_are_errors_naming_the_folder(tmp_path, case, message):
    root = tmp_path / "photos"
    if case != "missing":
        root.mkdir()
        (root / "readme.txt").write_text("no images here")
    if case == "unreadable":
        (root / "x.jpg").write_bytes(b"")
        (root / "sub").mkdir()
        (root / "sub" / "y.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(DatasetLayoutError, match=f"data.source=folder: .*{message}") as error:
        pretrain_images(_config(root).data, tmp_path)
    assert str(root) in str(error.value)


def test_folder_without_a_root_says_how_to_give_one(tmp_path):
    cfg = pipeline.load_pretrain_config("byol", "tiny", ["data.source=folder"])
    with pytest.raises(DatasetLayoutError, match=r"data.source=folder needs a location: set data.root \(--set"):
        pretrain_images(cfg.data, tmp_path)
