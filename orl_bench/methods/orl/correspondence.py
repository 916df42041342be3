"""The stage-2 correspondence artifact (docs/protocols.md 2.7): storage, validation, official JSON.

Per image (position i in the dataset's image list): its kept boxes (xywh, original pixels), its K
neighbour positions, and per neighbour the retrieved (query box, neighbour box) index pairs.

Own storage is one compressed .npz (flat arrays plus per-image counts, a format_version), written
atomically and validated on load, so a wrong or damaged file fails before stage 3 starts.

Official JSON layout, as read from the authors' code (their stage-2 writer and stage-3 reader):
- `pseudo_annotations.knn_image_id[i]` holds *positions* in `images.file_name` (the reader opens
  `file_name[knn_image_id[i][k]]`), not COCO image ids. Files made with a smaller K than their
  kNN file may list more neighbours than pairs; the first K (= len(knn_bbox_pair[i])) are used.
- `knn_bbox_pair[i][k]` is a list of 8 numbers per pair: the query box xywh followed by the
  neighbour box xywh (the writer concatenates the two boxes, not their indices), ordered by
  decreasing similarity. Import maps each box back to its index in the image's `bbox` list by
  exact float32 equality (first match if a list holds the same box twice).
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from orl_bench.io import atomic_write_text, save_npz

FORMAT_VERSION = 1
OFFICIAL_INFO_KEYS = ("bbox_min_size", "bbox_max_aspect_ratio", "bbox_max_iou", "intra_bbox_num",
                      "knn_image_num", "knn_bbox_pair_ratio")
BOX_TOLERANCE = 1.0  # px a box may overhang its image: COCO's float ground truth slightly does
_NPZ_KEYS = ("format_version", "image_ids", "file_names", "box_counts", "boxes", "knn",
             "pair_counts", "pairs", "info")


class CorrespondenceError(ValueError):
    """A correspondence file is malformed or does not match the dataset; says what and where."""


def _split(flat: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    ends = np.cumsum(counts)
    return [flat[end - c:end] for c, end in zip(counts.tolist(), ends.tolist())]


def _as_rows(value: Any, width: int, dtype: type, where: str) -> np.ndarray:
    try:
        arr = np.array(value, dtype)
    except (TypeError, ValueError) as e:
        raise CorrespondenceError(f"{where}: not a list of {width}-number rows ({e})") from e
    arr = arr.reshape(0, width) if arr.size == 0 else arr
    if arr.ndim != 2 or arr.shape[1] != width:
        raise CorrespondenceError(f"{where}: expected rows of {width} numbers, got shape {arr.shape}")
    return arr


@dataclass(eq=False)
class Correspondences:
    image_ids: list[int]
    file_names: list[str]
    boxes: list[np.ndarray]  # per image (n_i, 4) float32 xywh
    knn: np.ndarray  # (N, K) int64 neighbour positions
    pairs: list[list[np.ndarray]]  # [image][neighbour] (m, 2) int64 (query box, neighbour box)
    info: dict = field(default_factory=dict)  # JSON-serialisable parameters and provenance

    def __len__(self) -> int:
        return len(self.image_ids)

    def _where(self, i: int) -> str:
        return f"image {i} (id {self.image_ids[i]}, {self.file_names[i]})"

    def validate(self, n_images: int | None = None,
                 image_sizes: list[tuple[int, int]] | None = None) -> None:
        """Raise CorrespondenceError naming the first problem; `image_sizes` is (width, height)
        per position and enables the box-inside-image check."""
        n = len(self)
        if n_images is not None and n != n_images:
            raise CorrespondenceError(f"wrong image count: the correspondences cover {n} images, "
                                      f"the dataset has {n_images}")
        knn = np.asarray(self.knn)
        sizes = {"file_names": len(self.file_names), "boxes": len(self.boxes),
                 "knn rows": len(knn), "pairs": len(self.pairs)}
        if knn.ndim != 2 or any(v != n for v in sizes.values()):
            raise CorrespondenceError(f"inconsistent lengths: {n} image ids but {sizes} "
                                      f"(knn shape {knn.shape})")
        k = knn.shape[1]
        for bad, what in (((knn < 0) | (knn >= n), f"out of range [0, {n})"),
                          (knn == np.arange(n)[:, None], "the image itself"),
                          (np.tril(knn[:, :, None] == knn[:, None, :], -1).any(axis=2),
                           "listed twice")):
            if bad.any():
                i, j = np.argwhere(bad)[0]
                raise CorrespondenceError(f"{self._where(i)}: neighbour {j} (position "
                                          f"{knn[i, j]}) is {what}")
        for i, b in enumerate(self.boxes):
            b = np.asarray(b)
            if b.ndim != 2 or b.shape[1] != 4 or not np.isfinite(b).all() or (b[:, 2:] <= 0).any():
                raise CorrespondenceError(f"{self._where(i)}: boxes must be (n, 4) finite xywh "
                                          f"with w, h > 0, got shape {b.shape}")
        counts = np.array([len(b) for b in self.boxes], np.int64)
        if image_sizes is not None:
            self._check_inside(counts, np.asarray(image_sizes, np.float64).reshape(-1, 2))
        flat = []
        for i, row in enumerate(self.pairs):
            if len(row) != k:
                raise CorrespondenceError(f"{self._where(i)}: {len(row)} pair lists for {k} "
                                          "neighbours")
            for j, p in enumerate(row):
                p = np.asarray(p)
                if p.ndim != 2 or p.shape[1] != 2:
                    raise CorrespondenceError(f"{self._where(i)}, neighbour {j}: pairs must be "
                                              f"(m, 2), got shape {p.shape}")
                flat.append(p)
        owner = np.repeat(np.arange(n * k), [len(p) for p in flat])  # flat (image, neighbour)
        p = np.concatenate(flat or [np.zeros((0, 2), np.int64)])
        nq, nv = counts[owner // max(k, 1)], counts[knn.ravel()[owner]]
        bad = (p[:, 0] < 0) | (p[:, 0] >= nq) | (p[:, 1] < 0) | (p[:, 1] >= nv)
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            i, j = divmod(int(owner[r]), k)
            raise CorrespondenceError(f"{self._where(i)}, neighbour {j} (position {knn[i, j]}): "
                                      f"pair {p[r].tolist()} is out of range (the image has "
                                      f"{nq[r]} boxes, the neighbour {nv[r]})")

    def _check_inside(self, counts: np.ndarray, sizes: np.ndarray) -> None:
        if len(sizes) != len(self):
            raise CorrespondenceError(f"wrong image count: {len(sizes)} image sizes for "
                                      f"{len(self)} images")
        flat = np.concatenate([np.asarray(b, np.float64) for b in self.boxes] or [np.zeros((0, 4))])
        wh = np.repeat(sizes, counts, axis=0)
        outside = ((flat[:, :2] < -BOX_TOLERANCE).any(axis=1)
                   | (flat[:, :2] + flat[:, 2:] > wh + BOX_TOLERANCE).any(axis=1))
        if outside.any():
            r = int(np.flatnonzero(outside)[0])
            i = int(np.searchsorted(np.cumsum(counts), r, side="right"))
            w, h = sizes[i]
            raise CorrespondenceError(f"{self._where(i)}: box {flat[r].tolist()} lies outside "
                                      f"the {w:g}x{h:g} image")

    def save(self, path: Path) -> None:
        """Validate, then write one compressed .npz atomically."""
        self.validate()
        knn = np.asarray(self.knn, np.int64)
        flat_pairs = [np.asarray(p, np.int64).reshape(-1, 2) for row in self.pairs for p in row]
        pairs = np.concatenate(flat_pairs or [np.zeros((0, 2), np.int64)])
        small = pairs.size == 0 or pairs.max() < 2 ** 16  # indices < 65536: half the bytes
        arrays = {
            "format_version": np.int64(FORMAT_VERSION),
            "image_ids": np.asarray(self.image_ids, np.int64),
            "file_names": np.asarray(self.file_names, str),
            "box_counts": np.array([len(b) for b in self.boxes], np.int64),
            "boxes": np.concatenate([np.asarray(b, np.float32) for b in self.boxes]
                                    or [np.zeros((0, 4), np.float32)]),
            "knn": knn,
            "pair_counts": np.array([len(p) for p in flat_pairs], np.int64).reshape(knn.shape),
            "pairs": pairs.astype(np.uint16 if small else np.int64),
            "info": np.asarray(json.dumps(self.info, sort_keys=True)),
        }
        save_npz(path, arrays, compressed=True)

    @classmethod
    def load(cls, path: Path, n_images: int | None = None,
             image_sizes: list[tuple[int, int]] | None = None) -> Correspondences:
        """Read and validate a file written by `save`."""
        try:
            with np.load(path, allow_pickle=False) as z:
                a = {key: z[key] for key in z.files}
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise CorrespondenceError(f"cannot read correspondence file {path}: {e}") from e
        if "format_version" not in a or int(a["format_version"]) != FORMAT_VERSION:
            raise CorrespondenceError(f"{path}: format_version {a.get('format_version')}, this "
                                      f"orl-bench reads version {FORMAT_VERSION}")
        missing = [key for key in _NPZ_KEYS if key not in a]
        if missing:
            raise CorrespondenceError(f"{path}: missing arrays {missing}")
        box_counts, pair_counts = a["box_counts"], a["pair_counts"]
        if (box_counts.sum() != len(a["boxes"]) or pair_counts.sum() != len(a["pairs"])
                or pair_counts.shape != a["knn"].shape):
            raise CorrespondenceError(f"{path}: the box or pair counts do not match the stored "
                                      "arrays (damaged file)")
        k = a["knn"].shape[1] if a["knn"].ndim == 2 else 0
        flat = _split(a["pairs"].astype(np.int64), pair_counts.ravel())
        c = cls(a["image_ids"].tolist(), a["file_names"].tolist(), _split(a["boxes"], box_counts),
                a["knn"], [flat[i * k:(i + 1) * k] for i in range(len(box_counts))],
                json.loads(str(a["info"])))
        c.validate(n_images, image_sizes)
        return c


def _numbers(rows: np.ndarray) -> list:
    """JSON rows, integers where every value is integral (selective search boxes), else the
    float32 values as doubles, which parse back to the same float32."""
    rows = np.asarray(rows, np.float64)
    return rows.astype(np.int64).tolist() if np.array_equal(rows, np.round(rows)) else rows.tolist()


def to_official(c: Correspondences) -> dict:
    """The official layout as a dict. `info` carries the six official keys and any extra ones."""
    c.validate()
    missing = [key for key in OFFICIAL_INFO_KEYS if key not in c.info]
    if missing:
        raise CorrespondenceError(f"info lacks the official keys {missing}")
    boxes = [np.asarray(b, np.float32) for b in c.boxes]
    pairs = [[_numbers(np.concatenate([boxes[i][p[:, 0]], boxes[j][p[:, 1]]], axis=1))
              for j, p in zip(np.asarray(c.knn)[i].tolist(), map(np.asarray, c.pairs[i]))]
             for i in range(len(c))]
    ids = [int(v) for v in c.image_ids]
    return {"info": dict(c.info),
            "images": {"file_name": list(c.file_names), "id": ids},
            "pseudo_annotations": {"image_id": ids, "bbox": [_numbers(b) for b in boxes],
                                   "knn_image_id": np.asarray(c.knn).tolist(),
                                   "knn_bbox_pair": pairs}}


def export_official(c: Correspondences, path: Path) -> None:
    atomic_write_text(path, json.dumps(to_official(c)))


def _box_indices(boxes: np.ndarray, wanted: np.ndarray, where: str) -> np.ndarray:
    equal = (wanted[:, None, :] == boxes[None, :, :]).all(axis=2)
    found = equal.any(axis=1)
    if not found.all():
        raise CorrespondenceError(f"{where}: pair box {wanted[~found][0].tolist()} is not among "
                                  f"the image's {len(boxes)} boxes")
    return equal.argmax(axis=1).astype(np.int64)


def import_official(path: Path, n_images: int | None = None,
                    image_sizes: list[tuple[int, int]] | None = None) -> Correspondences:
    """Read an official-layout JSON (see the module docstring) and validate it."""
    try:
        data = json.loads(Path(path).read_text())
        info, images, pa = dict(data["info"]), data["images"], data["pseudo_annotations"]
        file_names, ids = list(images["file_name"]), [int(v) for v in images["id"]]
        lists = {key: pa[key] for key in ("image_id", "bbox", "knn_image_id", "knn_bbox_pair")}
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise CorrespondenceError(
            f"cannot read official correspondence file {path} ({type(e).__name__}: {e}); expected "
            "{info{...}, images{file_name[], id[]}, pseudo_annotations{image_id[], bbox[], "
            "knn_image_id[][K], knn_bbox_pair[][K][m][8]}}") from e
    n = len(file_names)
    if n_images is not None and n != n_images:
        raise CorrespondenceError(f"wrong image count: {path} covers {n} images, the dataset has "
                                  f"{n_images}")
    lengths = {"images.id": len(ids), **{key: len(v) for key, v in lists.items()}}
    if any(v != n for v in lengths.values()) or lists["image_id"] != ids:
        raise CorrespondenceError(f"{path}: {n} file names but lengths {lengths}, or "
                                  "pseudo_annotations.image_id differs from images.id")
    boxes = [_as_rows(b, 4, np.float32, f"{path}: image {i} bbox")
             for i, b in enumerate(lists["bbox"])]
    k = len(lists["knn_bbox_pair"][0]) if n else 0
    try:
        knn = np.array([row[:k] for row in lists["knn_image_id"]], np.int64).reshape(n, k)
    except (TypeError, ValueError) as e:
        raise CorrespondenceError(f"{path}: knn_image_id must hold at least {k} positions per "
                                  f"image ({e})") from e
    if ((knn < 0) | (knn >= n)).any():
        i, j = np.argwhere((knn < 0) | (knn >= n))[0]
        raise CorrespondenceError(f"{path}: image {i}, neighbour {j} (position {knn[i, j]}) is out "
                                  f"of range [0, {n})")
    pairs = []
    for i, row in enumerate(lists["knn_bbox_pair"]):
        if len(row) != k:
            raise CorrespondenceError(f"{path}: image {i} has {len(row)} neighbour pair lists, "
                                      f"image 0 has {k}")
        per_image = []
        for j, entry in enumerate(row):
            where = f"{path}: image {i}, neighbour {j} (position {knn[i, j]})"
            p = _as_rows(entry, 8, np.float32, where)
            per_image.append(np.stack([_box_indices(boxes[i], p[:, :4], where + ", query side"),
                                       _box_indices(boxes[knn[i, j]], p[:, 4:],
                                                    where + ", neighbour side")], axis=1))
        pairs.append(per_image)
    c = Correspondences(ids, file_names, boxes, knn, pairs, info)
    c.validate(n_images, image_sizes)
    return c
