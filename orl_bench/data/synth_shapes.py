"""The embedded scenes' shape families: (filled polygons, hole polygons) inside the unit disc,
each with its own per-instance jitter (proportions, vertex positions), drawn from the scene's RNG."""
from __future__ import annotations

from typing import Callable

import numpy as np

Poly = np.ndarray  # (k, 2) float, unit-disc coordinates


def _polar(angles: np.ndarray, radii: np.ndarray | float) -> Poly:
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)


def _ellipse(rx: float, ry: float, cx: float = 0.0, n: int = 32) -> Poly:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(a), ry * np.sin(a)], 1)


def _fit(p: Poly) -> Poly:
    """Centre the polygon's box on the origin and scale it into the unit disc."""
    p = p - (p.max(0) + p.min(0)) / 2
    return p / np.hypot(p[:, 0], p[:, 1]).max()


def _regular(rng: np.random.Generator, k: int, jitter: float) -> Poly:
    a = np.arange(k) * 2 * np.pi / k + rng.uniform(-jitter, jitter, k)
    return _fit(_polar(a, rng.uniform(0.85, 1.0, k)))


def _star(rng):
    inner = rng.uniform(0.38, 0.55)
    radii = np.where(np.arange(10) % 2 == 0, 1.0, inner) * rng.uniform(0.85, 1, 10)
    return [_fit(_polar(np.arange(10) * np.pi / 5 + rng.uniform(-0.08, 0.08, 10), radii))], []


def _ring(rng):
    ry, inner = rng.uniform(0.8, 1.0), rng.uniform(0.45, 0.65)
    return [_ellipse(1.0, ry)], [_ellipse(inner, inner * ry, rng.uniform(-0.1, 0.1))]


def _cross(rng):
    t = rng.uniform(0.17, 0.25)  # half thickness of the bars
    right, up, left, down = np.sqrt(1 - t * t) * rng.uniform(0.75, 1.0, 4)
    return [np.array([(t, -down), (t, -t), (right, -t), (right, t), (t, t), (t, up), (-t, up),
                      (-t, t), (-left, t), (-left, -t), (-t, -t), (-t, -down)])], []


def _crescent(rng):
    r = rng.uniform(0.7, 0.9)
    return [_ellipse(1.0, 1.0)], [_ellipse(r, r, rng.uniform(0.3, 0.5))]


def _triangle(rng):
    return [_regular(rng, 3, 0.2)], []


def _hexagon(rng):
    return [_regular(rng, 6, 0.1)], []


def _heart(rng):
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    x = 16 * np.sin(t) ** 3 * rng.uniform(0.85, 1.1)
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return [_fit(np.stack([x, y], 1))], []


def _arrow(rng):
    w, h, head = rng.uniform(0.12, 0.22), rng.uniform(0.45, 0.6), rng.uniform(0.45, 0.65)
    neck = 1 - head
    return [_fit(np.array([(-1, -w), (neck, -w), (neck, -h), (1, 0), (neck, h), (neck, w),
                           (-1, w)]))], []


def _lshape(rng):
    t, a, b = rng.uniform(0.3, 0.45), rng.uniform(0.8, 1.0), rng.uniform(0.8, 1.0)
    return [_fit(np.array([(0, 0), (a, 0), (a, t), (t, t), (t, b), (0, b)]))], []


def _ellipse_shape(rng):
    return [_ellipse(1.0, rng.uniform(0.4, 0.65))], []


def _chevron(rng):
    t, depth = rng.uniform(0.25, 0.4), rng.uniform(0.6, 1.0)
    return [_fit(np.array([(-1, 0), (0, depth), (1, 0), (1, -t), (0, depth - t), (-1, -t)]))], []


def _semicircle(rng):
    a = np.linspace(0, np.pi, 17)
    return [_fit(_polar(a, 1.0) * (1.0, rng.uniform(0.7, 1.0)))], []


def _diamond(rng):
    return [_fit(np.array([(1, 0), (0, rng.uniform(0.45, 0.65)), (-1, 0), (0, -rng.uniform(0.45, 0.65))]))], []


def _tshape(rng):
    t, bar = rng.uniform(0.14, 0.22), rng.uniform(0.75, 1.0)
    return [_fit(np.array([(-bar, 1), (bar, 1), (bar, 1 - 2 * t), (t, 1 - 2 * t), (t, -1), (-t, -1),
                           (-t, 1 - 2 * t), (-bar, 1 - 2 * t)]))], []


def _hourglass(rng):
    waist = rng.uniform(0.08, 0.2)
    return [_fit(np.array([(-1, -1), (1, -1), (waist, 0), (1, 1), (-1, 1), (-waist, 0)]) *
                 (rng.uniform(0.6, 0.8), 1.0))], []


def _dumbbell(rng):
    r, t = rng.uniform(0.3, 0.4), rng.uniform(0.08, 0.14)
    bar = np.array([(-0.6, -t), (0.6, -t), (0.6, t), (-0.6, t)])
    return [_ellipse(r, r, -1 + r), _ellipse(r, r, 1 - r), bar], []


def _clover(rng):
    r = rng.uniform(0.38, 0.45)
    lobes = [_ellipse(r, r, 0.0) + _polar(np.array([a]), 1 - r) for a in np.arange(4) * np.pi / 2]
    return lobes, []


def _zigzag(rng):
    t, k = rng.uniform(0.16, 0.24), 3
    xs = np.linspace(-1, 1, k + 1)
    ys = np.where(np.arange(k + 1) % 2 == 0, -0.5, 0.5) * rng.uniform(0.8, 1.2)
    top = np.stack([xs, ys + t], 1)
    return [_fit(np.concatenate([top, np.stack([xs, ys - t], 1)[::-1]]))], []


def _frame(rng):
    a, b, t = 1.0, rng.uniform(0.7, 1.0), rng.uniform(0.22, 0.32)
    outer = np.array([(-a, -b), (a, -b), (a, b), (-a, b)]) / np.hypot(a, b)
    return [outer], [outer * (1 - t)]


def _teardrop(rng):
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    tip = rng.uniform(1.3, 1.8)
    return [_fit(np.stack([np.cos(t), np.sin(t) * np.sin(t / 2) ** tip], 1))], []


SHAPE_FNS: dict[str, Callable[[np.random.Generator], tuple[list[Poly], list[Poly]]]] = {
    "star": _star, "ring": _ring, "cross": _cross, "crescent": _crescent,
    "triangle": _triangle, "hexagon": _hexagon, "heart": _heart, "arrow": _arrow,
    "lshape": _lshape, "ellipse": _ellipse_shape, "chevron": _chevron, "semicircle": _semicircle,
    "diamond": _diamond, "tshape": _tshape, "hourglass": _hourglass, "dumbbell": _dumbbell,
    "clover": _clover, "zigzag": _zigzag, "frame": _frame, "teardrop": _teardrop,
}
