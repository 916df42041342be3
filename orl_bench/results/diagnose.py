"""`orl-bench diagnose`: why an artifact scores what it does, each number beside its chance level.

1. knn_precision: the share of each image's K nearest neighbours under the artifact's image
   embedding (ORL stage 2's bank and kNN) that share an object category with it, vs K random
   other images.
2. pair_quality: stage 2's RoI pairs judged against ground truth (pair_quality.py), for an ORL
   artifact (the pairs it trained from) or a stage-1 artifact (the pairs mined with it).
3. view_premise: the paper's premise on the data: how often two random crops of one scene (the
   method's RandomResizedCrop) are dominated by different objects, and how often one shows none.
4. svm_map: the artifact's stored VOC07 SVM records per layer, beside the chance record.

Nothing is trained here: a missing artifact is an error naming the command that builds it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import nn
from torchvision.transforms import RandomResizedCrop

from orl_bench import pipeline
from orl_bench.config import PretrainConfig, TaskConfig, config_hash
from orl_bench.data.coco import CocoDataset, category_matrix
from orl_bench.data.sources import ImageList
from orl_bench.data.views import ViewParams, seeded_call
from orl_bench.engine.checkpoint import load_backbone, read_manifest
from orl_bench.io import atomic_write_json, atomic_write_text
from orl_bench.methods.orl.correspondence import Correspondences
from orl_bench.methods.orl.pair_quality import NO_OBJECT, pair_quality
from orl_bench.methods.orl.retrieval import knn
from orl_bench.methods.orl.stage2 import ARTIFACT, Stage2Params, embed_bank, load_stage1
from orl_bench.registry import METHODS
from orl_bench.results.records import CHANCE, load_records, records_path
from orl_bench.tasks.features import LAYERS

TASK = "voc07_svm"


def find_artifact(workdir: Path, cfg: PretrainConfig, build_command: str) -> Path:
    """The complete artifact trained with `cfg`, found by the config hash its manifest records.
    Unlike pipeline.ensure_pretrained this builds nothing, not even the earlier stages whose
    files key a multi-stage method's folder name."""
    want = config_hash(cfg)
    found = sorted(m.parent for m in (Path(workdir) / "artifacts").glob(f"{cfg.method['name']}-*/manifest.json")
                   if json.loads(m.read_text()).get("config_hash") == want)
    if not found:
        raise FileNotFoundError(f"no complete {cfg.method['name']} artifact of this recipe in {workdir}/artifacts; "
                                f"run `{build_command}` first, or pass --artifact DIR")
    if len(found) > 1:
        raise ValueError(f"{len(found)} artifacts have this config (built from different earlier stages): "
                         f"{', '.join(map(str, found))}; choose one with --artifact DIR")
    return found[0]


# 1. Image kNN precision ------------------------------------------------------------------------

