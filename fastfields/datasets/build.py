"""Build a multi-object posed-view dataset in the SRN layout: procedural shapes + shipped meshes.

Cameras match ShapeNet-SRN's (the data SSDNeRF and pixelNeRF train on): ``resolution^2``
images with focal length ``131.25 * resolution / 128`` px and the principal point at the
centre (SRN's ``131.25 64 64`` at 128 px, a 52 deg field of view), every camera at
``camera_distance`` (SRN cars: 1.3) from the origin looking at it, world z up, OpenCV
convention (x right, y down, looking along +z), positions drawn uniformly in area on the
upper hemisphere (``elevation_range`` in degrees, default 0..90; SRN cars' training views
are random on a sphere). The objects are normalised to the sphere of radius 0.55 (see
:mod:`fastfields.datasets.procedural`), which a camera at 1.3 sees whole from any direction.

Layout::

    <out_dir>/dataset.json                     what was built (see build_dataset)
    <out_dir>/<split>/<object_id>/rgb|pose|intrinsics.txt   (fastfields.datasets.srn)

Everything is a deterministic function of the arguments.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Dict, Mapping, Sequence, Union

import numpy as np
import torch

from .meshes import MESHES, load_mesh
from .procedural import CATEGORIES, FIT_RADIUS, make_shape
from .render import AMBIENT, LIGHTS, render_views
from .srn import write_srn_object

SRN_FOCAL_128 = 131.25  #: SRN's focal length in pixels at 128 x 128
SRN_CAR_DISTANCE = 1.3  #: SRN cars' camera distance
MAX_OBJECTS = 1_000_000  #: objects per category (object seeds are seed * MAX_OBJECTS + index)


def srn_intrinsics(resolution: int) -> torch.Tensor:
    """``[4]`` ``(fx, fy, cx, cy)`` in pixels of SRN's camera at ``resolution^2``."""
    f = SRN_FOCAL_128 * resolution / 128.0
    return torch.tensor([f, f, resolution / 2.0, resolution / 2.0], dtype=torch.float64)


def sample_cameras(n: int, distance: float, rng: np.random.Generator, elevation_range=(0.0, 90.0)) -> torch.Tensor:
    """``[n, 4, 4]`` float64 OpenCV camera-to-world looking at the origin from ``distance``, z up,
    uniform in area over the band of elevations ``elevation_range`` (degrees)."""
    from ..rendering import orbit_cameras

    lo, hi = (math.sin(math.radians(e)) for e in elevation_range)
    heights = rng.uniform(lo, hi, size=n)
    azimuths = rng.uniform(0.0, 360.0, size=n)
    return torch.cat([
        orbit_cameras(1, float(distance), elevation=math.degrees(math.asin(float(h))), azimuth_start=float(a),
                      convention="opencv", up="z", dtype=torch.float64)
        for h, a in zip(heights, azimuths)
    ])


def split_counts(split: Mapping[str, Union[int, float]], total: int) -> Dict[str, int]:
    """Objects per split from fractions (summing to 1) or counts (summing to ``total``)."""
    op = "build_dataset"
    if not isinstance(split, Mapping) or not split:
        raise ValueError(f"{op}: split must be a non-empty dict name -> fraction or count, got {split!r}")
    values = list(split.values())
    for name, value in split.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"{op}: split names must be folder names, got {name!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{op}: split[{name!r}] must be a non-negative fraction or count, got {value!r}")
    if all(isinstance(v, int) for v in values):
        if sum(values) != total:
            raise ValueError(f"{op}: split counts {dict(split)} must sum to objects_per_category = {total}")
        return dict(split)
    if not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise ValueError(f"{op}: split fractions {dict(split)} must sum to 1")
    edges = [round(total * f) for f in np.cumsum(values)]
    edges[-1] = total
    return {name: b - a for name, a, b in zip(split, [0] + edges[:-1], edges)}


