"""Image classification sets for the linear, kNN and semi-supervised benchmarks: ImageNet (with
SimCLR's 1% / 10% subsets), Places205 and iNaturalist 2018, read from their real on-disk formats.

`classification_split` reads real data at data.root (or the dataset's environment variable), or,
with data.source=synth, the embedded set of the same name (synth_classify.py), which is written in
the real format and read by the same loader. Loaders check what they list: a missing file or folder,
a malformed line or entry, a label that contradicts its folder, or a listed image that is absent
raises DatasetLayoutError with the expected layout.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from orl_bench.config import DataConfig
from orl_bench.data.class_folders import ClassFolders, class_names
from orl_bench.data.images import DatasetLayoutError
from orl_bench.data.sources import ENV_VARS, real_root
from orl_bench.data.classify_sets import SUBSET_FRACTIONS
from orl_bench.data.synth_classify import SPLITS, EmbeddedClassSpec, ensure_embedded

__all__ = ["CLASSIFICATION_DATASETS", "IMAGENET_SUBSETS", "EmbeddedClassSpec", "ClassificationSplit",
           "check_classification_split", "classification_split", "load_imagenet", "load_places205", "load_inat18"]

CLASSIFICATION_DATASETS = ("imagenet", "places205", "inat18")
IMAGENET_SUBSETS = tuple(SUBSET_FRACTIONS)  # SimCLR's subset file names: "1percent", "10percent"
_SHOWN = 3  # offending names / lines quoted in an error
_PLACES_IMAGES = ("images256", "data/vision/torralba/deeplearning/images256")  # the archive unpacks to the latter
_PLACES_LINE = re.compile(r"(\S+)\s+([0-9]+)")


@dataclass(frozen=True)
class ClassificationSplit:
    paths: list[Path]  # image files, a fixed order
    targets: np.ndarray  # int64 class index per image, 0..len(classes)-1
    classes: list[str]
    key: str  # names the split in feature caches and records


def _some(items: list) -> str:
    return ", ".join(str(x) for x in items[:_SHOWN]) + (", ..." if len(items) > _SHOWN else "")


def _absent(paths: list[Path]) -> list[Path]:
    """The paths that are not files, from one listing per folder: a stat per image would be slow
    on millions of images."""
    listed: dict[Path, set[str]] = {}
    absent = []
    for p in paths:
        if p.parent not in listed:
            try:
                listed[p.parent] = {e.name for e in os.scandir(p.parent) if e.is_file()}
            except (FileNotFoundError, NotADirectoryError):
                listed[p.parent] = set()
        if p.name not in listed[p.parent]:
            absent.append(p)
    return absent


# --- ImageNet ---

def _imagenet_layout(root: Path) -> str:
    return (f"expected ImageNet:\n  {root}/\n    train/n01440764/n01440764_10026.JPEG ...   <- one folder per class\n"
            f"    val/n01440764/ILSVRC2012_val_00000293.JPEG ...\n"
            f"    imagenet_subsets/1percent.txt, 10percent.txt   <- SimCLR's subsets: one train file name a line, "
            f"its class the prefix before the last '_' (n01440764_10026.JPEG)")


def _subset_file(root: Path, subset: str) -> Path:
    file = root / "imagenet_subsets" / f"{subset}.txt"
    if not file.is_file():
        raise DatasetLayoutError(f"ImageNet subset {subset}: {file} does not exist; {_imagenet_layout(root)}")
    return file


def _subset_rows(root: Path, folders: ClassFolders, subset: str) -> np.ndarray:
    """Indices into the train split of the images a subset file names, in train order."""
    file = _subset_file(root, subset)
    names = [line.strip() for line in file.read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetLayoutError(f"ImageNet subset {subset}: {file} is empty; {_imagenet_layout(root)}")
    where = {f"{folders.classes[t]}/{p.name}": i for i, (p, t) in enumerate(zip(folders.paths, folders.targets))}
    rows = [where.get(f"{name.rpartition('_')[0]}/{name}") for name in names]
    unknown = [name for name, row in zip(names, rows) if row is None]
    if unknown:
        raise DatasetLayoutError(f"ImageNet subset {subset}: {len(unknown)} of the {len(names)} names in {file} "
                                 f"are not train images: {_some(unknown)}; {_imagenet_layout(root)}")
    return np.unique(np.array(rows, np.int64))


def load_imagenet(root: Path, split: str, subset: str | None = None) -> ClassificationSplit:
    """Class folders `<root>/<split>/<wnid>/...`, classes in sorted folder order; `subset` (train
    only) keeps the images `<root>/imagenet_subsets/<subset>.txt` names."""
    root = Path(root)
    folders = ClassFolders(root, split)
    paths, targets, key = folders.paths, folders.targets, f"imagenet-{split}"
    if subset is not None:
        rows = _subset_rows(root, folders, subset)
        paths, targets, key = [paths[i] for i in rows], targets[rows], f"{key}-{subset}"
    return ClassificationSplit(paths, targets, folders.classes, key)


# --- Places205 ---

def _places_layout(root: Path) -> str:
    return (f"expected Places205:\n  {root}/\n"
            f"    trainvalsplit_places205/train_places205.csv, val_places205.csv   <- lines '<relpath> <label>', "
            f"e.g. a/abbey/gsun_0003586c3eedd97457b2d729ebfe18b5.jpg 0\n"
            f"    images256/a/abbey/gsun_0003586c3eedd97457b2d729ebfe18b5.jpg ...   <- the images, by relpath "
            f"(or data/vision/torralba/deeplearning/images256/, as the archive unpacks)")


def _places_files(root: Path, split: str) -> tuple[Path, Path]:
    """The split's list and the image folder."""
    csv = root / "trainvalsplit_places205" / f"{split}_places205.csv"
    if not csv.is_file():
        raise DatasetLayoutError(f"Places205 {split}: {csv} does not exist; {_places_layout(root)}")
    images = next((root / d for d in _PLACES_IMAGES if (root / d).is_dir()), None)
    if images is None:
        raise DatasetLayoutError(f"Places205: no image folder {root / _PLACES_IMAGES[0]} "
                                 f"(nor {root / _PLACES_IMAGES[1]}); {_places_layout(root)}")
    return csv, images


