"""Figures a researcher wants to look at; each is a PNG written atomically.

`result_bars` draws a report's rows as bars with error bars beside the chance level;
`learning_curves` draws them against pretraining epochs, one line per method setting;
`low_shot_curves` against the labelled images per class k (Table 2 as a plot).
`loss_curves` draws the training loss of each method's runs from their logs; `activation_maps` is
the paper's Figure 4, where backbones' last-stage features are strong, with a number: the share
of the activation mass inside the objects' boxes.
`correspondence_grid` is the paper's Figure 3: ORL's stage-2 RoI pairs across images. Each row is
one query image: the image and its nearest neighbour that holds pairs, with the top-ranked pairs
(pairs are stored by decreasing RoI similarity) drawn in matching colours, then the crops of each
pair side by side, the crops that stage 3 turns into its inter-RoI patches.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

# matplotlib's object API, not pyplot: no global figure state and no display backend needed
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
import numpy as np
import torch

from orl_bench.data.images import read_rgb
from orl_bench.data.views import IMAGENET_MEAN, IMAGENET_STD
from orl_bench.io import atomic_write
from orl_bench.methods.orl.correspondence import Correspondences
from orl_bench.results.records import CHANCE

class NothingToDraw(ValueError):
    """The inputs hold nothing this figure shows (no such rows, no pairs); other ValueErrors are bad input."""


COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4")


def _with_pairs(c: Correspondences) -> list[int]:
    return [i for i, row in enumerate(c.pairs) if any(len(p) for p in row)]


def correspondence_grid(c: Correspondences, paths: list[Path], out: Path, rows: int = 6,
                        pairs_per_row: int = 2, seed: int = 0) -> list[int]:
    """Draw `rows` query images sampled with `seed` among those with pairs; returns their
    positions. `paths` are the image files in the correspondences' order."""
    if len(paths) != len(c):
        raise ValueError(f"{len(paths)} image paths for correspondences over {len(c)} images")
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    if not 1 <= pairs_per_row <= len(COLOURS):
        raise ValueError(f"pairs_per_row must be in 1..{len(COLOURS)}, got {pairs_per_row}")
    candidates = _with_pairs(c)
    if not candidates:
        raise NothingToDraw("the correspondences hold no RoI pairs to draw")
    queries = sorted(random.Random(seed).sample(candidates, min(rows, len(candidates))))
    cols = 2 + 2 * pairs_per_row
    fig = Figure(figsize=(1.8 * cols, 1.9 * len(queries)))
    axes = fig.subplots(len(queries), cols, squeeze=False)
    for ax_row, i in zip(axes, queries, strict=True):
        k = next(k for k, p in enumerate(c.pairs[i]) if len(p))
        j = int(c.knn[i, k])
        query, neighbour = read_rgb(paths[i]), read_rgb(paths[j])
        ax_row[0].imshow(query)
        ax_row[0].set_title(f"query {c.image_ids[i]}", fontsize=7)
        ax_row[1].imshow(neighbour)
        ax_row[1].set_title(f"neighbour #{k + 1}: {c.image_ids[j]}", fontsize=7)
        shown = c.pairs[i][k][:pairs_per_row].tolist()
        for ax in ax_row[2 + 2 * len(shown):]:
            ax.set_visible(False)  # this neighbour holds fewer pairs
        for n, (a, b) in enumerate(shown):
            colour = COLOURS[n]
            for ax, image, box, col in ((ax_row[0], query, c.boxes[i][a], 2 + 2 * n),
                                        (ax_row[1], neighbour, c.boxes[j][b], 3 + 2 * n)):
                x, y, w, h = box.tolist()
                ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor=colour, linewidth=1.5))
                ax_row[col].imshow(image.crop((round(x), round(y), round(x + w), round(y + h))))
                for spine in ax_row[col].spines.values():
                    spine.set_edgecolor(colour)
                    spine.set_linewidth(2)
        for ax in ax_row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("ORL stage 2: top-ranked RoI pairs (query box | neighbour box)", fontsize=9)
    fig.tight_layout()
    atomic_write(Path(out), lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    return queries


def result_bars(rows: list[dict], out: Path, layer: str = "res5") -> int:
    """A bar chart of `orl-bench report` rows: one panel per (task, metric, dataset), one bar per
    method row at `layer` (mean with a 1-std error bar, seeds in the label) and the task's chance
    level as a dashed line, so every number is read against its floor. Returns the bars drawn."""
    panels = _panels(rows, layer)
    if not panels:
        raise NothingToDraw(f"no report rows at layer {layer} to draw")
    fig = Figure(figsize=(1.2 + 1.1 * max(len(v) for v in panels.values()), 3.6 * len(panels)))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    drawn = 0
    for ax, ((task, metric, dataset), items) in zip(axes, panels.items()):
        # the floor first, the ceiling last: random, the methods, supervised
        bars = sorted((r for r in items if r["method"] != CHANCE),
                      key=lambda r: (r["method"] != "random", r["method"] == "supervised"))
        labels = [f"{r['method']}\n{r['recipe']}" + (f", {r['epochs']} ep" if r["epochs"] else "") +
                  f"\nn={r['n']}" for r in bars]
        ax.bar(range(len(bars)), [r["mean"] for r in bars], yerr=[r["std"] for r in bars], capsize=4,
               color=COLOURS[2], alpha=0.8)
        for r in items:
            if r["method"] == CHANCE:
                ax.axhline(r["mean"], color="k", linestyle="--", linewidth=1, label=f"chance {r['mean']:.1f}")
                ax.legend(fontsize=7, loc="upper left")
        ax.set_xticks(range(len(bars)), labels, fontsize=7)
        ax.set_ylabel(f"{metric} ({layer})")
        ax.set_title(f"{task} on {dataset}: mean ± std over seeds", fontsize=8)
        drawn += len(bars)
    fig.tight_layout()
    atomic_write(Path(out), lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    return drawn


def _panels(rows: list[dict], layer: str) -> dict[tuple, list[dict]]:
    """Rows at `layer` (and chance rows) per (task, metric, dataset), only panels with a method row."""
    panels: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["method"] == CHANCE or r["layer"] == layer:
            panels.setdefault((r["task"], r["metric"], r["dataset"]), []).append(r)
    return {k: v for k, v in panels.items() if any(r["method"] != CHANCE for r in v)}


def _line_panels(panels: dict[tuple, list[dict]], out: Path, layer: str, title: str,
                 draw: Callable[[Axes, list[dict]], int]) -> int:
    """One panel per (task, metric, dataset) on a log2 x axis; `draw` fills a panel and returns
    the lines it drew. Writes the PNG and returns the lines drawn in all."""
    fig = Figure(figsize=(7.5, 4.2 * len(panels)))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    drawn = 0
    for ax, ((task, metric, dataset), items) in zip(axes, panels.items()):
        ax.set_xscale("log", base=2)  # before `draw` sets the ticks, which the scale would reset
        drawn += draw(ax, items)
        ax.set_ylabel(f"{metric} ({layer})")
        ax.set_title(f"{task} on {dataset}: {title}", fontsize=8)
        ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    atomic_write(Path(out), lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    return drawn


def learning_curves(rows: list[dict], out: Path, layer: str = "res5") -> int:
    """`orl-bench report` rows against pretraining epochs: one line per (method, variant) over its
    epoch counts (mean with a 1-std error bar), random initialisation (epochs 0) and chance as
    horizontal lines. An ORL row's epochs are its stage 3's. Returns the lines drawn."""
    panels = {key: items for key, items in _panels(rows, layer).items()  # low-shot rows: low_shot_curves
              if any(r["epochs"] for r in items) and all(r["k"] is None for r in items)}
    if not panels:
        raise NothingToDraw(f"no report rows with pretraining epochs at layer {layer} to draw")

    def draw(ax: Axes, items: list[dict]) -> int:
        lines: dict[tuple, list[dict]] = {}
        for r in items:
            if r["method"] == CHANCE or not r["epochs"]:
                style = ("k", "--") if r["method"] == CHANCE else ("grey", ":")
                ax.axhline(r["mean"], color=style[0], linestyle=style[1], linewidth=1,
                           label=f"{r['method']} {r['mean']:.1f}")
            else:
                lines.setdefault((r["method"], r["variant"]), []).append(r)
        for i, ((method, variant), points) in enumerate(sorted(lines.items())):
            points.sort(key=lambda r: r["epochs"])
            ax.errorbar([r["epochs"] for r in points], [r["mean"] for r in points], yerr=[r["std"] for r in points],
                        marker="o", capsize=3, color=COLOURS[i % len(COLOURS)],
                        label=method + (f" ({variant})" if variant else ""))
        epochs = sorted({r["epochs"] for v in lines.values() for r in v})
        ax.set_xticks(epochs, [str(e) for e in epochs])
        ax.set_xlabel("pretraining epochs (ORL: stage 3's)")
        return len(lines)

    return _line_panels(panels, out, layer, "mean ± std over seeds", draw)


def low_shot_curves(rows: list[dict], out: Path, layer: str = "res5") -> int:
    """`orl-bench report` rows of a low-shot task against k: one line per (method, recipe, epochs,
    variant), mean over pretraining seeds with a band of 1 std; chance as a horizontal line.
    Each row's value is already the mean over the task's draws. Returns the lines drawn."""
    panels = {key: items for key, items in _panels(rows, layer).items() if any(r["k"] is not None for r in items)}
    if not panels:
        raise NothingToDraw(f"no low-shot report rows (with k) at layer {layer} to draw")

    def draw(ax: Axes, items: list[dict]) -> int:
        lines: dict[tuple, list[dict]] = {}
        for r in items:
            if r["method"] == CHANCE:
                ax.axhline(r["mean"], color="k", linestyle="--", linewidth=1, label=f"chance {r['mean']:.1f}")
            elif r["k"] is not None:
                lines.setdefault((r["method"], r["recipe"], r["epochs"], r["variant"]), []).append(r)
        for i, ((method, recipe, epochs, variant), points) in enumerate(sorted(lines.items(), key=str)):
            points.sort(key=lambda r: r["k"])
            x, mean = [r["k"] for r in points], [r["mean"] for r in points]
            colour = COLOURS[i % len(COLOURS)]
            ax.plot(x, mean, marker="o", color=colour, label=f"{method} ({recipe}, {epochs} ep"
                    + (f", {variant}" if variant else "") + f", n={points[0]['n']})")
            ax.fill_between(x, [m - r["std"] for m, r in zip(mean, points)],
                            [m + r["std"] for m, r in zip(mean, points)], color=colour, alpha=0.15)
        ks = sorted({r["k"] for v in lines.values() for r in v})
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("labelled images per class (k)")
        return len(lines)

    return _line_panels(panels, out, layer, "mean over pretraining seeds, band 1 std", draw)


def loss_curves(runs: dict[str, list[tuple[int, list[dict]]]], out: Path) -> int:
    """Training loss per method: one panel per method (losses differ in scale between methods),
    one line per pretraining seed over the optimiser steps of its `log.jsonl`. `runs` maps a
    panel title to (seed, log entries) pairs. Returns the lines drawn."""
    panels = {title: seeds for title, seeds in runs.items() if any(any("loss" in e for e in log) for _, log in seeds)}
    if not panels:
        raise NothingToDraw("no training-loss entries in the logs to draw")
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(3.6 * cols, 2.8 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    drawn = 0
    for ax, (title, seeds) in zip(axes, panels.items()):
        for seed, log in sorted(seeds, key=lambda s: s[0]):
            points = [(e["step"], e["loss"]) for e in log if "loss" in e and "step" in e]
            if points:
                ax.plot(*zip(*points), color=COLOURS[seed % len(COLOURS)], linewidth=1, label=f"seed {seed}")
                drawn += 1
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("optimiser step", fontsize=7)
        ax.set_ylabel("training loss", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    atomic_write(Path(out), lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    return drawn


def activation_maps(backbones: dict[str, torch.nn.Module], images: list[np.ndarray], boxes: list[np.ndarray],
                    out: Path, layer: str = "res5") -> dict[str, float]:
    """The paper's Figure 4: where each backbone's last-stage features are strong. Per image (a row):
    the image with its ground-truth boxes, then per backbone the channel-wise L2 norm of its
    `layer` map, upsampled to the image and overlaid (scaled per image). Returns, per backbone, the
    share of the activation mass inside the boxes (averaged over the images), and under
    `box_area` the share of the image the boxes cover, which a map blind to objects would get.
    `images` are uint8 HxWx3 arrays, `boxes` xywh pixel boxes per image."""
    if not images or len(images) != len(boxes):
        raise ValueError(f"need one box array per image, got {len(images)} images and {len(boxes)} box arrays")
    if not backbones:
        raise ValueError("no backbones to draw activation maps of")
    maps = {name: [_norm_map(model, image, layer) for image in images] for name, model in backbones.items()}
    inside = [_box_mask(image.shape[:2], b) for image, b in zip(images, boxes)]
    shares = {name: float(np.mean([(m * mask).sum() / m.sum() for m, mask in zip(found, inside)]))
              for name, found in maps.items()}
    shares["box_area"] = float(np.mean([mask.mean() for mask in inside]))
    cols = 1 + len(backbones)
    fig = Figure(figsize=(2.0 * cols, 2.05 * len(images) + 0.4))
    axes = fig.subplots(len(images), cols, squeeze=False)
    for row, (ax_row, image, image_boxes) in enumerate(zip(axes, images, boxes)):
        ax_row[0].imshow(image)
        for x, y, w, h in image_boxes.tolist():
            ax_row[0].add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="w", linewidth=1))
        for ax, name in zip(ax_row[1:], backbones):
            m = maps[name][row]
            ax.imshow(image)
            ax.imshow((m - m.min()) / max(float(m.max() - m.min()), 1e-12), cmap="jet", alpha=0.5)
        for ax in ax_row:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_title("image, object boxes", fontsize=7)
    for ax, name in zip(axes[0][1:], backbones):
        ax.set_title(f"{name}: {layer} norm\n{100 * shares[name]:.0f}% inside boxes", fontsize=7)
    fig.suptitle(f"Activation mass inside object boxes (boxes cover {100 * shares['box_area']:.0f}% of the image)",
                 fontsize=8)
    fig.tight_layout()
    atomic_write(Path(out), lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    return shares


@torch.no_grad()
def _norm_map(model: torch.nn.Module, image: np.ndarray, layer: str) -> np.ndarray:
    """The channel-wise L2 norm of `layer` for one image (ImageNet-normalised, eval mode),
    bilinearly upsampled to the image's size."""
    x = torch.tensor(image).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    model.eval()
    feature = model.taps(x, {layer})[layer].norm(dim=1, keepdim=True)
    return torch.nn.functional.interpolate(feature, size=image.shape[:2], mode="bilinear",
                                           align_corners=False)[0, 0].numpy()


def _box_mask(size: tuple[int, int], boxes: np.ndarray) -> np.ndarray:
    mask = np.zeros(size, np.float64)
    for x, y, w, h in np.round(boxes).astype(int).tolist():
        mask[max(y, 0):y + h, max(x, 0):x + w] = 1
    return mask
