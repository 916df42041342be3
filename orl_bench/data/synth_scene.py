"""One procedural scene: categories (shape x texture), instance sampling, occlusion, rendering.

A category is a shape family with a texture. Colour, size, pose, aspect, vertex jitter and the
texture's period, orientation and phase are drawn per instance, so colour jitter (a standard SSL
augmentation) never destroys the class cue and no two instances of a class look alike
(results/embedded/range_search.md). The background (gradient, low-frequency noise, an optional faint
grating, scribbles and dots) is drawn independently of the objects, so it carries no label
information. `SceneStyle` sets how loud the background and how colourful the objects are.
A `ScenePlan` lets a caller dictate a scene instead (each object's category, size, place, hue,
texture period, and a tilt of the background), as the embedded classification sets do
(synth_classify.py); scenes rendered without one are unchanged.
"""
from __future__ import annotations

import colorsys
import functools
from dataclasses import dataclass
import cv2
import numpy as np

from orl_bench.data.synth_shapes import SHAPE_FNS

SHAPES = ("star", "ring", "cross", "crescent", "triangle", "hexagon",
          "heart", "arrow", "lshape", "ellipse", "chevron", "semicircle",
          "diamond", "tshape", "hourglass", "dumbbell", "clover", "zigzag", "frame", "teardrop")
TEXTURES = ("solid", "striped", "dotted", "checkered", "concentric",
            "grid", "waves", "rays", "halves", "blotched")
MAX_CATEGORIES = len(SHAPES) * len(TEXTURES)

DIFFICULT_VISIBLE_FRACTION = 0.35  # difficult if less of its own mask than this is visible ...
DIFFICULT_MIN_SIDE = 0.08  # ... or if the visible box's shorter side is below this x short side
_PLACEMENT_TRIES = 20
_SUBPIXEL = 4  # fractional bits for cv2.fillPoly
_PERIOD_SHARE = (0.35, 0.6)  # texture period / object radius