def load_places205(root: Path, split: str) -> ClassificationSplit:
    """`<root>/trainvalsplit_places205/<split>_places205.csv`; a class's name is its folder in the
    relpath (`abbey`, `field/wild`), its index the label column, which must agree on every line and
    run 0..C-1."""
    root = Path(root)
    csv, images = _places_files(root, split)
    relpaths, labels = [], []
    name_of: dict[int, tuple[str, int]] = {}  # label -> (class, first line giving it)
    label_of: dict[str, tuple[int, int]] = {}  # class -> (label, first line giving it)
    for n, line in enumerate(csv.read_text().splitlines(), 1):
        if not line.strip():
            continue
        match = _PLACES_LINE.fullmatch(line.strip())
        parts = match.group(1).split("/") if match else []
        if len(parts) < 3:
            raise DatasetLayoutError(f"Places205 {csv}, line {n}: {line!r} is not '<letter>/<class>/<image> <label>'; "
                                     f"{_places_layout(root)}")
        cls, label = "/".join(parts[1:-1]), int(match.group(2))
        named, first = name_of.setdefault(label, (cls, n))
        if named != cls:
            raise DatasetLayoutError(f"Places205 {csv}, line {n}: label {label} given to class {cls!r}, but line "
                                     f"{first} gave it to {named!r}; {_places_layout(root)}")
        other, first = label_of.setdefault(cls, (label, n))
        if other != label:
            raise DatasetLayoutError(f"Places205 {csv}, line {n}: class {cls!r} given label {label}, but line {first} "
                                     f"gave it {other}; {_places_layout(root)}")
        relpaths.append(match.group(1))
        labels.append(label)
    if not labels:
        raise DatasetLayoutError(f"Places205 {csv} lists no images; {_places_layout(root)}")
    gaps = sorted(set(range(max(labels) + 1)) - name_of.keys())
    if gaps:
        raise DatasetLayoutError(f"Places205 {csv}: labels must run 0..C-1, but {len(gaps)} are unused: {_some(gaps)}; "
                                 f"{_places_layout(root)}")
    paths = [images / r for r in relpaths]
    absent = _absent(paths)
    if absent:
        raise DatasetLayoutError(f"Places205 {csv}: {len(absent)} of the {len(paths)} listed images are missing: "
                                 f"{_some(absent)}; {_places_layout(root)}")
    classes = [name_of[k][0] for k in range(len(name_of))]
    return ClassificationSplit(paths, np.array(labels, np.int64), classes, f"places205-{split}")


# --- iNaturalist 2018 ---

def _inat_layout(root: Path) -> str:
    return (f"expected iNaturalist 2018:\n  {root}/\n"
            f"    train2018.json, val2018.json   <- COCO-style: images [{{id, file_name, ...}}], "
            f"annotations [{{image_id, category_id, ...}}], categories [{{id, name, ...}}]\n"
            f"    train_val2018/Plantae/7477/<image>.jpg ...   <- file_name, relative to {root}")


def _entries(data: dict, key: str, fields: tuple[str, ...], file: Path, root: Path) -> list[dict]:
    """data[key], a list of objects each holding `fields`."""
    entries = data.get(key)
    if not isinstance(entries, list):
        raise DatasetLayoutError(f"iNat18 {file}: no '{key}' list; {_inat_layout(root)}")
    for i, entry in enumerate(entries):
        lacking = [f for f in fields if not isinstance(entry, dict) or f not in entry]
        if lacking:
            raise DatasetLayoutError(f"iNat18 {file}: {key}[{i}] lacks {', '.join(map(repr, lacking))}; "
                                     f"{_inat_layout(root)}")
    return entries


def _inat_file(root: Path, split: str) -> Path:
    file = root / f"{split}2018.json"
    if not file.is_file():
        raise DatasetLayoutError(f"iNat18 {split}: {file} does not exist; {_inat_layout(root)}")
    return file


