"""Multi-object posed-view datasets: procedural shapes, shipped meshes, a CPU renderer, SRN layout.

    >>> from fastfields.datasets import build_dataset, SRNDataset
    >>> root = build_dataset("data-out", categories=("chair", "car"), objects_per_category=8)  # doctest: +SKIP
    >>> train = SRNDataset(root, split="train")                                                # doctest: +SKIP
    >>> item = train[0]   # id, images [V, H, W, 3] on white, alpha [V, H, W], c2w [V, 4, 4], intrinsics [V, 4]

Conventions: world z up; cameras in the OpenCV convention (x right, y down, looking along
+z) as SRN stores them; intrinsics ``(fx, fy, cx, cy)`` in pixels; images straight alpha.
Needs the ``models`` extra (trimesh, pillow, tqdm).
"""

from .build import SRN_CAR_DISTANCE, SRN_FOCAL_128, build_dataset, sample_cameras, srn_intrinsics
from .meshes import MESHES, load_mesh
from .procedural import CATEGORIES, FIT_RADIUS, make_shape, normalize_mesh
from .render import render_views
from .srn import SRNDataset, read_intrinsics, read_pose, write_srn_object

__all__ = [
    "CATEGORIES",
    "FIT_RADIUS",
    "MESHES",
    "SRNDataset",
    "SRN_CAR_DISTANCE",
    "SRN_FOCAL_128",
    "build_dataset",
    "load_mesh",
    "make_shape",
    "normalize_mesh",
    "read_intrinsics",
    "read_pose",
    "render_views",
    "sample_cameras",
    "srn_intrinsics",
    "write_srn_object",
]
