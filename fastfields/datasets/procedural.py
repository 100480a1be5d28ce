"""Procedural classes of shapes built from primitives: chairs, cars, tables, lamps, sofas.

Each call ``make_shape(category, seed)`` draws the proportions, the optional parts and the
colours of one object from ``numpy.random.default_rng(seed)`` and assembles it from boxes,
cylinders, cones and spheres, so a class has real intra-class variation (a chair may have
arms, four legs or a central pedestal; a car is a sedan, a hatchback or a pickup ...) while
the result is deterministic per ``(category, seed)``.

World frame (SRN / ShapeNet renders): **z up**, objects standing on the plane ``z = min``;
a car's length runs along x, a chair's back is on its -y side. Every shape is normalised by
:func:`normalize_mesh`: the bounding box is centred at the origin and scaled so the object
fits the unit cube ``[-0.5, 0.5]^3`` *and* the sphere of radius :data:`FIT_RADIUS` = 0.55
about the origin (``scale = min(1 / longest side, 2 * 0.55 / box diagonal)``). The sphere is
what makes every view of an SRN-like camera see the whole object: at SRN's distance 1.3
with ``f = 131.25`` px at 128 px (half field of view ``atan(64 / 131.25)`` = 26.0 deg) a
sphere of radius ``1.3 * sin(26.0 deg)`` = 0.57 fills the frame exactly, from any direction.

Colours are per face (``mesh.visual.face_colors``, RGBA uint8), one colour per part.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List

import numpy as np

#: The procedural categories, in a fixed order (the dataset builder's default picks two).
CATEGORIES = ("chair", "car", "table", "lamp", "sofa")
#: Every normalised shape fits the sphere of this radius about the origin (and [-0.5, 0.5]^3).
FIT_RADIUS = 0.55


class _Parts:
    """Accumulates coloured primitives; ``mesh()`` concatenates them into one Trimesh."""

    def __init__(self) -> None:
        self.vertices: List[np.ndarray] = []
        self.faces: List[np.ndarray] = []
        self.colors: List[np.ndarray] = []
        self.count = 0

    def add(self, part, color) -> None:
        v = np.asarray(part.vertices, dtype=np.float64)
        f = np.asarray(part.faces, dtype=np.int64)
        rgba = np.append(np.clip(np.asarray(color, dtype=np.float64), 0, 1) * 255, 255).round().astype(np.uint8)
        self.vertices.append(v)
        self.faces.append(f + self.count)
        self.colors.append(np.broadcast_to(rgba, (len(f), 4)))
        self.count += len(v)

    def box(self, size, center, color, rotation_z: float = 0.0) -> None:
        import trimesh

        transform = trimesh.transformations.rotation_matrix(rotation_z, (0, 0, 1))
        transform[:3, 3] = center
        self.add(trimesh.creation.box(extents=size, transform=transform), color)

    def cylinder(self, radius, height, center, color, axis: str = "z", sections: int = 20, top_radius=None) -> None:
        """A cylinder (or a cone frustum when ``top_radius`` differs) along ``axis``."""
        import trimesh

        if top_radius is None:
            part = trimesh.creation.cylinder(radius=radius, height=height, sections=sections)
        else:  # frustum: a cylinder whose top ring is scaled
            part = trimesh.creation.cylinder(radius=1.0, height=height, sections=sections)
            v = part.vertices.copy()
            top = v[:, 2] > 0
            v[top, :2] *= top_radius
            v[~top, :2] *= radius
            part = trimesh.Trimesh(v, part.faces, process=False)
        rotate = {"z": np.eye(3), "x": np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]]),
                  "y": np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]])}[axis]
        part = trimesh.Trimesh(part.vertices @ rotate.T + np.asarray(center), part.faces, process=False)
        self.add(part, color)

    def sphere(self, radius, center, color, scale=(1.0, 1.0, 1.0)) -> None:
        import trimesh

        part = trimesh.creation.icosphere(subdivisions=2, radius=radius)
        self.add(trimesh.Trimesh(part.vertices * np.asarray(scale) + np.asarray(center), part.faces, process=False), color)

    def mesh(self):
        import trimesh

        return trimesh.Trimesh(
            np.concatenate(self.vertices), np.concatenate(self.faces),
            face_colors=np.concatenate(self.colors), process=False,
        )


def _color(rng: np.random.Generator, saturation=(0.3, 0.9), value=(0.35, 0.95)) -> np.ndarray:
    """A random RGB colour in [0, 1] from HSV ranges (hue uniform)."""
    import colorsys

    return np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*saturation), rng.uniform(*value)))


def _wood_or_metal(rng: np.random.Generator) -> np.ndarray:
    if rng.uniform() < 0.5:  # wood-ish browns
        return np.array([rng.uniform(0.35, 0.65), rng.uniform(0.2, 0.4), rng.uniform(0.08, 0.2)])
    grey = rng.uniform(0.25, 0.8)
    return np.array([grey, grey, grey * rng.uniform(0.9, 1.1)])


def _legs(p: _Parts, rng, width, depth, height, top_z, color, round_legs: bool, inset: float, thickness: float) -> None:
    for sx in (-1, 1):
        for sy in (-1, 1):
            center = (sx * (width / 2 - inset), sy * (depth / 2 - inset), top_z - height / 2)
            if round_legs:
                p.cylinder(thickness / 2, height, center, color, sections=12)
            else:
                p.box((thickness, thickness, height), center, color)


def _chair(rng: np.random.Generator) -> _Parts:
    p = _Parts()
    width, depth = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6)
    seat_h, seat_t = rng.uniform(0.35, 0.5), rng.uniform(0.04, 0.09)
    back_h = rng.uniform(0.3, 0.6)
    frame, cushion = _wood_or_metal(rng), _color(rng)
    p.box((width, depth, seat_t), (0, 0, seat_h), cushion)
    if rng.uniform() < 0.25:  # office chair: pedestal and star base
        p.cylinder(0.03, seat_h, (0, 0, seat_h / 2), frame, sections=12)
        for k in range(5):
            angle = 2 * math.pi * k / 5
            p.box((0.3, 0.04, 0.03), (0.15 * math.cos(angle), 0.15 * math.sin(angle), 0.015), frame, rotation_z=angle)
    else:
        _legs(p, rng, width, depth, seat_h - seat_t / 2, seat_h - seat_t / 2, frame,
              round_legs=rng.uniform() < 0.5, inset=rng.uniform(0.02, 0.06), thickness=rng.uniform(0.03, 0.06))
    back_t = rng.uniform(0.03, 0.07)
    tilt_y = -depth / 2 + back_t / 2
    if rng.uniform() < 0.35:  # slatted back: two posts and rails
        for sx in (-1, 1):
            p.box((0.04, back_t, back_h), (sx * (width / 2 - 0.02), tilt_y, seat_h + back_h / 2), frame)
        rails = int(rng.integers(2, 5))
        for k in range(rails):
            z = seat_h + back_h * (k + 1) / (rails + 0.5)
            p.box((width - 0.04, back_t * 0.8, 0.05), (0, tilt_y, z), cushion)
    else:
        p.box((width, back_t, back_h), (0, tilt_y, seat_h + back_h / 2), cushion)
    if rng.uniform() < 0.4:  # arms
        arm_h = rng.uniform(0.15, 0.25)
        for sx in (-1, 1):
            p.box((0.05, depth * 0.9, 0.04), (sx * (width / 2 + 0.025), 0, seat_h + arm_h), frame)
            p.box((0.04, 0.04, arm_h), (sx * (width / 2 + 0.025), depth * 0.35, seat_h + arm_h / 2), frame)
    return p


def _car(rng: np.random.Generator) -> _Parts:
    p = _Parts()
    length, width = rng.uniform(0.9, 1.2), rng.uniform(0.4, 0.55)
    wheel_r = rng.uniform(0.08, 0.12)
    body_h = rng.uniform(0.15, 0.25)
    clearance = wheel_r * rng.uniform(0.5, 0.9)
    paint = _color(rng, (0.5, 1.0), (0.4, 1.0))
    glass = np.array([0.15, 0.2, 0.25]) * rng.uniform(0.6, 1.4)
    body_z = clearance + body_h / 2
    p.box((length, width, body_h), (0, 0, body_z), paint)
    style = rng.choice(["sedan", "hatchback", "pickup", "van"])
    cabin_h = rng.uniform(0.13, 0.22) if style != "van" else rng.uniform(0.22, 0.3)
    cabin_len = {"sedan": 0.5, "hatchback": 0.6, "pickup": 0.35, "van": 0.85}[style] * length * rng.uniform(0.9, 1.1)
    cabin_x = {"sedan": -0.02, "hatchback": -0.1, "pickup": 0.12, "van": -0.05}[style] * length
    top = clearance + body_h
    p.box((cabin_len, width * rng.uniform(0.8, 0.92), cabin_h), (cabin_x, 0, top + cabin_h / 2), glass)
    p.box((cabin_len * 0.9, width * 0.8, 0.02), (cabin_x, 0, top + cabin_h + 0.01), paint)  # roof
    if style == "pickup":  # bed walls
        bed_x = cabin_x - cabin_len / 2 - (length / 2 + cabin_x - cabin_len / 2) / 2
        for sy in (-1, 1):
            p.box((length / 2 - cabin_len / 2 + cabin_x, 0.03, 0.07), (bed_x, sy * (width / 2 - 0.015), top + 0.035), paint)
    tyre = np.array([0.08, 0.08, 0.08])
    wheelbase = length * rng.uniform(0.28, 0.36)
    for sx in (-1, 1):
        for sy in (-1, 1):
            p.cylinder(wheel_r, 0.08, (sx * wheelbase, sy * (width / 2 - 0.03), wheel_r), tyre, axis="y", sections=16)
    for sy in (-1, 1):  # headlights
        p.box((0.02, 0.07, 0.04), (length / 2 + 0.005, sy * width * 0.32, body_z + body_h * 0.2), np.array([1.0, 0.95, 0.7]))
    return p


def _table(rng: np.random.Generator) -> _Parts:
    p = _Parts()
    round_top = rng.uniform() < 0.3
    width = rng.uniform(0.6, 1.0)
    depth = width if round_top else rng.uniform(0.4, 0.8)
    height, top_t = rng.uniform(0.35, 0.7), rng.uniform(0.03, 0.07)
    top_color, leg_color = _wood_or_metal(rng), _wood_or_metal(rng)
    if round_top:
        p.cylinder(width / 2, top_t, (0, 0, height - top_t / 2), top_color, sections=32)
        p.cylinder(rng.uniform(0.03, 0.06), height - top_t, (0, 0, (height - top_t) / 2), leg_color, sections=12)
        p.cylinder(width * rng.uniform(0.2, 0.3), 0.03, (0, 0, 0.015), leg_color, sections=24)
    else:
        p.box((width, depth, top_t), (0, 0, height - top_t / 2), top_color)
        _legs(p, rng, width, depth, height - top_t, height - top_t, leg_color,
              round_legs=rng.uniform() < 0.5, inset=rng.uniform(0.03, 0.1), thickness=rng.uniform(0.04, 0.08))
        if rng.uniform() < 0.4:  # lower shelf
            p.box((width * 0.8, depth * 0.8, 0.025), (0, 0, height * rng.uniform(0.2, 0.35)), top_color)
    return p


def _lamp(rng: np.random.Generator) -> _Parts:
    p = _Parts()
    metal, shade = _wood_or_metal(rng), _color(rng, (0.1, 0.6), (0.6, 1.0))
    base_r, pole_h = rng.uniform(0.1, 0.2), rng.uniform(0.5, 0.9)
    if rng.uniform() < 0.5:
        p.cylinder(base_r, 0.04, (0, 0, 0.02), metal, sections=24)
    else:
        p.box((base_r * 1.8, base_r * 1.8, 0.04), (0, 0, 0.02), metal)
    p.cylinder(0.015, pole_h, (0, 0, 0.04 + pole_h / 2), metal, sections=10)
    shade_h = rng.uniform(0.15, 0.3)
    bottom_r = rng.uniform(0.12, 0.25)
    p.cylinder(bottom_r, shade_h, (0, 0, 0.04 + pole_h), shade, sections=24, top_radius=bottom_r * rng.uniform(0.4, 0.9))
    if rng.uniform() < 0.5:  # finial
        p.sphere(0.03, (0, 0, 0.04 + pole_h + shade_h / 2 + 0.03), metal)
    return p


def _sofa(rng: np.random.Generator) -> _Parts:
    p = _Parts()
    width, depth = rng.uniform(0.9, 1.3), rng.uniform(0.4, 0.55)
    seat_h, back_h, arm_w = rng.uniform(0.18, 0.28), rng.uniform(0.2, 0.35), rng.uniform(0.06, 0.14)
    fabric, feet = _color(rng, (0.2, 0.8), (0.3, 0.85)), _wood_or_metal(rng)
    leg_h = rng.uniform(0.03, 0.08)
    p.box((width, depth, seat_h), (0, 0, leg_h + seat_h / 2), fabric)
    p.box((width, 0.1, back_h), (0, -depth / 2 + 0.05, leg_h + seat_h + back_h / 2), fabric)
    for sx in (-1, 1):
        p.box((arm_w, depth, seat_h * 0.7), (sx * (width / 2 - arm_w / 2), 0, leg_h + seat_h + seat_h * 0.35), fabric)
    cushions = int(rng.integers(1, 4))
    inner = width - 2 * arm_w
    cushion = fabric * rng.uniform(0.75, 1.0)
    for k in range(cushions):
        x = -inner / 2 + inner * (k + 0.5) / cushions
        p.box((inner / cushions * 0.95, depth * 0.75, 0.06), (x, 0.04, leg_h + seat_h + 0.03), cushion)
    _legs(p, rng, width, depth, leg_h, leg_h, feet, round_legs=True, inset=0.05, thickness=0.04)
    return p


_BUILDERS: Dict[str, Callable[[np.random.Generator], _Parts]] = {
    "chair": _chair, "car": _car, "table": _table, "lamp": _lamp, "sofa": _sofa,
}


def normalize_mesh(mesh, radius: float = FIT_RADIUS):
    """Centre ``mesh``'s bounding box at the origin and scale it to fit ``[-0.5, 0.5]^3`` and
    the sphere of ``radius`` about the origin (see the module docstring). Returns a new mesh."""
    lo, hi = mesh.bounds
    extent = hi - lo
    if not np.all(np.isfinite(extent)) or extent.max() <= 0:
        raise ValueError(f"normalize_mesh: the mesh has empty or non-finite bounds {mesh.bounds.tolist()}")
    scale = min(1.0 / extent.max(), 2 * radius / float(np.linalg.norm(extent)))
    out = mesh.copy()
    out.apply_translation(-(lo + hi) / 2)
    out.apply_scale(scale)
    return out


def make_shape(category: str, seed: int):
    """One procedural object of ``category`` (one of :data:`CATEGORIES`), deterministic in ``seed``.

    Returns:
        a ``trimesh.Trimesh`` with per-face RGBA colours (``mesh.visual.face_colors``),
        z up, normalised to fit ``[-0.5, 0.5]^3`` and the sphere of radius
        :data:`FIT_RADIUS` (see the module docstring). Parts are separate closed
        primitives (they may intersect); the renderer needs no watertight mesh.
    """
    if category not in _BUILDERS:
        raise ValueError(f"make_shape: category must be one of {CATEGORIES}, got {category!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"make_shape: seed must be a non-negative int, got {seed!r}")
    rng = np.random.default_rng([int(seed), CATEGORIES.index(category)])
    return normalize_mesh(_BUILDERS[category](rng).mesh())