def load_inat18(root: Path, split: str) -> ClassificationSplit:
    """`<root>/<split>2018.json`; images in the file's order, one annotation each; classes are the
    categories list's (the union: a split may lack some) in sorted id order."""
    root = Path(root)
    file = _inat_file(root, split)
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetLayoutError(f"iNat18 {file} is not valid JSON ({e}); {_inat_layout(root)}") from e
    if not isinstance(data, dict):
        raise DatasetLayoutError(f"iNat18 {file}: not a JSON object; {_inat_layout(root)}")
    images = _entries(data, "images", ("id", "file_name"), file, root)
    annotations = _entries(data, "annotations", ("image_id", "category_id"), file, root)
    categories = _entries(data, "categories", ("id", "name"), file, root)
    by_id = {c["id"]: c["name"] for c in categories}
    if len(by_id) < len(categories):
        raise DatasetLayoutError(f"iNat18 {file}: category ids repeat; {_inat_layout(root)}")
    ids = sorted(by_id)
    index = {c: k for k, c in enumerate(ids)}
    image_ids = {im["id"] for im in images}
    if len(image_ids) < len(images):
        raise DatasetLayoutError(f"iNat18 {file}: image ids repeat; {_inat_layout(root)}")
    target: dict = {}
    for i, a in enumerate(annotations):
        if a["image_id"] not in image_ids or a["category_id"] not in index:
            raise DatasetLayoutError(f"iNat18 {file}: annotations[{i}] refers to image {a['image_id']!r} / category "
                                     f"{a['category_id']!r}, not both listed; {_inat_layout(root)}")
        if target.setdefault(a["image_id"], index[a["category_id"]]) != index[a["category_id"]]:
            raise DatasetLayoutError(f"iNat18 {file}: image {a['image_id']!r} has annotations of two categories; "
                                     f"{_inat_layout(root)}")
    unlabelled = [im["id"] for im in images if im["id"] not in target]
    if unlabelled:
        raise DatasetLayoutError(f"iNat18 {file}: {len(unlabelled)} images have no annotation, e.g. ids "
                                 f"{_some(unlabelled)}; {_inat_layout(root)}")
    paths = [root / im["file_name"] for im in images]
    absent = _absent(paths)
    if absent:
        raise DatasetLayoutError(f"iNat18 {file}: {len(absent)} of the {len(paths)} listed images are missing: "
                                 f"{_some(absent)}; {_inat_layout(root)}")
    targets = np.array([target[im["id"]] for im in images], np.int64)
    return ClassificationSplit(paths, targets, [str(by_id[c]) for c in ids], f"inat18-{split}")


# --- the entry point ---

def check_classification_split(data: DataConfig, dataset: str, split: str, subset: str | None = None) -> Path | None:
    """The arguments of `classification_split` checked, and for real data the files and folders its
    loader starts from (no image is listed or read): returns the real data's root; None for the
    embedded set, which is generated on first use."""
    if dataset not in CLASSIFICATION_DATASETS:
        raise ValueError(f"unknown classification dataset {dataset!r}; expected one of {CLASSIFICATION_DATASETS}")
    if split not in SPLITS:
        raise ValueError(f"unknown {dataset} split {split!r}; expected one of {SPLITS}")
    if subset is not None and (dataset, split, subset) not in {("imagenet", "train", s) for s in IMAGENET_SUBSETS}:
        raise ValueError(f"subset {subset!r} of {dataset} {split}: subsets are of imagenet train only, one of "
                         f"{IMAGENET_SUBSETS}")
    if data.source == "synth":
        return None
    if data.source != dataset:
        raise ValueError(f"data.source '{data.source}' cannot provide {dataset}; expected 'synth' (the embedded set) "
                         f"or '{dataset}' (real data at data.root or ${ENV_VARS[dataset]})")
    root = real_root(data)
    if dataset == "imagenet":
        class_names(root, split)
        if subset is not None:
            _subset_file(root, subset)
    elif dataset == "places205":
        _places_files(root, split)
    else:
        _inat_file(root, split)
    return root


def classification_split(data: DataConfig, embedded: EmbeddedClassSpec, workdir: Path, dataset: str, split: str,
                         subset: str | None = None) -> ClassificationSplit:
    """dataset in CLASSIFICATION_DATASETS; split in ("train", "val"); subset (imagenet train only) in
    IMAGENET_SUBSETS. data.source == "synth": generate (once, cached) the embedded set `dataset` under
    workdir/"data" and read it with the real loader. data.source == dataset: read real data at
    real_root(data) (data.root or the dataset's environment variable). Anything else: ValueError."""
    root = check_classification_split(data, dataset, split, subset)
    if root is None:
        root = ensure_embedded(dataset, data.synth, embedded, Path(workdir) / "data", workers=os.cpu_count() or 1)
        prefix = root.name  # synth-<spec digest>-<dataset>-<embedded digest>
    else:
        prefix = dataset
    loaded = (load_imagenet(root, split, subset) if dataset == "imagenet" else
              load_places205(root, split) if dataset == "places205" else load_inat18(root, split))
    return replace(loaded, key="-".join([prefix, split] + ([subset] if subset else [])))
