"""VOC2007 loader on hand-written fixtures (independent of the generator)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orl_bench.data.images import DatasetLayoutError
from orl_bench.data.voc import VOC2007


def _xml(*objects: tuple[str, int]) -> str:
    body = "".join(f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                   f"<difficult>{difficult}</difficult><bndbox><xmin>2</xmin><ymin>3</ymin>"
                   f"<xmax>20</xmax><ymax>30</ymax></bndbox></object>" for name, difficult in objects)
    return f"<annotation><filename>x.jpg</filename>{body}</annotation>"


# id -> objects; "000003" has a dog only as difficult, "000002" a cat both difficult and not
ANNOTATIONS = {
    "000005": [("dog", 0), ("person", 0)],
    "000002": [("cat", 1), ("cat", 0)],
    "000003": [("dog", 1), ("cat", 0)],
    "000009": [],
}


def _voc(tmp_path: Path, per_class_files: bool = True) -> Path:
    voc = tmp_path / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    for image_id, objects in ANNOTATIONS.items():
        (voc / "Annotations" / f"{image_id}.xml").write_text(_xml(*objects))
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("000005\n000002\n000009\n000003\n")
    (voc / "ImageSets" / "Main" / "test.txt").write_text("000009\n")
    if per_class_files:  # the class list, including one class that never occurs in trainval
        for cls in ("person", "cat", "dog", "bird"):
            for split in ("trainval", "test"):
                (voc / "ImageSets" / "Main" / f"{cls}_{split}.txt").write_text("000009 -1\n")
    return tmp_path


def test_labels_classes_and_sorted_ids(tmp_path):
    voc = VOC2007(_voc(tmp_path), "trainval")
    assert voc.ids == ["000002", "000003", "000005", "000009"]
    assert voc.paths[0] == tmp_path / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000002.jpg"
    assert voc.classes == ["bird", "cat", "dog", "person"]
    expected = [[0, 1, 0, 0],    # cat difficult + cat normal -> present
                [0, 1, -1, 0],   # dog only difficult -> ignore (-1)
                [0, 0, 1, 1],
                [0, 0, 0, 0]]
    assert voc.labels.dtype == np.int8 and voc.labels.tolist() == expected
    assert voc.objects[1][0].difficult and voc.objects[1][0].box == (2, 3, 20, 30)


def test_class_list_falls_back_to_xml_names(tmp_path):
    voc = VOC2007(_voc(tmp_path, per_class_files=False), "trainval")
    assert voc.classes == ["cat", "dog", "person"]


@pytest.mark.parametrize("form", ["", "VOCdevkit", "VOCdevkit/VOC2007"])
def test_accepts_each_root_form(tmp_path, form):
    root = _voc(tmp_path)
    assert len(VOC2007(root / form, "test")) == 1


def test_missing_parts_name_the_layout(tmp_path):
    with pytest.raises(DatasetLayoutError, match="expected VOC2007 layout") as err:
        VOC2007(tmp_path / "nowhere", "trainval")
    assert "nowhere" in str(err.value) and isinstance(err.value, FileNotFoundError)
    root = _voc(tmp_path)
    with pytest.raises(DatasetLayoutError, match=r"Main/val.txt does not exist(.|\n)*JPEGImages/<id>.jpg"):
        VOC2007(root, "val")
    (root / "VOCdevkit" / "VOC2007" / "Annotations" / "000003.xml").unlink()
    with pytest.raises(DatasetLayoutError, match="000003.xml is missing"):
        VOC2007(root, "trainval")
    with pytest.raises(ValueError, match="split"):
        VOC2007(root, "training")


@pytest.mark.parametrize("content", ["<annotation><object>", "<annotation><object><name>dog</name>"
                                     "<bndbox><xmin>a</xmin></bndbox></object></annotation>"])
def test_malformed_xml_names_the_file(tmp_path, content):
    root = _voc(tmp_path)
    (root / "VOCdevkit" / "VOC2007" / "Annotations" / "000005.xml").write_text(content)
    with pytest.raises(DatasetLayoutError, match="000005.xml is malformed"):
        VOC2007(root, "trainval")


def test_unknown_class_in_xml(tmp_path):
    root = _voc(tmp_path)
    (root / "VOCdevkit" / "VOC2007" / "Annotations" / "000009.xml").write_text(_xml(("horse", 0)))
    with pytest.raises(DatasetLayoutError, match="'horse'"):
        VOC2007(root, "trainval")
