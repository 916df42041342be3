"""The embedded synthetic scene dataset, written in the real COCO and VOC2007 formats.

`ensure_synth(spec, cache_root)` returns `<cache_root>/synth-<digest>` holding

    coco/train2017/000000000001.jpg ...            scenes for pretraining and detection
    coco/val2017/ ...                              (coco_val > 0)
    coco/unlabeled2017/ ...                        (coco_unlabeled > 0; COCO+ = train + unlabeled)
    coco/annotations/instances_train2017.json      (and instances_val2017.json,
                                                    image_info_unlabeled2017.json)
    VOCdevkit/VOC2007/JPEGImages, Annotations, ImageSets/Main   (trainval and test)
    spec.json

so that `CocoDataset(path / "coco", split)` and `VOC2007(path, split)` read it exactly as they
read the real datasets. Scene content is described in synth_scene.py. Every image's random
stream is derived from (seed, split, index) alone, so the files are byte-identical for any
number of workers.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import socket
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from orl_bench import progress
from orl_bench.data.synth_scene import (SceneObject, SceneStyle, category_names, category_table,
                                        is_difficult, render_scene)

GENERATOR_VERSION = 2  # bump when the output changes for an unchanged spec: new cache key
VOC_SUBDIR = Path("VOCdevkit") / "VOC2007"
_CHUNK = 64  # images per worker task
_JPEG_QUALITY = 95


@dataclass(frozen=True)
class SynthSpec:
    """What to generate; its digest is the cache key, so every field changes the output."""
    seed: int = 0
    num_categories: int = 20
    height: int = 128
    width: int = 128
    coco_train: int = 4000
    coco_val: int = 1000  # held-out scenes for the detection benchmark
    coco_unlabeled: int = 0  # > 0 adds unlabeled2017, images only (COCO+: data.source synth_plus)
    voc_trainval: int = 2000
    voc_test: int = 2000
    min_objects: int = 2
    max_objects: int = 4  # with objects up to 0.7 of the short side, more would mostly hide each other
    object_size: tuple[float, float] = SceneStyle.object_size
    saturation: tuple[float, float] = SceneStyle.saturation
    grating: float = SceneStyle.grating
    clutter: tuple[int, int] = SceneStyle.clutter
    backdrop: float = SceneStyle.backdrop
    blotches: float = SceneStyle.blotches
    rotation: float = SceneStyle.rotation
    grey_spread: float = SceneStyle.grey_spread
    period_spread: float = SceneStyle.period_spread
    texture_contrast: float = SceneStyle.texture_contrast

    def __post_init__(self) -> None:
        category_table(self.num_categories)  # validates the range
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects, got {self.min_objects}, "
                             f"{self.max_objects}")
        if min(self.height, self.width) < 32:
            raise ValueError(f"images must be >= 32 px a side, got {self.height}x{self.width}")
        self.style()  # validates the look
        counts = (self.coco_train, self.coco_val, self.coco_unlabeled, self.voc_trainval,
                  self.voc_test)
        if min(counts) < 0:
            raise ValueError(f"image counts must be >= 0, got {counts}")

    def style(self) -> SceneStyle:
        return SceneStyle(tuple(self.object_size), tuple(self.saturation), self.grating, tuple(self.clutter),
                          self.backdrop, self.blotches, self.rotation, self.grey_spread,
                          self.period_spread, self.texture_contrast)

    def coco_plus(self) -> SynthSpec:
        """These scenes in the COCO+ setting: unlabeled2017 as large as train2017 unless its size is
        set. Real COCO+ adds 123,403 unlabeled images to train2017's 118,287 (1.04x), so equal sizes
        keep its proportion. train2017 stays the same images (`image_rng`), so COCO+ = COCO + more."""
        return self if self.coco_unlabeled else replace(self, coco_unlabeled=self.coco_train)

    def digest(self) -> str:
        payload = json.dumps({"generator": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class _Split:
    fmt: str  # "coco" | "voc"
    name: str
    count: int
    first_id: int  # image ids are unique across the splits of one format, as in the real sets


def _splits(spec: SynthSpec) -> list[_Split]:
    out = []
    for fmt, named in (("coco", (("train2017", spec.coco_train), ("val2017", spec.coco_val),
                                 ("unlabeled2017", spec.coco_unlabeled))),
                       ("voc", (("trainval", spec.voc_trainval), ("test", spec.voc_test)))):
        first = 1
        for name, count in named:
            if count:
                out.append(_Split(fmt, name, count, first))
            first += count
    return out


def image_rng(spec: SynthSpec, split: str, index: int) -> np.random.Generator:
    """The random stream of image `index` (0-based position) of `split`."""
    return np.random.default_rng([spec.seed, zlib.crc32(split.encode()), index])


# --- one chunk of images (runs in worker processes) ---

def _annotate(obj: SceneObject, short_side: int) -> dict:
    """COCO fields of the visible part (box = extent of the visible mask, area = its pixels)."""
    rle = mask_utils.encode(np.asfortranarray(obj.visible.astype(np.uint8)))
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    area = int(mask_utils.area(rle))
    segmentation = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
    return {"category_id": obj.category + 1, "bbox": bbox, "area": area,
            "segmentation": segmentation,
            "difficult": is_difficult(area, int(obj.mask.sum()), bbox[2], bbox[3], short_side)}


_VOC_XML = """<annotation>
\t<folder>VOC2007</folder>
\t<filename>{name}.jpg</filename>
\t<source><database>orl-bench synthetic scenes</database></source>
\t<size><width>{width}</width><height>{height}</height><depth>3</depth></size>
\t<segmented>0</segmented>
{objects}</annotation>
"""
_VOC_OBJECT = """\t<object>
\t\t<name>{cls}</name>
\t\t<pose>Unspecified</pose>
\t\t<truncated>0</truncated>
\t\t<difficult>{difficult}</difficult>
\t\t<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>
\t</object>
"""


def _voc_xml(name: str, spec: SynthSpec, anns: list[dict], classes: list[str]) -> str:
    objects = []
    for a in anns:
        x, y, w, h = (int(v) for v in a["bbox"])  # VOC boxes: 1-based, inclusive
        objects.append(_VOC_OBJECT.format(cls=classes[a["category_id"] - 1],
                                          difficult=int(a["difficult"]),
                                          x0=x + 1, y0=y + 1, x1=x + w, y1=y + h))
    return _VOC_XML.format(name=name, width=spec.width, height=spec.height,
                           objects="".join(objects))


def _render_chunk(job: tuple[SynthSpec, _Split, int, int, Path]) -> list[list[dict]]:
    """Render images [start, stop) of a split, write their files, return their annotations."""
    spec, split, start, stop, root = job
    classes = category_names(spec.num_categories)
    short = min(spec.height, spec.width)
    out = []
    for index in range(start, stop):
        image, objects = render_scene(image_rng(spec, split.name, index), spec.height, spec.width,
                                      spec.num_categories, spec.min_objects, spec.max_objects, spec.style())
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {split.name} image {index}")
        image_id = split.first_id + index
        anns = [] if split.name == "unlabeled2017" else [_annotate(o, short) for o in objects]
        if split.fmt == "coco":
            (root / "coco" / split.name / f"{image_id:012d}.jpg").write_bytes(jpeg.tobytes())
        else:
            name, voc = f"{image_id:06d}", root / VOC_SUBDIR
            (voc / "JPEGImages" / f"{name}.jpg").write_bytes(jpeg.tobytes())
            (voc / "Annotations" / f"{name}.xml").write_text(_voc_xml(name, spec, anns, classes))
        out.append(anns)
    return out


# --- whole-split files ---

def _write_coco(root: Path, spec: SynthSpec, split: _Split, per_image: list[list[dict]]) -> None:
    table = category_table(spec.num_categories)
    images, annotations = [], []
    for index, anns in enumerate(per_image):
        image_id = split.first_id + index
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg",
                       "width": spec.width, "height": spec.height})
        for a in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": a["category_id"], "bbox": a["bbox"],
                                "area": a["area"], "iscrowd": 0,
                                "segmentation": a["segmentation"]})
    data = {"info": {"description": "orl-bench synthetic scenes", "version": str(GENERATOR_VERSION),
                     "synth_digest": spec.digest()},
            "licenses": [], "images": images,
            "categories": [{"id": k + 1, "name": f"{texture}_{shape}", "supercategory": shape}
                           for k, (texture, shape) in enumerate(table)]}
    if split.name == "unlabeled2017":
        file = "image_info_unlabeled2017.json"  # the real file has no annotations either
    else:
        file, data["annotations"] = f"instances_{split.name}.json", annotations
    (root / "coco" / "annotations" / file).write_text(json.dumps(data, separators=(",", ":")))


def _write_voc_sets(root: Path, spec: SynthSpec, split: _Split,
                    per_image: list[list[dict]]) -> None:
    """ImageSets/Main/<split>.txt and <class>_<split>.txt (VOC's convention: 1 present,
    -1 absent, 0 present only as difficult)."""
    main = root / VOC_SUBDIR / "ImageSets" / "Main"
    ids = [f"{split.first_id + i:06d}" for i in range(split.count)]
    (main / f"{split.name}.txt").write_text("".join(f"{i}\n" for i in ids))
    for k, cls in enumerate(category_names(spec.num_categories)):
        lines = []
        for image_id, anns in zip(ids, per_image):
            flags = [a["difficult"] for a in anns if a["category_id"] == k + 1]
            label = -1 if not flags else (0 if all(flags) else 1)
            lines.append(f"{image_id} {label:2d}\n")
        (main / f"{cls}_{split.name}.txt").write_text("".join(lines))


def _generate(spec: SynthSpec, root: Path, workers: int) -> None:
    splits = _splits(spec)
    for split in splits:
        if split.fmt == "coco":
            (root / "coco" / split.name).mkdir(parents=True, exist_ok=True)
            (root / "coco" / "annotations").mkdir(exist_ok=True)
        else:
            for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
                (root / VOC_SUBDIR / sub).mkdir(parents=True, exist_ok=True)
    jobs = [(spec, s, start, min(start + _CHUNK, s.count), root)
            for s in splits for start in range(0, s.count, _CHUNK)]
    workers = min(workers, len(jobs))
    if workers > 1:
        # spawn: a fork of a process that already runs torch/OpenCV thread pools can deadlock
        with multiprocessing.get_context("spawn").Pool(workers, initializer=cv2.setNumThreads,
                                                       initargs=(1,)) as pool:
            chunks = pool.map(_render_chunk, jobs, chunksize=1)
    else:
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)  # tiny images: OpenCV's thread pool only adds overhead
        try:
            chunks = [_render_chunk(job) for job in jobs]
        finally:
            cv2.setNumThreads(threads)
    for split in splits:
        per_image = [anns for job, chunk in zip(jobs, chunks) if job[1] == split for anns in chunk]
        if split.fmt == "coco":
            _write_coco(root, spec, split, per_image)
        else:
            _write_voc_sets(root, spec, split, per_image)
    info = {"generator": GENERATOR_VERSION, "digest": spec.digest(), "spec": asdict(spec),
            "categories": category_names(spec.num_categories)}
    (root / "spec.json").write_text(json.dumps(info, indent=2) + "\n")


# --- cache ---

def _remove_stale_temps(cache_root: Path, name: str) -> None:
    """Delete temp folders of `name` left by dead processes on this host (a killed generation);
    folders of live processes or of other hosts sharing the file system are left alone."""
    host = socket.gethostname()
    for tmp in cache_root.glob(f".{name}.tmp-*"):
        owner, _, pid = tmp.name.rpartition("-")
        if owner != f".{name}.tmp-{host}" or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:
            pass  # alive, owned by someone else


def ensure_synth(spec: SynthSpec, cache_root: Path, workers: int = 1) -> Path:
    """Return `<cache_root>/synth-<digest>`, generating it first if needed (`build_once`).

    `workers > 1` uses spawned processes, so a calling script needs the usual
    `if __name__ == "__main__":` guard.
    """
    return build_once(Path(cache_root) / f"synth-{spec.digest()}", lambda tmp: _generate(spec, tmp, workers))


def build_once(final: Path, generate: Callable[[Path], None]) -> Path:
    """`final`, made by `generate(folder)` if it does not exist yet.

    Generation writes into a hidden sibling folder that is renamed into place only when complete,
    so an interrupted run never leaves a partial dataset at the final path. Concurrent callers
    (e.g. several ranks) may each generate; the first rename wins and the others discard theirs.
    """
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(final.parent, final.name)
    tmp = final.parent / f".{final.name}.tmp-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with progress.stage(f"generating {final.name}"):
            generate(tmp)
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
