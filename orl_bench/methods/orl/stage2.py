"""ORL stage 2 end to end (docs/protocols.md 2): stage-1 network -> image kNN -> boxes -> RoI pairs.

Every step writes its own file under the output folder and is skipped when that file exists, so
a killed run resumes; the two per-image steps (selective search, RoI embeddings) also resume per
image and are sharded over torchrun ranks (position % world_size == rank). Rank 0 does the global
steps: the embedding bank (one forward per image, ~1% of the RoI cost), kNN, the box filter,
pair retrieval and the artifact. The folder holds:

  params.json          what the folder is built from; a rerun with other inputs is refused
  image_sizes.npy      (N, 2) width, height of each image; (0, 0) marks an unreadable image
  embeddings.npy       (N, D) stage-1 projector embeddings, L2; zero rows for unreadable images
  knn.npy              (N, K) neighbour positions
  proposals/           raw selective-search boxes, one file per image (ProposalStore), unless
                       a shared `proposal_dir` is given
  boxes.npz            the filtered boxes of every image (flat float32 xywh + counts)
  roi/<position>.npy   (B_i, C) RoI embeddings, each image embedded once
  correspondences.npz  the artifact (Correspondences), written last
  stage2_timings.json  the sidecar: seconds per step of the run that wrote the artifact (steps
                       found cached are absent), RoI forwards done by that run, world size;
                       nothing of it is in the artifact, whose bytes depend on its inputs alone
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from orl_bench import progress
from orl_bench.config import PretrainConfig, added_later, config_hash, from_dict, to_dict, volatile
from orl_bench.data.coco import CocoDataset
from orl_bench.data.images import UnreadableImageError, read_rgb
from orl_bench.data.views import normalize
from orl_bench.engine.checkpoint import TRAIN_STATE, is_complete, load_train_state, read_manifest
from orl_bench.engine.distributed import DistInfo, barrier
from orl_bench.faults import fault_point
from orl_bench.io import atomic_write_json, save_npy
from orl_bench.methods.base import Method
from orl_bench.methods.orl.boxes import BoxFilter, filter_boxes, load_boxes, save_boxes, scaled
from orl_bench.methods.orl.correspondence import Correspondences
from orl_bench.methods.orl.proposals import (check_inputs, gt_proposals, import_official_proposals, load_all,
                                             shared_proposals)
from orl_bench.methods.orl.retrieval import knn, retrieve_pairs
from orl_bench.methods.orl.roi_embed import ROI_CROPS, ForwardCounter, crop_rois, embed_crops, normalised, pil_crops
from orl_bench.models.backbones import ResNet
from orl_bench.registry import METHODS

ARTIFACT = "correspondences.npz"
TIMINGS = "stage2_timings.json"  # the sidecar: how the run that wrote ARTIFACT went
OFFICIAL_PREFIX = "official:"
# Our parameter names -> the official info keys (docs/protocols.md 2.7); the others keep our names.
OFFICIAL_NAMES = {"min_size": "bbox_min_size", "max_aspect_ratio": "bbox_max_aspect_ratio",
                  "nms_iou": "bbox_max_iou", "max_boxes": "intra_bbox_num",
                  "knn_k": "knn_image_num", "pair_ratio": "knn_bbox_pair_ratio"}
_ROI_CACHE_IMAGES = 4096  # RoI files held in memory during pair retrieval (~3 GB at ResNet-50)


@dataclass(frozen=True)
class Stage2Params:
    """docs/protocols.md 2 defaults. `reference_short_side` > 0 scales `min_size` per image by
    short side / reference (the embedded 128 px scenes vs COCO's ~480); 0 keeps pixels as given.
    `box_source` is "selective_search", "gt" (Table 5d) or "official:<path>" (the authors'
    proposals file). `roi_crop` is how a RoI is cropped and resized (docs/protocols.md 2.5):
    "roi_align" (batched) or "pil" (the official per-box PIL crop and resize). `workers` are CPU
    processes for selective search and image decoding."""
    knn_k: int = 10
    pair_ratio: float = 0.1
    box_source: str = "selective_search"
    min_size: float = 96.0
    max_aspect_ratio: float = 3.0
    nms_iou: float = 0.5
    max_boxes: int = 100
    fallback: str = "largest"
    reference_short_side: int = 0
    embed_resize_short: int = 256
    embed_size: int = 224
    roi_size: int = 224
    roi_crop: str = added_later("roi_align")  # added later: folders built before keep their keys
    batch_size: int = volatile(64)  # speed only (volatile): changing it reuses a folder
    workers: int = volatile(2)

    def __post_init__(self) -> None:
        _ = self.box_filter  # BoxFilter validates the thresholds
        official = self.box_source.startswith(OFFICIAL_PREFIX) and self.box_source != OFFICIAL_PREFIX
        if self.box_source not in ("selective_search", "gt") and not official:
            raise ValueError(f"box_source must be 'selective_search', 'gt' or "
                             f"'{OFFICIAL_PREFIX}<path>', got '{self.box_source}'")
        if self.roi_crop not in ROI_CROPS:
            raise ValueError(f"roi_crop must be one of {', '.join(ROI_CROPS)}, got '{self.roi_crop}'")
        counts = (self.knn_k, self.embed_resize_short, self.embed_size, self.roi_size,
                  self.batch_size, self.workers)
        if min(counts) < 1 or not 0 < self.pair_ratio <= 1 or self.reference_short_side < 0:
            raise ValueError(f"need knn_k, sizes, batch_size and workers >= 1, 0 < pair_ratio <= 1 "
                             f"and reference_short_side >= 0; got {self}")

    @property
    def box_filter(self) -> BoxFilter:
        return BoxFilter(self.min_size, self.max_aspect_ratio, self.nms_iou, self.max_boxes,
                         self.fallback)

    def filter_for(self, width: int, height: int) -> BoxFilter:
        if not self.reference_short_side:
            return self.box_filter
        return scaled(self.box_filter, min(width, height), self.reference_short_side)

    def info(self) -> dict:
        """Every parameter (but one added later and left at its default, so the artifact's bytes
        stay the same), the official ones under their official key names."""
        return {OFFICIAL_NAMES.get(k, k): v for k, v in to_dict(self, added_defaults=False).items()}


def folder_name(stage1_sha256: str, images_key: str, params: Stage2Params) -> str:
    """A stage-2 folder name for (stage-1 backbone, image list, non-volatile parameters)."""
    key = hashlib.sha256(f"{stage1_sha256}|{images_key}|{config_hash(params)}".encode()).hexdigest()
    return f"orl-stage2-{key[:12]}"


def load_stage1(stage1_dir: Path) -> Method:
    """The stage-1 method of a complete artifact with its final weights, in eval mode."""
    stage1_dir = Path(stage1_dir)
    if not is_complete(stage1_dir):
        raise FileNotFoundError(f"{stage1_dir} is not a complete stage-1 artifact (no "
                                "manifest.json); finish stage 1 first")
    cfg = from_dict(PretrainConfig, yaml.safe_load((stage1_dir / "config.yaml").read_text()))
    method = METHODS.get(cfg.method["name"])(cfg)
    if not isinstance(getattr(method, "online", None), nn.Module):
        raise TypeError(f"stage-1 method '{cfg.method['name']}' ({stage1_dir}) has no `online` "
                        "network (backbone -> projector): ORL stage 2 needs a BYOL-like stage 1")
    method.load_state_dict(load_train_state(stage1_dir / TRAIN_STATE)["model"])
    # NHWC weights make every convolution run channels_last, as in training, which is faster on
    # CPU too (results/perf/channels_last_cpu.json)
    return method.eval().to(memory_format=torch.channels_last)


class _BankImages(Dataset):
    """Embedding-bank inputs (Resize shorter side, CenterCrop, normalise) with each image's
    original (width, height). The bank pass is the one pass that decodes every image, so it also
    records the sizes the box filter scales by; an unreadable image yields zeros and (0, 0)."""

    def __init__(self, paths: list[Path], resize_short: int, size: int):
        self.paths, self.size = paths, size
        self.transform = v2.Compose([v2.PILToTensor(), v2.Resize(resize_short, antialias=True),
                                     v2.CenterCrop(size), normalize()])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            image = read_rgb(self.paths[i])
        except UnreadableImageError:
            return torch.zeros(3, self.size, self.size), torch.zeros(2, dtype=torch.int64)
        return self.transform(image), torch.tensor(image.size, dtype=torch.int64)


@torch.no_grad()
def embed_bank(online: nn.Module, paths: list[Path], p: Stage2Params,
               device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """((N, D) L2 projector embeddings, (N, 2) sizes). An unreadable image gets a zero row:
    cosine 0 to every image, so it is rarely a neighbour (and has no boxes to pair anyway)."""
    loader = DataLoader(_BankImages(paths, p.embed_resize_short, p.embed_size),
                        batch_size=p.batch_size, num_workers=p.workers)
    online.eval()
    feats, sizes = [], []
    for x, wh in loader:
        feats.append(F.normalize(online(x.to(device)).float(), dim=1).cpu())
        sizes.append(wh)
    emb, wh = torch.cat(feats).numpy(), torch.cat(sizes).numpy()
    emb[wh[:, 0] == 0] = 0
    return emb, wh


def filtered_boxes(raw: list[np.ndarray], sizes: np.ndarray, p: Stage2Params) -> list[np.ndarray]:
    """Per image the kept float32 xywh boxes; none for an unreadable image, whatever the source
    (ground truth still lists boxes for it, but no RoI of it can be embedded)."""
    return [filter_boxes(r, p.filter_for(w, h)).astype(np.float32) if w else np.zeros((0, 4), np.float32)
            for r, (w, h) in zip(raw, sizes.tolist(), strict=True)]


def _raw_boxes(p: Stage2Params, n: int, coco: list[CocoDataset] | None,
               proposal_dir: Path) -> list[np.ndarray]:
    if p.box_source == "selective_search":
        return load_all(proposal_dir, n)
    if p.box_source == "gt":
        return [b for s in coco for b in gt_proposals(s)]
    return import_official_proposals(Path(p.box_source[len(OFFICIAL_PREFIX):]), n)


def roi_path(out_dir: Path, i: int) -> Path:
    return Path(out_dir) / "roi" / f"{i:08d}.npy"


class _Pixels(Dataset):
    """(position, uint8 CHW tensor) of the images at `positions`, decoded in loader workers. With
    roi_crop "pil" the workers crop too, box by box as the official loader does, and yield the
    (B, 3, roi_size, roi_size) uint8 crops: that CPU work then runs beside the forwards."""

    def __init__(self, paths: list[Path], positions: list[int], boxes: list[np.ndarray], p: Stage2Params):
        self.paths, self.positions, self.boxes, self.p = paths, positions, boxes, p

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, k: int) -> tuple[int, torch.Tensor]:
        i = self.positions[k]
        image = read_rgb(self.paths[i])
        if self.p.roi_crop == "pil":
            return i, pil_crops(image, self.boxes[i], self.p.roi_size)
        return i, v2.functional.pil_to_tensor(image)


def embed_images(backbone: ResNet, paths: list[Path], boxes: list[np.ndarray], positions: list[int],
                 out_dir: Path, p: Stage2Params, announce: bool = True) -> int:
    """Embed and save the RoIs of `positions`, one file per image as soon as its last crop is
    embedded. Crops of consecutive images share forward passes of `batch_size` (one forward per
    image would run ~3 crops at a time with ground-truth boxes and leave a GPU idle), and `workers`
    loader processes decode the images (and crop them, with roi_crop "pil"). Returns the number of
    backbone forward images."""
    device = next(backbone.parameters()).device
    for i in positions:
        if not len(boxes[i]):
            save_npy(roi_path(out_dir, i), np.zeros((0, backbone.num_features), np.float32))
    loader = DataLoader(_Pixels(paths, [i for i in positions if len(boxes[i])], boxes, p), batch_size=None,
                        num_workers=p.workers)
    pending: list[tuple[int, torch.Tensor]] = []

    def flush() -> None:
        emb = embed_crops(backbone, torch.cat([crops for _, crops in pending]), p.batch_size)
        for (i, crops), rows in zip(pending, np.split(emb, np.cumsum([len(c) for _, c in pending])[:-1]),
                                    strict=True):
            save_npy(roi_path(out_dir, i), rows)
            fault_point("stage2.roi")
        pending.clear()

    meter = progress.Meter("stage 2 RoI embeddings", len(positions), "images", enabled=announce)
    with ForwardCounter(backbone) as counter:
        for i, pixels in loader:
            meter.update()
            pending.append((i, normalised(pixels, device) if p.roi_crop == "pil"  # cropped by the loader
                               else crop_rois(pixels, boxes[i], size=p.roi_size, device=device)))
            if sum(len(crops) for _, crops in pending) >= p.batch_size:
                flush()
        if pending:
            flush()
    return counter.images


def retrieve_all(out_dir: Path, neighbours: np.ndarray, ratio: float) -> list[list[np.ndarray]]:
    """Pairs for every (image, neighbour) from the stored RoI embeddings, in image order, which
    keeps the files of an image and its recent neighbours in a bounded cache."""
    load = functools.lru_cache(maxsize=_ROI_CACHE_IMAGES)(lambda i: np.load(roi_path(out_dir, i)))
    return [[retrieve_pairs(load(i), load(int(j)), ratio) for j in row]
            for i, row in enumerate(neighbours)]


@contextlib.contextmanager
def _timed(timings: dict[str, float], step: str, announce: bool = True) -> Iterator[None]:
    t0 = time.perf_counter()
    with progress.stage(f"stage 2 {step}", announce):
        yield
    timings[step] = round(timings.get(step, 0.0) + time.perf_counter() - t0, 3)


def _sum_over_ranks(value: int, info: DistInfo) -> int:
    if not info.distributed:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=info.device)
    dist.all_reduce(t)
    return int(t.item())


def discover(stage1_dir: Path, paths: list[Path], coco: list[CocoDataset] | None,
             params: Stage2Params, out_dir: Path, info: DistInfo | None = None,
             proposal_dir: Path | None = None) -> Path:
    """Build (or finish) the correspondence artifact of `paths` under `out_dir`; returns its path.

    `coco` (the datasets `paths` come from, in order) supplies image ids, file names and, for
    box_source "gt", the boxes; without it ids are positions and names the file names. Every
    rank must call this with the same arguments.
    Selective-search proposals depend on the images alone, so runs over the same image list with
    another stage 1, K or pair ratio can share `proposal_dir` (default: `out_dir/proposals`);
    a folder made for another image list is refused.
    """
    info = info or DistInfo(0, 1, 0, torch.device("cpu"))
    out_dir, paths = Path(out_dir), [Path(x) for x in paths]
    n, final = len(paths), Path(out_dir) / ARTIFACT
    if coco is not None and [im.path for s in coco for im in s.images] != paths:
        raise ValueError("`coco` does not list exactly `paths`, in order")
    if params.box_source == "gt" and coco is None:
        raise ValueError("box_source 'gt' needs the COCO datasets of the images")
    if not 1 <= params.knn_k < n:
        raise ValueError(f"need 1 <= knn_k < number of images ({n}), got {params.knn_k}")
    stage1_sha = read_manifest(stage1_dir)["backbone_sha256"]
    names = [im.file_name for s in coco for im in s.images] if coco else [x.name for x in paths]
    record = {"stage1_backbone_sha256": stage1_sha, "images": n,
              "file_names_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest(),
              **to_dict(params, for_hash=True)}
    check_inputs(out_dir, record, info)
    proposal_dir = Path(proposal_dir or out_dir / "proposals")
    if final.exists():
        return final
    timings: dict[str, float] = {}

    @functools.cache
    def stage1() -> Method:  # loaded by the first step that needs it, on its rank only
        with _timed(timings, "load_stage1", info.is_main):
            return load_stage1(stage1_dir).to(info.device)

    files = {name: out_dir / name for name in ("image_sizes.npy", "embeddings.npy", "knn.npy", "boxes.npz")}
    if info.is_main and not files["embeddings.npy"].exists():
        online = stage1().online
        with _timed(timings, "embeddings", info.is_main):
            emb, sizes = embed_bank(online, paths, params, info.device)
            save_npy(files["image_sizes.npy"], sizes)
            save_npy(files["embeddings.npy"], emb)
        fault_point("stage2.step")
    if info.is_main and not files["knn.npy"].exists():
        with _timed(timings, "knn", info.is_main):
            save_npy(files["knn.npy"], knn(np.load(files["embeddings.npy"]), params.knn_k))
        fault_point("stage2.step")
    if params.box_source == "selective_search" and not files["boxes.npz"].exists():
        with _timed(timings, "proposals", info.is_main):
            shared_proposals(proposal_dir, paths, params.workers, info)
    barrier(info)
    if info.is_main and not files["boxes.npz"].exists():
        with _timed(timings, "boxes", info.is_main):
            raw = _raw_boxes(params, n, coco, proposal_dir)
            save_boxes(files["boxes.npz"], filtered_boxes(raw, np.load(files["image_sizes.npy"]), params))
        fault_point("stage2.step")
    barrier(info)
    boxes = load_boxes(files["boxes.npz"])
    todo = [i for i in range(info.rank, n, info.world_size) if not roi_path(out_dir, i).exists()]
    backbone = stage1().backbone if todo else None
    with _timed(timings, "roi_embeddings", info.is_main):
        forwards = embed_images(backbone, paths, boxes, todo, out_dir, params, info.is_main) if todo else 0
    forwards = _sum_over_ranks(forwards, info)
    barrier(info)
    if info.is_main:
        neighbours = np.load(files["knn.npy"])
        with _timed(timings, "pairs", info.is_main):
            pairs = retrieve_all(out_dir, neighbours, params.pair_ratio)
        sizes = np.load(files["image_sizes.npy"])
        unreadable = np.flatnonzero(sizes[:, 0] == 0).tolist()
        ids = [im.id for s in coco for im in s.images] if coco else list(range(n))
        # what the pairs were mined from and what came of it; the artifact is keyed by this file's
        # sha256, so how this run went (timings, ranks, work done after a resume) goes to the sidecar
        meta = {**params.info(), "stage1": Path(stage1_dir).name, "stage1_backbone_sha256": stage1_sha,
                "unreadable_images": len(unreadable), "unreadable_positions": unreadable,
                "kept_boxes": int(sum(len(b) for b in boxes))}
        with _timed(timings, "save", info.is_main):
            c = Correspondences(ids, names, boxes, neighbours, pairs, meta)
            c.validate(n_images=n, image_sizes=[tuple(s) for s in sizes.tolist()])
            c.save(final)
        atomic_write_json(out_dir / TIMINGS, {**meta, "roi_forward_images": forwards, "world_size": info.world_size,
                                              "timings": timings})
    barrier(info)
    return final