def chance_precision(labels: np.ndarray) -> float:
    """The precision K uniformly random other images would have: per query (an image with a
    category), the share of the other N - 1 images sharing one, averaged over queries. Exact;
    in chunks of queries, as N x N does not fit in memory for COCO."""
    x = labels.astype(np.float32)
    queries = np.flatnonzero(labels.any(axis=1))
    chunks = np.array_split(queries, max(1, len(queries) // 1024))
    sharing = np.concatenate([(x[q] @ x.T > 0).sum(axis=1) - 1 for q in chunks])  # - 1: the query itself
    return float((sharing / (len(labels) - 1)).mean())


def knn_precision(embeddings: np.ndarray, labels: np.ndarray, k: int) -> dict[str, Any]:
    """Share of each query's k cosine neighbours (itself excluded, as stage 2) sharing a category
    with it, over the images with at least one category; every image can be a neighbour."""
    neighbours = knn(embeddings, k)
    queries = np.flatnonzero(labels.any(axis=1))
    shared = (labels[queries, None, :] & labels[neighbours[queries]]).any(axis=2)
    return {"k": k, "queries": len(queries), "precision": round(float(shared.mean()), 4),
            "chance": round(chance_precision(labels), 4)}


def image_encoder(folder: Path, cfg: PretrainConfig) -> tuple[nn.Module, str]:
    """Stage 2's embedding network (backbone -> projector) when the method has one, else the
    backbone's pooled features (random initialisation, methods without a projector)."""
    if cfg.method["name"] != pipeline.RANDOM:
        try:
            return load_stage1(folder).online, "backbone -> projector, as stage 2"
        except TypeError:  # load_stage1's refusal of a method without `online`
            pass
    return load_backbone(folder)[0], "backbone, pooled (the method has no projector)"


def bank_params(params: Any) -> tuple[Stage2Params, str]:
    """The artifact's own stage-2 settings if it has some (ORL), else K = 10 (docs/protocols.md 2) with the
    bank at the view size after a 256/224 resize, as every shipped ORL recipe sizes it."""
    if getattr(params, "stage2", None):
        return params.stage2, "the artifact's stage-2 params"
    size = views_of(params)[0].size
    return Stage2Params(embed_size=size, embed_resize_short=round(size * 256 / 224)), "docs/protocols.md 2 default K"


def mined_with(folder: Path, backbone_sha256: str) -> list[Path]:
    """Stage-2 folders (beside the artifact, under <workdir>/artifacts) with this artifact as stage 1."""
    return sorted(d for d in folder.parent.glob("orl-stage2-*") if (d / "params.json").exists()
                  and json.loads((d / "params.json").read_text())["stage1_backbone_sha256"] == backbone_sha256)


def stored_bank(mined: list[Path], p: Stage2Params, n_images: int) -> Path | None:
    """The embeddings.npy a stage-2 run computed with this artifact over these images and bank
    settings: the very bank, so it is not recomputed."""
    for d in mined:
        built = json.loads((d / "params.json").read_text())
        if (d / "embeddings.npy").exists() and (built["images"], built["embed_resize_short"], built["embed_size"]) \
                == (n_images, p.embed_resize_short, p.embed_size):
            return d / "embeddings.npy"
    return None


def knn_section(folder: Path, cfg: PretrainConfig, params: Any, images: ImageList, mined: list[Path],
                device: torch.device) -> dict[str, Any]:
    labels = category_matrix(images.coco)
    if not labels.any():
        return {"not_applicable": "the pretraining images carry no object categories"}
    p, k_from = bank_params(params)
    stored = stored_bank(mined, p, len(images.paths))
    if stored:
        embeddings, encoder = np.load(stored), f"backbone -> projector, the bank stage 2 stored in {stored.parent.name}"
    else:
        network, encoder = image_encoder(folder, cfg)
        embeddings = embed_bank(network.to(device), images.paths, p, device)[0]
    return {**knn_precision(embeddings, labels, p.knn_k), "images": len(labels), "k_from": k_from,
            "embedding": encoder, "bank": f"resize {p.embed_resize_short}, centre crop {p.embed_size} px"}


# 2. Stage-2 pair quality -----------------------------------------------------------------------

def pair_section(folder: Path, manifest: dict, images: ImageList, mined: list[Path]) -> dict[str, Any]:
    inputs = manifest.get("inputs", {})
    if "correspondences" in inputs:  # its stage-2 folder sits beside it, whatever path was recorded
        runs = [folder.parent / Path(inputs["correspondences"]["path"]).parent.name]
        if not (runs[0] / ARTIFACT).exists():
            return {"not_applicable": f"the stage-2 folder this artifact trained from ({runs[0]}) is gone"}
    else:
        runs = [d for d in mined if (d / ARTIFACT).exists()]
    if not runs:
        return {"not_applicable": "no stage-2 correspondences: the artifact is not ORL and no ORL stage 2 was "
                                  "mined with it as stage 1 (`orl-bench viz pairs --recipe R` builds one, R an orl "
                                  "recipe whose method.stage1 is this artifact's recipe)"}
    if not all(s.categories for s in images.coco):
        return {"not_applicable": "the pretraining images have no ground-truth categories to judge pairs by"}
    out = []
    for d in runs:
        c = Correspondences.load(d / ARTIFACT, n_images=len(images.paths))
        out.append({"stage2": d.name, "knn_k": int(c.knn.shape[1]), "pair_ratio": c.info.get("knn_bbox_pair_ratio"),
                    "box_source": c.info.get("box_source"), **pair_quality(c, images.coco)})
    return {"runs": out}


# 3. The two-view premise -----------------------------------------------------------------------

def views_of(params: Any) -> tuple[ViewParams, str]:
    views = getattr(params, "views", None)
    return (views, "the method's views") if views else (ViewParams(), "BYOL's default views (the method has none)")


def object_masks(anns: list[dict], height: int, width: int) -> tuple[np.ndarray, int]:
    """(n, H, W) uint8 masks of the annotations, and how many were drawn from the box because the
    annotation has no segmentation."""
    masks, from_boxes = [], 0
    for a in anns:
        seg = a.get("segmentation")
        if not seg:
            x0, y0, w, h = a["bbox"]
            mask = np.zeros((height, width), np.uint8)
            mask[round(y0):round(y0 + h), round(x0):round(x0 + w)] = 1
            from_boxes += 1
        elif isinstance(seg, list):  # polygons, as pycocotools' COCO.annToRLE
            mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(seg, height, width)))
        else:  # RLE, uncompressed (list counts) or compressed
            mask = mask_utils.decode(mask_utils.frPyObjects(seg, height, width) if isinstance(seg["counts"], list)
                                     else seg)
        masks.append(mask)
    return np.stack(masks) if masks else np.zeros((0, height, width), np.uint8), from_boxes