def build_dataset(
    out_dir,
    *,
    categories: Sequence[str] = ("chair", "car"),
    objects_per_category: int = 8,
    views: int = 50,
    resolution: int = 128,
    seed: int = 0,
    include_meshes: bool = True,
    camera_distance: float = SRN_CAR_DISTANCE,
    split: Mapping[str, Union[int, float]] = {"train": 0.75, "test": 0.25},
    elevation_range=(0.0, 90.0),
    supersample: int = 2,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Render ``objects_per_category`` procedural objects of each category (plus, with
    ``include_meshes``, the shipped meshes) from ``views`` SRN-like cameras each and write
    them in the SRN layout under ``<out_dir>/<split>/<object_id>/``.

    Args:
        out_dir: output folder (created).
        categories: procedural categories (:data:`fastfields.datasets.CATEGORIES`).
        objects_per_category: procedural objects per category; object ``k`` of a category
            has id ``<category>_<k:04d>`` and shape seed ``seed * 1_000_000 + k``.
        views: views per object.
        resolution: image side in pixels (SRN: 128); the focal length scales with it.
        seed: the one seed of everything (shapes and cameras).
        include_meshes: also render the shipped meshes (ids ``mesh_spot``, ``mesh_avocado``),
            into the first split.
        camera_distance: camera distance from the origin (SRN cars: 1.3).
        split: name -> fraction (summing to 1) or count (summing to objects_per_category)
            of each category's objects, assigned in index order (the first ones to the
            first split).
        elevation_range: camera elevations in degrees (uniform in area between them).
        supersample: anti-aliasing samples per pixel side (:func:`render_views`).
        overwrite: allow an ``out_dir`` that already holds a ``dataset.json``.
        progress: show a progress bar.

    Returns:
        ``out_dir`` as a Path. ``dataset.json`` records the arguments, the camera model, the
        renderer and, per object, its id, category, seed and split.
    """
    op = "build_dataset"
    for name, value, low in (("objects_per_category", objects_per_category, 0), ("views", views, 1),
                             ("resolution", resolution, 1), ("seed", seed, 0), ("supersample", supersample, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{op}: {name} must be an int >= {low}, got {value!r}")
    if objects_per_category >= MAX_OBJECTS:
        raise ValueError(f"{op}: objects_per_category must be < {MAX_OBJECTS}, got {objects_per_category}")
    if isinstance(categories, str):
        raise ValueError(f"{op}: categories must be a sequence of names, got the string {categories!r}")
    categories = tuple(categories)
    for category in categories:
        if category not in CATEGORIES:
            raise ValueError(f"{op}: categories must be among {CATEGORIES}, got {category!r}")
    if len(set(categories)) != len(categories):
        raise ValueError(f"{op}: categories has duplicates: {categories}")
    if isinstance(camera_distance, bool) or not isinstance(camera_distance, (int, float)) or camera_distance <= FIT_RADIUS:
        raise ValueError(f"{op}: camera_distance must be a number > {FIT_RADIUS} (outside the objects), got {camera_distance!r}")
    try:
        elevation_range = tuple(float(e) for e in elevation_range)
    except (TypeError, ValueError):
        elevation_range = ()
    if len(elevation_range) != 2 or not -90.0 <= elevation_range[0] <= elevation_range[1] <= 90.0:
        raise ValueError(f"{op}: elevation_range must be (low, high) degrees with -90 <= low <= high <= 90, got {elevation_range!r}")
    counts = split_counts(split, objects_per_category)
    out_dir = Path(out_dir)
    if (out_dir / "dataset.json").exists() and not overwrite:
        raise FileExistsError(f"{op}: {out_dir / 'dataset.json'} exists; pass overwrite=True (--overwrite) to rebuild")
    out_dir.mkdir(parents=True, exist_ok=True)

    jobs = []  # (split, object_id, category, shape seed, make)
    for c_index, category in enumerate(categories):
        names = [name for name, n in counts.items() for _ in range(n)]
        for k in range(objects_per_category):
            shape_seed = seed * MAX_OBJECTS + k
            jobs.append((names[k], f"{category}_{k:04d}", category, shape_seed,
                         lambda category=category, shape_seed=shape_seed: make_shape(category, shape_seed)))
    if include_meshes:
        first = next(iter(counts))
        for name in MESHES:
            jobs.append((first, f"mesh_{name}", f"mesh:{name}", None, lambda name=name: load_mesh(name)))

    K = srn_intrinsics(resolution)
    records = []
    from tqdm.auto import tqdm

    for split_name, object_id, category, shape_seed, make in tqdm(jobs, desc="render objects", disable=not progress):
        mesh = make()
        rng = np.random.default_rng([seed, zlib.crc32(object_id.encode()), 1])  # the object's cameras
        c2w = sample_cameras(views, camera_distance, rng, elevation_range)
        rgba = render_views(mesh, c2w, K, resolution, resolution, supersample=supersample)
        write_srn_object(out_dir / split_name, object_id, rgba, c2w, K)
        records.append(dict(id=object_id, category=category, seed=shape_seed, split=split_name,
                            vertices=int(len(mesh.vertices)), faces=int(len(mesh.faces))))

    info = dict(
        format="srn", generator="fastfields.datasets.build_dataset", version=1,
        arguments=dict(categories=list(categories), objects_per_category=objects_per_category, views=views,
                       resolution=resolution, seed=seed, include_meshes=include_meshes,
                       camera_distance=float(camera_distance), split=dict(split),
                       elevation_range=list(elevation_range), supersample=supersample),
        camera=dict(convention="opencv", world_up="z", distance=float(camera_distance),
                    intrinsics=dict(zip(("fx", "fy", "cx", "cy"), K.tolist())), height=resolution, width=resolution,
                    sampling="uniform in area over elevation_range, azimuth uniform, looking at the origin"),
        normalization=dict(fit_cube=[-0.5, 0.5], fit_radius=FIT_RADIUS),
        render=dict(renderer="fastfields.datasets.render_views", supersample=supersample, ambient=AMBIENT,
                    lights=[list(light) for light in LIGHTS], background="transparent (straight alpha)"),
        splits={name: [r["id"] for r in records if r["split"] == name] for name in counts},
        objects=records,
    )
    (out_dir / "dataset.json").write_text(json.dumps(info, indent=1))
    return out_dir
