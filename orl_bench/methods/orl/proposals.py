"""Raw box proposals for stage 2 (docs/protocols.md 2.3) from one of three sources.

- Selective search (OpenCV ximgproc, fast mode, default parameters, full resolution), cached
  one file per image so that a killed run resumes where it stopped, sharded over ranks and run
  over CPU processes. It costs seconds per COCO image, ~90 CPU-hours on train2017.
- The proposals file the ORL authors distribute for COCO, which skips that cost.
- Ground-truth boxes (Table 5d).

Images are decoded with PIL (`read_rgb`) and converted to BGR, as the official code does, so box
coordinates live in the same pixel frame as every other reader of the image in this project.
Every source yields per image an (n, 4) xywh array in original pixels, in image-list order.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import multiprocessing
from pathlib import Path

import cv2
import numpy as np

from orl_bench import progress
from orl_bench.data.coco import CocoDataset
from orl_bench.data.images import UnreadableImageError, read_rgb
from orl_bench.engine.distributed import DistInfo
from orl_bench.faults import fault_point
from orl_bench.io import atomic_write_json, save_npy

_PER_FOLDER = 1000  # files per sub-folder: 118k files in one folder is slow on many filesystems
_LIBC = ctypes.CDLL(None)  # the process's C library, whose rand() OpenCV's selective search uses
_RAND_SEED = 1


class ProposalFileError(ValueError):
    """A proposals file is malformed or does not match the dataset; the message says how."""


def selective_search(image_bgr: np.ndarray) -> np.ndarray:
    """(n, 4) int32 xywh proposals of an HxWx3 uint8 BGR image, in OpenCV's output order.

    OpenCV orders the regions by `level * rand()` with the C library's global rand(), so the
    order, and with it the boxes the in-order filter keeps, depends on every earlier call in the
    process (the official code's output varies with loader-worker history). Re-seeding rand()
    before each image makes the proposals a function of the image alone.
    """
    _LIBC.srand(_RAND_SEED)
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(image_bgr)
    ss.switchToSelectiveSearchFast()
    return np.asarray(ss.process(), np.int32).reshape(-1, 4)


class ProposalStore:
    """One .npy per image position under `root`, written atomically (present = finished).

    An unreadable image is stored as an empty (0, 4) array, so it is not retried forever and
    stays visible to `empty_positions`.
    """

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, i: int) -> Path:
        return self.root / f"{i // _PER_FOLDER:05d}" / f"{i:08d}.npy"

    def has(self, i: int) -> bool:
        return self.path(i).exists()

    def save(self, i: int, boxes: np.ndarray) -> None:
        save_npy(self.path(i), np.asarray(boxes, np.int32).reshape(-1, 4))

    def load(self, i: int) -> np.ndarray:
        return np.load(self.path(i), allow_pickle=False)


def _compute_one(job: tuple[int, Path, Path]) -> None:
    i, path, root = job
    try:
        rgb = np.asarray(read_rgb(path))
        boxes = selective_search(np.ascontiguousarray(rgb[:, :, ::-1]))
    except UnreadableImageError:
        boxes = np.zeros((0, 4), np.int32)
    ProposalStore(root).save(i, boxes)


def compute_proposals(paths: list[Path], store_dir: Path, workers: int, rank: int = 0,
                      world_size: int = 1) -> list[int]:
    """Selective search for this rank's share (position % world_size == rank) of `paths`,
    skipping images already in the store. Each image is saved as soon as it is done.

    Returns the positions of this rank's share that have no proposals (unreadable images),
    finished earlier or now, so that callers can report them on every run.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    store = ProposalStore(store_dir)
    share = range(rank, len(paths), world_size)
    jobs = [(i, Path(paths[i]), store.root) for i in share if not store.has(i)]
    workers = max(1, min(workers, len(jobs)))
    meter = progress.Meter("selective search", len(jobs), "images", enabled=rank == 0)
    if workers > 1:
        # spawn: a fork of a process that already runs torch/OpenCV thread pools can deadlock;
        # one OpenCV thread per process so that processes are not oversubscribed
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
            for _ in pool.imap_unordered(_compute_one, jobs, chunksize=1):
                fault_point("stage2.proposals")
                meter.update()
    else:
        for job in jobs:
            _compute_one(job)
            fault_point("stage2.proposals")
            meter.update()
    return [i for i in share if len(store.load(i)) == 0]


def check_inputs(folder: Path, record: dict, info: DistInfo) -> None:
    """Refuse a folder built from other inputs (its `params.json` differs from `record`): its
    cached steps would silently mix them. A new folder gets `record` (written by rank 0)."""
    path = Path(folder) / "params.json"
    if path.exists():
        old = json.loads(path.read_text())
        differ = sorted(k for k in old.keys() | record.keys() if old.get(k) != record.get(k))
        if differ:
            raise ValueError(f"{folder} holds results of other inputs (differing: {differ}); "
                             "use another folder or remove it")
    elif info.is_main:
        atomic_write_json(path, record)


def shared_proposals(store_dir: Path, paths: list[Path], workers: int, info: DistInfo) -> None:
    """Selective search of every image into `store_dir`, which every method over the same image
    list shares (ORL's stage 2 for any stage 1, K or pair ratio; UniVIP). A folder made for
    another image list is refused. Every rank calls this; each computes its share."""
    names = "\n".join(Path(x).name for x in paths)
    check_inputs(store_dir, {"images": len(paths), "file_names_sha256": hashlib.sha256(names.encode()).hexdigest()},
                 info)
    compute_proposals(paths, store_dir, workers, info.rank, info.world_size)


def load_all(store_dir: Path, n: int) -> list[np.ndarray]:
    """The stored proposals of positions 0..n-1; every image must be finished."""
    store = ProposalStore(store_dir)
    missing = [i for i in range(n) if not store.has(i)]
    if missing:
        raise FileNotFoundError(f"proposal store {store_dir} lacks {len(missing)} of {n} images "
                                f"(positions {missing[:10]}{' ...' if len(missing) > 10 else ''}); "
                                "run compute_proposals on every rank first")
    return [store.load(i) for i in range(n)]


def import_official_proposals(json_path: Path, n_images: int) -> list[np.ndarray]:
    """Read the authors' `{"bbox": [[[x, y, w, h], ...] per image]}`, in instances-JSON order.

    Returns float32 (n_i, 4) arrays. The file carries no image ids, so the image count is the only
    check that it belongs to the dataset; it must match exactly.
    """
    try:
        data = json.loads(Path(json_path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProposalFileError(f"cannot read proposals file {json_path}: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("bbox"), list):
        raise ProposalFileError(f"proposals file {json_path}: expected a JSON object with a "
                                '"bbox" list ([[[x, y, w, h], ...] per image])')
    per_image = data["bbox"]
    if len(per_image) != n_images:
        raise ProposalFileError(f"proposals file {json_path} has {len(per_image)} images, the "
                                f"dataset has {n_images}: it belongs to another image list")
    out = []
    for i, boxes in enumerate(per_image):
        try:
            arr = np.array(boxes, np.float32)
        except (TypeError, ValueError) as e:
            raise ProposalFileError(f"proposals file {json_path}, image {i}: boxes are not "
                                    f"lists of 4 numbers ({e})") from e
        if arr.shape == (0,):  # an image without proposals
            arr = arr.reshape(0, 4)
        if arr.ndim != 2 or arr.shape[1] != 4 or not np.isfinite(arr).all():
            raise ProposalFileError(f"proposals file {json_path}, image {i}: expected a list of "
                                    f"[x, y, w, h] with 4 finite numbers each, got shape "
                                    f"{arr.shape}")
        out.append(arr)
    return out


def gt_proposals(coco: CocoDataset) -> list[np.ndarray]:
    """Ground-truth boxes (non-crowd) as float32 xywh per image (Table 5d). An image without
    objects gets the whole image as its one box, so every image can still take part in stage 2."""
    out = []
    for i, im in enumerate(coco.images):
        boxes = coco.boxes(i)
        out.append(boxes if len(boxes) else np.array([[0, 0, im.width, im.height]], np.float32))
    return out