def dominant_object(masks: np.ndarray, crop: tuple[int, int, int, int]) -> int:
    """Index of the object with the largest visible area inside the (top, left, h, w) crop, or -1."""
    top, left, h, w = crop
    visible = masks[:, top:top + h, left:left + w].sum(axis=(1, 2))
    return int(visible.argmax()) if visible.max(initial=0) > 0 else NO_OBJECT


def different_rate(weights: np.ndarray) -> float:
    """Probability that two independent draws with these weights differ."""
    p = weights / weights.sum()
    return float(1 - (p ** 2).sum())


def _share(count: int, total: int) -> float | None:
    return round(count / total, 4) if total else None


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def view_premise(coco: list[CocoDataset], views: ViewParams, n_images: int = 500, seed: int = 0) -> dict[str, Any]:
    """Two RandomResizedCrop views (torchvision's sampler, the views' scale and ratio) of each of
    `n_images` images sampled with `seed` from the labelled datasets. The chance column is two
    point-sized views (independent uniform pixels): the limit of small crops."""
    if n_images < 1:
        raise ValueError(f"need at least 1 image for the two-view statistics, got {n_images}")
    sets = [(s, i) for s in coco if s.categories for i in range(len(s))]
    if not sets:
        return {"not_applicable": "the pretraining images have no instance annotations"}
    picked = [sets[j] for j in np.random.default_rng(seed).choice(len(sets), min(n_images, len(sets)), replace=False)]
    # the sampler reads only the size of the image it is given: an empty tensor of that size
    crops = seeded_call(seed, 0, lambda: [[RandomResizedCrop.get_params(
        torch.empty(0, s.images[i].height, s.images[i].width), list(views.scale), list(views.ratio))
        for _ in range(2)] for s, i in picked])
    objects = from_boxes = no_object = pairs = different = different_category = 0
    background, chance_object, chance_category = [], [], []
    for (s, i), pair in zip(picked, crops, strict=True):
        anns = [a for a in s.annotations(i) if not a.get("iscrowd", 0)]  # aligned with category_ids(i)
        masks, boxes = object_masks(anns, s.images[i].height, s.images[i].width)
        objects, from_boxes = objects + len(anns), from_boxes + boxes
        background.append(1 - float(masks.any(axis=0).mean()))
        a, b = (dominant_object(masks, crop) for crop in pair)
        no_object += (a == NO_OBJECT) + (b == NO_OBJECT)
        if NO_OBJECT not in (a, b):
            categories, areas = s.category_ids(i), masks.sum(axis=(1, 2)).astype(np.float64)
            pairs, different = pairs + 1, different + (a != b)
            different_category += int(categories[a] != categories[b])
            chance_object.append(different_rate(areas))
            chance_category.append(different_rate(np.bincount(np.unique(categories, return_inverse=True)[1],
                                                              weights=areas)))
    area_source = "masks" if not from_boxes else "boxes" if from_boxes == objects else \
        f"masks ({from_boxes} of {objects} objects from boxes: no segmentation)"
    return {"images": len(picked), "seed": seed, "scale": list(views.scale),
            "ratio": [round(r, 4) for r in views.ratio], "area_source": area_source,
            "objects_per_image": round(objects / len(picked), 2),
            "views_without_object": _share(no_object, 2 * len(picked)),
            "chance_views_without_object": _mean(background),
            "pairs_both_on_objects": _share(pairs, len(picked)),
            "different_dominant_object": _share(different, pairs), "chance_different_object": _mean(chance_object),
            "different_dominant_category": _share(different_category, pairs),
            "chance_different_category": _mean(chance_category)}


# 4. SVM mAP per layer --------------------------------------------------------------------------

def svm_section(workdir: Path, folder: Path, backbone_sha256: str) -> dict[str, Any]:
    records = [r for r in load_records(workdir) if r["task"] == TASK and r["metric"] == "mAP"]
    chance = {r["dataset"]: r["value"] for r in records if r["method"] == CHANCE}
    rows = sorted(({"layer": r["layer"], "mAP": r["value"], "chance": chance.get(r["dataset"]), "dataset": r["dataset"],
                    "task_config_hash": r["task_config_hash"][:12]}
                   for r in records if r["artifact_sha256"] == backbone_sha256),
                  key=lambda row: (row["dataset"], row["task_config_hash"], LAYERS.index(row["layer"])))
    if not rows:
        return {"not_applicable": f"no {TASK} records of this artifact in {records_path(workdir)}: run "
                                  f"`orl-bench eval --task {TASK} --artifact {folder}`, or add --eval-layers res5"}
    return {"rows": rows}