def category_table(n: int) -> list[tuple[str, str]]:
    """(texture, shape) of categories 0..n-1: every shape once with rotating textures, then
    again with the next texture, and so on. Up to 20 categories every class has its own shape;
    beyond, shapes repeat and only the texture tells such classes apart."""
    if not 1 <= n <= MAX_CATEGORIES:
        raise ValueError(f"num_categories must be in 1..{MAX_CATEGORIES}, got {n}")
    s, t = len(SHAPES), len(TEXTURES)
    return [(TEXTURES[(k % s + k // s) % t], SHAPES[k % s]) for k in range(n)]


def category_names(n: int) -> list[str]:
    return [f"{texture}_{shape}" for texture, shape in category_table(n)]


def _u(rng: np.random.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    """A Python float: a NumPy float64 scalar would silently promote float32 images."""
    return float(rng.uniform(lo, hi))




@dataclass(frozen=True)
class SceneStyle:
    """How scenes look beyond their categories. The defaults were chosen by measurement
    (results/embedded/range_search.md): large, nearly colourless objects on a quiet background, so
    that what two views of one scene share is mostly the objects' shape and texture rather than a
    per-scene colour or background signature; near-upright poses, and every instance of a category
    with its category's grey levels and texture period (`canonical_w16`, round 4: twice BYOL's gain
    over random of the per-instance look, and a labelled ceiling 32 mAP above random at BYOL's
    compute). The first design's look is object_size (0.15, 0.55), saturation (0.2, 1.0),
    grating 12, clutter (8, 20), backdrop 1; the second (round 3) is today's with rotation 1,
    grey_spread 1 and period_spread 1."""
    object_size: tuple[float, float] = (0.3, 0.7)  # bounding-circle diameter / image short side
    saturation: tuple[float, float] = (0.0, 0.15)  # object colours (colour is per instance, a nuisance)
    grating: float = 0.0  # max amplitude of a faint background grating (a per-scene signature)
    clutter: tuple[int, int] = (2, 8)  # background strokes, scribbles and dots per scene
    backdrop: float = 0.15  # colour range of the background gradient around mid-grey (1 = full)
    blotches: float = 1.0  # gain on the background's low-frequency colour blotches (0 = none)
    rotation: float = 0.1  # share of a full turn that poses and texture orientations span (0 = upright)
    # how far an instance's grey levels (grey_spread) and texture period (period_spread) stray from its
    # category's own: 1 = drawn per instance, 0 = every instance of a category shares them, as many
    # real categories share a look. Separate, because colour jitter removes grey levels from what two
    # views agree on but no augmentation removes a texture's period.
    grey_spread: float = 0.0
    period_spread: float = 0.0
    # gain on the brightness gap between a texture's two tones (1 = at least 0.35 apart). Lower
    # keeps the pattern for a network but lets selective search, which groups by colour, see
    # one region per object instead of one per stripe (benchmarks/proposal_quality.py)
    texture_contrast: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.object_size[0] <= self.object_size[1] <= 1:
            raise ValueError(f"object_size must satisfy 0 < lo <= hi <= 1 (diameter / short side), got {self.object_size}")
        if not 0 <= self.saturation[0] <= self.saturation[1] <= 1 or self.grating < 0 or \
                not 0 <= self.clutter[0] <= self.clutter[1] or not 0 <= self.backdrop <= 1 or self.blotches < 0 \
                or not 0 <= self.rotation <= 1 or not 0 <= self.grey_spread <= 1 or not 0 <= self.period_spread <= 1 \
                or not 0 < self.texture_contrast <= 1:
            raise ValueError(f"need 0 <= saturation lo <= hi <= 1, grating >= 0, 0 <= clutter lo <= hi, "
                             f"0 <= backdrop <= 1, blotches >= 0, 0 <= rotation <= 1, 0 <= grey_spread <= 1, "
                             f"0 <= period_spread <= 1 and 0 < texture_contrast <= 1; got {self.saturation}, "
                             f"{self.grating}, {self.clutter}, {self.backdrop}, {self.blotches}, {self.rotation}, "
                             f"{self.grey_spread}, {self.period_spread}, {self.texture_contrast}")


# --- plans: scenes a caller dictates ---

_ANY_HUE = (0.0, 1.0)


@dataclass(frozen=True)
class ObjectPlan:
    """One dictated object. Pose, aspect, grey levels and texture phase are still drawn."""
    category: int
    size: tuple[float, float]  # bounding-circle diameter / image short side, as SceneStyle.object_size
    # ranges of the centre's x and y as shares of the width and height (kept inside the image);
    # None places it as unplanned objects are placed, away from earlier ones
    region: tuple[tuple[float, float], tuple[float, float]] | None = None
    hue: tuple[float, float] = _ANY_HUE  # hue band in turns; may pass 1 (it wraps), e.g. (0.9, 1.1)
    saturation: tuple[float, float] | None = None  # None: the style's
    period_scale: float = 1.0  # texture period x this
    texture: str | None = None  # None: its category's

    def __post_init__(self) -> None:
        if not 0 < self.size[0] <= self.size[1] <= 1 or self.period_scale <= 0 or \
                self.texture not in (None, *TEXTURES):
            raise ValueError(f"ObjectPlan needs 0 < size lo <= hi <= 1, period_scale > 0 and texture None or one "
                             f"of {TEXTURES}, got {self.size}, {self.period_scale}, {self.texture!r}")


@dataclass(frozen=True)
class ScenePlan:
    """A dictated scene: its objects, back to front, and grey offsets added to the background
    gradient's corners ((top-left, top-right), (bottom-left, bottom-right)), which make it bright,
    dark or lit from one side; None leaves the background as drawn."""
    objects: tuple[ObjectPlan, ...]
    backdrop_shift: tuple[tuple[float, float], tuple[float, float]] | None = None


_UNPLANNED = ObjectPlan(0, (1.0, 1.0))  # how an unplanned object is painted: any hue, the style's look


# --- instances ---

@dataclass
class SceneObject:
    """One placed instance; `visible` is its mask after occlusion by later (front) objects."""
    category: int
    texture: str
    centre: tuple[float, float]
    radius: float
    mask: np.ndarray  # bool (H, W), own silhouette
    visible: np.ndarray  # bool (H, W)
    plan: ObjectPlan | None = None  # what the caller dictated, if anything


def is_difficult(visible_area: int, own_area: int, box_w: float, box_h: float,
                 short_side: int) -> bool:
    """VOC's `difficult`: mostly occluded, or what is visible is too small to recognise."""
    return (visible_area < DIFFICULT_VISIBLE_FRACTION * own_area
            or min(box_w, box_h) < DIFFICULT_MIN_SIDE * short_side)


def _angle(rng, rotation: float) -> float:
    """An angle in [0, 2 pi) narrowed around pi to `rotation` of the turn; the same draw at any
    `rotation`, so the other properties of a scene do not change with it."""
    angle = _u(rng, 0, 2 * np.pi)
    return angle if rotation == 1 else np.pi + (angle - np.pi) * rotation


def _silhouette(rng, shape: str, centre: np.ndarray, radius: float, hw: tuple[int, int], rotation: float):
    filled, holes = SHAPE_FNS[shape](rng)
    theta = _angle(rng, rotation)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    squash = np.array([1.0, rng.uniform(0.8, 1.0)])  # aspect jitter, stays inside the disc
    mask = np.zeros(hw, np.uint8)
    for polys, value in ((filled, 1), (holes, 0)):
        for p in polys:  # one at a time: overlapping parts (a clover's lobes) stay filled
            pts = np.round((centre + radius * (p * squash) @ rot.T) * (1 << _SUBPIXEL)).astype(np.int32)
            cv2.fillPoly(mask, [pts], value, cv2.LINE_8, shift=_SUBPIXEL)
    return mask.astype(bool)


def _place(rng, centres: list[tuple[float, float]], radius: float,
           hw: tuple[int, int]) -> np.ndarray:
    """Best of three candidates: the one farthest from earlier objects, so objects spread out
    and random crops of the image tend to contain different objects (overlaps still occur)."""
    lo, hi = radius, np.array([hw[1], hw[0]]) - 1 - radius  # the whole object stays inside
    cands = rng.uniform(lo, hi, (3, 2))
    if not centres:
        return cands[0]
    d = np.linalg.norm(cands[:, None] - np.array(centres)[None], axis=2).min(1)
    return cands[int(d.argmax())]


def _in_region(rng, region: tuple[tuple[float, float], tuple[float, float]], radius: float,
               hw: tuple[int, int]) -> np.ndarray:
    """A centre drawn in a planned region, moved in so the whole object stays inside."""
    (x0, x1), (y0, y1) = region
    h, w = hw
    centre = rng.uniform((x0 * w, y0 * h), (x1 * w, y1 * h))
    return np.clip(centre, radius, np.array([w, h]) - 1 - radius)


def _sample_objects(rng, hw, num_categories, min_objects, max_objects,
                    object_size: tuple[float, float], rotation: float,
                    plan: ScenePlan | None = None) -> list[SceneObject]:
    """Back-to-front instances; a candidate that would hide an earlier object completely is
    redrawn (position and size), so every placed object keeps some visible pixels. Without a
    plan, count and categories are drawn here (interleaved with placement: the historical order)."""
    table = category_table(num_categories)
    short = min(hw)
    objects: list[SceneObject] = []
    wanted = plan.objects if plan else [None] * int(rng.integers(min_objects, max_objects + 1))
    for op in wanted:
        category = int(rng.integers(num_categories)) if op is None else op.category
        if not 0 <= category < num_categories:
            raise ValueError(f"planned category {category} is outside 0..{num_categories - 1}")
        texture, shape = table[category]
        texture = texture if op is None or op.texture is None else op.texture
        size = object_size if op is None else op.size
        for _ in range(_PLACEMENT_TRIES):
            radius = short * _u(rng, *size) / 2
            if op is None or op.region is None:
                centre = _place(rng, [o.centre for o in objects], radius, hw)
            else:
                centre = _in_region(rng, op.region, radius, hw)
            mask = _silhouette(rng, shape, centre, radius, hw, rotation)
            if mask.any() and all((o.visible & ~mask).any() for o in objects):
                break
        else:
            continue
        for o in objects:
            o.visible &= ~mask
        objects.append(SceneObject(category, texture, (float(centre[0]), float(centre[1])), radius,
                                   mask, mask.copy(), op))
    return objects


# --- painting ---

def _colour(rng, value: float, saturation: tuple[float, float],
            hue: tuple[float, float] = _ANY_HUE) -> np.ndarray:
    # uniform(0, 1) is the very draw uniform() makes, and % 1 leaves [0, 1) alone
    rgb = colorsys.hsv_to_rgb(rng.uniform(*hue) % 1.0, rng.uniform(*saturation), value)
    return np.array(rgb, np.float32) * 255


def _values(rng) -> tuple[float, float]:
    """Base and ink brightness, at least 0.35 apart so the texture survives grayscale."""
    v1 = _u(rng, 0.25, 1.0)
    return v1, (_u(rng, 0.1, v1 - 0.35) if v1 >= 0.6 else _u(rng, v1 + 0.35, 1.0))


@dataclass(frozen=True)
class CategoryLook:
    """A category's own grey levels and texture period (a share of the object's radius)."""
    values: tuple[float, float]
    period_share: float

    @classmethod
    @functools.cache  # drawn once per category, not once per painted instance
    def of(cls, category: int) -> "CategoryLook":
        rng = np.random.default_rng([0x5CE7E, category])  # fixed per category, whatever the scene seed
        return cls(_values(rng), _u(rng, *_PERIOD_SHARE))


def _toward(instance: float, category: float, spread: float) -> float:
    return instance if spread == 1 else category + (instance - category) * spread


def _colour_pair(rng, saturation: tuple[float, float], look: CategoryLook, grey_spread: float,
                 contrast: float = 1.0, hue: tuple[float, float] = _ANY_HUE) -> tuple[np.ndarray, np.ndarray]:
    """Two colours: the instance's brightness pair pulled toward its category's by `grey_spread`
    (ordered like the category's, so the 0.35 gap survives the blend), the ink then moved toward
    the base until the gap is `contrast` of itself; hue per instance, within `hue`."""
    v1, v2 = _values(rng)
    if grey_spread < 1 and (v1 > v2) != (look.values[0] > look.values[1]):
        v1, v2 = v2, v1
    v1, v2 = (_toward(v, c, grey_spread) for v, c in zip((v1, v2), look.values))
    v2 = _toward(v2, v1, contrast)
    return _colour(rng, v1, saturation, hue), _colour(rng, v2, saturation, hue)


def _period(rng, radius: float, look: CategoryLook, period_spread: float, scale: float = 1.0) -> float:
    """Texture period in pixels: the instance's share of its radius pulled toward the category's,
    times a planned `scale`."""
    return max(3.5, radius * _toward(_u(rng, *_PERIOD_SHARE), look.period_share, period_spread) * scale)


def _texture(rng, texture: str, x: np.ndarray, y: np.ndarray, radius: float, style: SceneStyle,
             look: CategoryLook, period_scale: float = 1.0) -> np.ndarray:
    """Boolean pattern on the grid (x, y) (object-centred pixels) with a random period (pulled
    toward the category's by `style.period_spread`), orientation and phase."""
    period = _period(rng, radius, look, style.period_spread, period_scale)
    rotation = style.rotation
    phi = _angle(rng, rotation)
    c, s = np.cos(phi) / period, np.sin(phi) / period
    u = x * c + y * s + _u(rng)
    v = y * c - x * s + _u(rng)
    if texture == "solid":
        return np.zeros(np.broadcast_shapes(x.shape, y.shape), bool)
    if texture == "striped":
        return np.sin(2 * np.pi * u) > _u(rng, -0.3, 0.3)
    if texture == "dotted":
        return (u % 1 - 0.5) ** 2 + (v % 1 - 0.5) ** 2 < _u(rng, 0.22, 0.32) ** 2
    if texture == "checkered":
        return (np.floor(u) + np.floor(v)) % 2 == 1
    if texture == "concentric":
        dx, dy = _u(rng, -0.2, 0.2) * radius, _u(rng, -0.2, 0.2) * radius
        return np.sin(np.hypot(x - dx, y - dy) * (2 * np.pi / period) + phi) > _u(rng, -0.3, 0.3)
    if texture == "grid":
        width = _u(rng, 0.2, 0.3)
        return (u % 1 < width) | (v % 1 < width)
    if texture == "waves":
        return np.sin(2 * np.pi * (u + _u(rng, 0.25, 0.4) * np.sin(2 * np.pi * v / 2))) > 0
    if texture == "rays":
        return np.sin(np.arctan2(y, x) * int(rng.integers(3, 6)) + phi) > 0
    if texture == "halves":
        return x * np.cos(phi) + y * np.sin(phi) > _u(rng, -0.2, 0.2) * radius
    if texture == "blotched":  # camouflage: three random plane waves, thresholded
        waves = sum(np.sin(2 * np.pi * (x * np.cos(a) + y * np.sin(a)) / period + _u(rng, 0, 2 * np.pi))
                    for a in rng.uniform(0, np.pi, 3))
        return waves > 0
    raise ValueError(f"unknown texture {texture!r}")


def _paint(rng, canvas: np.ndarray, obj: SceneObject, style: SceneStyle) -> None:
    (cx, cy), r = obj.centre, obj.radius  # the shape lies in this disc
    h, w = obj.mask.shape
    y0, y1 = max(0, int(cy - r)), min(h, int(cy + r) + 2)
    x0, x1 = max(0, int(cx - r)), min(w, int(cx + r) + 2)
    x = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
    y = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
    look = CategoryLook.of(obj.category)
    op = obj.plan or _UNPLANNED
    pattern = _texture(rng, obj.texture, x, y, r, style, look, op.period_scale)
    base, ink = _colour_pair(rng, op.saturation or style.saturation, look, style.grey_spread,
                             style.texture_contrast, op.hue)
    light = _u(rng, 0, 2 * np.pi)  # a soft directional shading, as on a lit object
    gain = _u(rng, 0, 0.25) / r
    shade = 1 + x * (gain * np.cos(light)) + y * (gain * np.sin(light))
    pixels = np.where(pattern[..., None], ink, base) * shade[..., None]
    m = obj.mask[y0:y1, x0:x1]
    canvas[y0:y1, x0:x1][m] = pixels[m]


def _background(rng, hw: tuple[int, int], style: SceneStyle,
                shift: tuple[tuple[float, float], tuple[float, float]] | None = None) -> np.ndarray:
    """Float32 (H, W, 3): a smooth random gradient (its corners moved by a planned grey `shift`)
    with low-frequency blotches, a faint grating, and clutter (strokes, scribbles, dots in random
    colours) that is never a category shape."""
    h, w = hw
    corners = (127.5 + (rng.uniform(0, 255, (2, 2, 3)) - 127.5) * style.backdrop).astype(np.float32)
    if shift is not None:
        corners += np.asarray(shift, np.float32)[..., None]
    blotches = rng.standard_normal((5, 5, 3)).astype(np.float32) * (_u(rng, 8, 25) * style.blotches)
    canvas = (cv2.resize(corners, (w, h), interpolation=cv2.INTER_LINEAR)
              + cv2.resize(blotches, (w, h), interpolation=cv2.INTER_LINEAR))
    b, period = _u(rng, 0, 2 * np.pi), _u(rng, 4, 16)
    x = np.arange(w, dtype=np.float32)[None, :] * (2 * np.pi * np.cos(b) / period)
    y = np.arange(h, dtype=np.float32)[:, None] * (2 * np.pi * np.sin(b) / period)
    grating = np.sin(x + y) * _u(rng, 0, style.grating)
    canvas += cv2.merge([grating] * 3)
    # clutter: straight strokes, 4-point scribbles and dots, never a category shape
    n = int(rng.integers(style.clutter[0], style.clutter[1] + 1))
    kinds, thick = rng.integers(3, size=n).tolist(), rng.integers(1, 3, size=n).tolist()
    colours = rng.uniform(0, 255, (n, 3)).tolist()
    steps = np.cumsum(rng.uniform(-0.1, 0.1, (n, 4, 2)), 1) * min(hw)
    walks = np.round(rng.uniform(0, 1, (n, 1, 2)) * (w, h) + steps).astype(np.int32)
    for kind, t, colour, walk in zip(kinds, thick, colours, walks):
        if kind == 0:
            cv2.line(canvas, walk[0].tolist(), (3 * walk[1] - 2 * walk[0]).tolist(), colour, t)
        elif kind == 1:
            cv2.polylines(canvas, [walk], False, colour, t)
        else:
            cv2.circle(canvas, walk[0].tolist(), t, colour, -1)
    return canvas


def render_scene(rng: np.random.Generator, height: int, width: int, num_categories: int,
                 min_objects: int, max_objects: int, style: SceneStyle = SceneStyle(),
                 plan: ScenePlan | None = None) -> tuple[np.ndarray, list[SceneObject]]:
    """An RGB uint8 (H, W, 3) scene and its objects, back to front. With a `plan`, its objects
    (an object that cannot be placed without hiding an earlier one is dropped, as unplanned
    ones are) replace the drawn ones, and min_objects / max_objects are not used."""
    hw = (height, width)
    canvas = _background(rng, hw, style, plan.backdrop_shift if plan else None)
    objects = _sample_objects(rng, hw, num_categories, min_objects, max_objects, style.object_size,
                              style.rotation, plan)
    for obj in objects:
        _paint(rng, canvas, obj, style)
    # sensor-like noise; uniform bytes are ~10x cheaper to draw than normal variates
    noise = np.frombuffer(rng.bytes(canvas.size), np.uint8).reshape(canvas.shape)
    canvas += (noise.astype(np.float32) - 127.5) * np.float32(rng.uniform(2, 6) / 73.6)
    return np.clip(canvas, 0, 255).astype(np.uint8), objects
