"""The real meshes fastfields ships (``data/meshes/``, see its README for sources and licences).

``load_mesh(name)`` returns a ``trimesh.Trimesh`` with vertex colours sampled from the
texture, rotated from the files' y-up frame to the z-up frame of the procedural shapes and
normalised like them (:func:`fastfields.datasets.procedural.normalize_mesh`: centred, inside
``[-0.5, 0.5]^3`` and the sphere of radius 0.55).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .procedural import FIT_RADIUS, normalize_mesh

#: name -> OBJ file under the shipped ``meshes/`` folder.
MESHES = {"spot": "spot/spot_triangulated.obj", "avocado": "avocado/avocado.obj"}

# y up (the files) -> z up: (x, y, z) -> (x, -z, y)
_Y_UP_TO_Z_UP = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


def mesh_path(name: str) -> Path:
    """Path of a shipped mesh's OBJ file."""
    from ..data import shipped_data

    if name not in MESHES:
        raise ValueError(f"load_mesh: name must be one of {tuple(MESHES)}, got {name!r}")
    return shipped_data(f"meshes/{MESHES[name]}")


def load_mesh(name: str, *, normalize: bool = True):
    """A shipped mesh (``"spot"`` or ``"avocado"``) with vertex colours, z up.

    Args:
        name: one of :data:`MESHES`.
        normalize: centre and scale as the procedural shapes (default); False keeps the
            file's units (still rotated to z up).
    Returns:
        ``trimesh.Trimesh`` with ``visual.kind == "vertex"`` (RGBA uint8 vertex colours; the
        texture is sampled at each vertex's UV, so colour detail finer than the mesh is lost).
    """
    import trimesh

    path = mesh_path(name)
    try:
        mesh = trimesh.load(str(path), force="mesh", process=False)
    except Exception as error:  # trimesh raises many types on a bad file
        raise ValueError(f"load_mesh: could not read {path}: {error}") from error
    if getattr(mesh.visual, "kind", None) == "texture":
        colors = mesh.visual.to_color().vertex_colors
    else:
        colors = np.full((len(mesh.vertices), 4), 180, dtype=np.uint8)
    mesh = trimesh.Trimesh(mesh.vertices, mesh.faces, vertex_colors=colors, process=False)
    mesh.apply_transform(_Y_UP_TO_Z_UP)
    return normalize_mesh(mesh, FIT_RADIUS) if normalize else mesh