# -----------------------------------------------------------------------------------------------

def diagnose(folder: Path, workdir: Path, device: torch.device, eval_task: TaskConfig | None = None,
             view_images: int = 500, seed: int = 0) -> dict[str, Any]:
    """Every section for the artifact in `folder`; `eval_task` (a voc07_svm config) first runs that
    benchmark through the pipeline, which stores its records (or finds them stored)."""
    folder = Path(folder)
    manifest, cfg = read_manifest(folder), pipeline.artifact_config(folder)
    if eval_task is not None:
        pipeline.evaluate(eval_task, pipeline.artifact_ref(folder), workdir, device, pipeline.record_fields(cfg, folder))
    images = pipeline.pretrain_images(cfg.data, workdir)
    params = None if cfg.method["name"] == pipeline.RANDOM else METHODS.get(cfg.method["name"]).params_of(cfg)
    mined = mined_with(folder, manifest["backbone_sha256"])
    views, crop_from = views_of(params)
    return {"artifact": str(folder), "name": folder.name, "method": manifest["method"],
            "recipe": manifest.get("recipe", "-"), "seed": cfg.train.seed,
            "backbone_sha256": manifest["backbone_sha256"],
            "images": {"key": images.key, "count": len(images.paths)},
            "knn_precision": knn_section(folder, cfg, params, images, mined, device),
            "pair_quality": pair_section(folder, manifest, images, mined),
            "view_premise": {**view_premise(images.coco, views, view_images, seed), "crops_from": crop_from},
            "svm_map": svm_section(workdir, folder, manifest["backbone_sha256"])}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(map(str, row)) + " |" for row in rows)]


def to_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Diagnostics: {report['name']}", "",
             f"{report['method']}, recipe {report['recipe']}, seed {report['seed']}; "
             f"{report['images']['count']} pretraining images ({report['images']['key']}); `{report['artifact']}`"]

    def section(title: str, body: dict[str, Any], render: Any) -> None:
        lines.extend(["", f"## {title}", ""])
        lines.extend([f"_Not applicable: {body['not_applicable']}._"] if "not_applicable" in body else render(body))

    section("1. Image kNN precision", report["knn_precision"], lambda b: [
        f"Embedding: {b['embedding']} ({b['bank']}); K = {b['k']} ({b['k_from']}); "
        f"{b['queries']} of {b['images']} images hold an object.", "",
        *_table(["measure", "value", "chance (K random other images)"],
                [["neighbours sharing a category with the query", _pct(b["precision"]), _pct(b["chance"])]])])
    section("2. Stage-2 pair quality", report["pair_quality"], lambda b: _table(
        ["stage 2", "K", "pair ratio", "boxes on objects", "pairs both on objects", "same category (both on objects)",
         "chance (two random object boxes)"],
        [[r["stage2"], r["knn_k"], r["pair_ratio"], _pct(r["boxes_on_objects"]), _pct(r["pairs_both_on_objects"]),
          _pct(r["same_category_given_both"]), _pct(r["chance_same_category"])] for r in b["runs"]]))
    section("3. Two views of one scene (the paper's premise)", report["view_premise"], lambda b: [
        f"RandomResizedCrop scale {b['scale']}, ratio {b['ratio']} ({b['crops_from']}); {b['images']} images x "
        f"2 views, seed {b['seed']}; visible areas from {b['area_source']}; {b['objects_per_image']} objects "
        "per image. Chance: two point-sized views (independent random pixels).", "",
        *_table(["measure", "value", "chance"], [
            ["views showing no object", _pct(b["views_without_object"]), _pct(b["chance_views_without_object"])],
            ["pairs with different dominant objects (both views on an object: "
             f"{_pct(b['pairs_both_on_objects'])})", _pct(b["different_dominant_object"]),
             _pct(b["chance_different_object"])],
            ["pairs with different dominant categories", _pct(b["different_dominant_category"]),
             _pct(b["chance_different_category"])]])])
    section("4. VOC07 linear SVM mAP per layer", report["svm_map"], lambda b: _table(
        ["layer", "mAP", "chance", "dataset", "task config"],
        [[r["layer"], f"{r['mAP']:.2f}", "-" if r["chance"] is None else f"{r['chance']:.2f}", r["dataset"],
          r["task_config_hash"]]
         for r in b["rows"]]))
    return "\n".join(lines) + "\n"


def write_report(workdir: Path, report: dict[str, Any]) -> str:
    """Write <workdir>/diagnostics/<artifact>.json and .md; returns the markdown."""
    text = to_markdown(report)
    out = Path(workdir) / "diagnostics"
    atomic_write_json(out / f"{report['name']}.json", report)
    atomic_write_text(out / f"{report['name']}.md", text)
    return text
