"""Locate a configured dataset: the embedded synthetic scenes, or real data by path.

Real data is found from `data.root` in the config or, failing that, an environment variable
(ORL_BENCH_COCO, ORL_BENCH_VOC2007, ORL_BENCH_IMAGENET); `folder` (any unlabeled images) from
`data.root` only. The embedded scenes are generated on first use into the work directory and cached
by their parameters; `synth` and `synth_plus` pretrain on them as `coco` and `coco_plus` on real COCO.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orl_bench.config import DataConfig
from orl_bench.data.class_folders import ClassFolders, class_names
from orl_bench.data.coco import CocoDataset
from orl_bench.data.coco import check_layout as check_coco_layout
from orl_bench.data.folder import UnlabeledFolder
from orl_bench.data.folder import check_root as check_folder_root
from orl_bench.data.images import DatasetLayoutError
from orl_bench.data.synth import ensure_synth
from orl_bench.data.voc import VOC2007
from orl_bench.data.voc import check_layout as check_voc_layout

ENV_VARS = {"coco": "ORL_BENCH_COCO", "coco_plus": "ORL_BENCH_COCO", "voc2007": "ORL_BENCH_VOC2007",
            "imagenet": "ORL_BENCH_IMAGENET", "places205": "ORL_BENCH_PLACES205", "inat18": "ORL_BENCH_INAT18"}
PRETRAIN_SOURCES = ("synth", "synth_plus", "coco", "coco_plus", "imagenet", "folder")
SYNTH_SOURCES = ("synth", "synth_plus")  # the embedded scenes, generated on first use
COCO_PLUS_SOURCES = ("coco_plus", "synth_plus")  # train2017 + unlabeled2017
VOC_SOURCES = ("synth", "voc2007")
# Sources whose images the config does not determine (data.root is not hashed): their ImageList key
# describes the contents and keys the artifacts trained on them.
CONTENT_KEYED_SOURCES = ("folder",)


@dataclass(frozen=True)
class ImageList:
    """An ordered list of pretraining images; `key` names it in caches and records (for `folder`, its
    contents). Scene sources carry their COCO splits (boxes, categories); class-folder sources
    their class per image."""
    paths: list[Path]
    key: str
    coco: list[CocoDataset]
    class_index: np.ndarray | None = None


def synth_root(cfg: DataConfig, workdir: Path) -> Path:
    return ensure_synth(cfg.synth, Path(workdir) / "data", workers=os.cpu_count() or 1)


def real_root(cfg: DataConfig) -> Path:
    env = ENV_VARS.get(cfg.source)
    root = cfg.root or (env and os.environ.get(env))
    if not root:
        raise DatasetLayoutError(f"data.source={cfg.source} needs a location: set data.root (--set data.root=PATH)"
                                 + (f" or the {env} environment variable" if env else ""))
    return Path(root).expanduser()


def coco_splits(source: str) -> list[str]:
    """The COCO splits a scene source pretrains on: COCO+ is train2017 + unlabeled2017."""
    return ["train2017"] + (["unlabeled2017"] if source in COCO_PLUS_SOURCES else [])


def check_pretrain_images(cfg: DataConfig) -> None:
    """What `pretrain_images` needs, checked without listing or reading an image: a source to
    pretrain on and, for real data, its root in the layout its reader expects (DatasetLayoutError
    otherwise). The embedded scenes need nothing: they are generated on first use."""
    if cfg.source not in PRETRAIN_SOURCES:
        raise ValueError(f"data.source '{cfg.source}' cannot be pretrained on; expected one of {PRETRAIN_SOURCES}")
    if cfg.source == "imagenet":
        class_names(real_root(cfg), "train")
    elif cfg.source == "folder":
        check_folder_root(real_root(cfg))
    elif cfg.source not in SYNTH_SOURCES:
        for split in coco_splits(cfg.source):
            check_coco_layout(real_root(cfg), split)


def pretrain_images(cfg: DataConfig, workdir: Path) -> ImageList:
    check_pretrain_images(cfg)
    if cfg.source == "imagenet":  # the train split's class folders
        folders = ClassFolders(real_root(cfg), "train")
        return ImageList(folders.paths, "imagenet-train", [], folders.targets)
    if cfg.source == "folder":
        folder = UnlabeledFolder(real_root(cfg))
        return ImageList(folder.paths, folder.key, [])
    splits = coco_splits(cfg.source)
    if cfg.source in SYNTH_SOURCES:
        root, key = synth_root(cfg, workdir) / "coco", f"synth-{cfg.synth.digest()}-{'+'.join(splits)}"
    else:
        root, key = real_root(cfg), cfg.source
    sets = [CocoDataset(root, split) for split in splits]
    return ImageList([im.path for s in sets for im in s.images], key, sets)


def check_voc07(cfg: DataConfig, split: str) -> None:
    """What `voc07` needs, checked without reading the split: a VOC07 source and, for real data, the
    files and folders the split is read from (DatasetLayoutError otherwise)."""
    if cfg.source not in VOC_SOURCES:
        raise ValueError(f"data.source '{cfg.source}' is not a VOC07 source; expected one of {VOC_SOURCES}")
    if cfg.source != "synth":
        check_voc_layout(real_root(cfg), split)


def voc07(cfg: DataConfig, workdir: Path, split: str) -> tuple[VOC2007, str]:
    """The VOC07 split and its cache key."""
    check_voc07(cfg, split)
    if cfg.source == "synth":
        return VOC2007(synth_root(cfg, workdir) / "VOCdevkit", split), f"synth-{cfg.synth.digest()}-voc07-{split}"
    return VOC2007(real_root(cfg), split), f"voc2007-{split}"
