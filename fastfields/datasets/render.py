"""A small, exact, vectorised CPU rasteriser for posed views of coloured meshes.

Cameras are in the **OpenCV convention**, as SRN stores its poses: ``c2w [V, 4, 4]`` maps
camera to world coordinates, in camera coordinates x points right, y down the image and the
camera looks along **+z** (``fastfields.rendering.cameras`` converts from OpenGL with
``c2w @ diag(1, -1, -1, 1)``). ``intrinsics [V, 4]`` are ``(fx, fy, cx, cy)`` in pixels;
pixel ``(row i, column j)`` covers image points ``[j, j + 1) x [i, i + 1)``, its centre is
``(j + 0.5, i + 0.5)`` — the ``pixel_center=0.5`` of
:func:`fastfields.rendering.rays_from_cameras`, so a ray through a pixel centre hits exactly
the surface this renderer draws there.

Method: every triangle is projected, the pixels whose centres fall in its screen bounding
box are enumerated as (triangle, pixel) pairs, edge functions decide coverage and a
z-buffer (``scatter_reduce(amin)`` on the depth, ties broken by the triangle index) keeps
the nearest surface; depth and colour are interpolated perspective-correctly. Anti-aliasing
supersamples ``ss x ss`` points per pixel and averages them in premultiplied space, so the
returned alpha is the pixel's coverage and the colour is straight (not premultiplied).

Shading is view independent (so the views of one object are consistent, as a radiance
field assumes): ``albedo * (ambient + (1 - ambient) * sum_k w_k |n . l_k|)`` with two fixed
world-space directional lights (z up) and two-sided flat normals.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

#: Two world-space light directions (towards the light, z up) and their weights.
LIGHTS = ((0.4, -0.5, 0.8, 0.7), (-0.6, 0.5, 0.3, 0.3))
AMBIENT = 0.35
NEAR = 1e-3
_PAIR_CHUNK = 1 << 21  # (triangle, pixel) pairs per step; bounds the memory at ~100 MB


def mesh_colors(mesh) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """``(face_rgb [F, 3], vertex_rgb [N, 3] or None)`` as float32 in [0, 1] of a Trimesh.

    Vertex colours are used (interpolated) when the mesh has them; texture visuals are
    sampled to vertex colours; a mesh without colours is light grey."""
    visual = mesh.visual
    kind = getattr(visual, "kind", None)
    if kind == "texture":
        visual = visual.to_color()
        kind = visual.kind
    if kind == "vertex":
        vc = np.asarray(visual.vertex_colors, dtype=np.float32)[:, :3] / 255.0
        return vc[np.asarray(mesh.faces)].mean(axis=1), vc
    if kind == "face":
        return np.asarray(visual.face_colors, dtype=np.float32)[:, :3] / 255.0, None
    return np.full((len(mesh.faces), 3), 0.7, dtype=np.float32), None


def _check(c2w, intrinsics, height, width, supersample):
    op = "render_views"
    c2w = torch.as_tensor(np.asarray(c2w) if not isinstance(c2w, torch.Tensor) else c2w, dtype=torch.float64)
    intrinsics = torch.as_tensor(np.asarray(intrinsics) if not isinstance(intrinsics, torch.Tensor) else intrinsics,
                                 dtype=torch.float64)
    if c2w.dim() != 3 or c2w.shape[1:] not in ((4, 4), (3, 4)):
        raise ValueError(f"{op}: c2w must have shape [V, 4, 4] (OpenCV camera-to-world), got shape {tuple(c2w.shape)}")
    if intrinsics.dim() == 1 and intrinsics.shape[0] == 4:
        intrinsics = intrinsics.expand(c2w.shape[0], 4)
    if intrinsics.dim() != 2 or intrinsics.shape != (c2w.shape[0], 4):
        raise ValueError(f"{op}: intrinsics must have shape [V, 4] = (fx, fy, cx, cy) in pixels with V = {c2w.shape[0]}, "
                         f"got shape {tuple(intrinsics.shape)}")
    if not bool(torch.isfinite(c2w).all()) or not bool(torch.isfinite(intrinsics).all()):
        raise ValueError(f"{op}: c2w and intrinsics must be finite")
    if not bool((intrinsics[:, :2] > 0).all()):
        raise ValueError(f"{op}: intrinsics fx and fy must be positive, got {intrinsics[:, :2].tolist()}")
    for name, size in (("height", height), ("width", width), ("supersample", supersample)):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"{op}: {name} must be a positive int, got {size!r}")
    return c2w, intrinsics


def _rasterize_view(verts_cam: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, height: int, width: int):
    """Nearest triangle per pixel centre of one view.

    Returns ``face [H*W]`` (int64, -1 where empty), the screen-space barycentrics
    ``bary [H*W, 3]`` (float64) of the pixel centre in that triangle and the depth
    ``[H*W]`` (float64, inf where empty)."""
    fx, fy, cx, cy = K.tolist()
    z = verts_cam[:, 2]
    u = fx * verts_cam[:, 0] / z.clamp_min(NEAR) + cx
    v = fy * verts_cam[:, 1] / z.clamp_min(NEAR) + cy
    tri_z, tri_u, tri_v = z[faces], u[faces], v[faces]  # [F, 3]
    # Pixel centres (j + 0.5, i + 0.5) inside the bounding box: j in [ceil(umin - 0.5), floor(umax - 0.5)].
    j0 = torch.ceil(tri_u.amin(1) - 0.5).clamp(0, width).long()
    j1 = torch.floor(tri_u.amax(1) - 0.5).clamp(-1, width - 1).long()
    i0 = torch.ceil(tri_v.amin(1) - 0.5).clamp(0, height).long()
    i1 = torch.floor(tri_v.amax(1) - 0.5).clamp(-1, height - 1).long()
    # Edge functions are affine in the pixel position p: b_k(p) = A_k p_u + B_k p_v + C_k (the
    # signed area opposite vertex k over the triangle's), and so is 1 / depth = sum_k b_k / z_k.
    u0, u1, u2 = tri_u.unbind(1)
    v0, v1, v2 = tri_v.unbind(1)
    A = torch.stack((v1 - v2, v2 - v0, v0 - v1), 1)
    B = torch.stack((u2 - u1, u0 - u2, u1 - u0), 1)
    C = torch.stack((u1 * v2 - u2 * v1, u2 * v0 - u0 * v2, u0 * v1 - u1 * v0), 1)
    area = C.sum(1)  # twice the signed area
    bw, bh = (j1 - j0 + 1).clamp_min(0), (i1 - i0 + 1).clamp_min(0)
    keep = (tri_z.amin(1) > NEAR) & (area.abs() > 1e-12) & (bw > 0) & (bh > 0)
    safe_area = torch.where(keep, area, torch.ones_like(area))[:, None]
    A, B, C = A / safe_area, B / safe_area, C / safe_area
    inv_z = 1.0 / tri_z.clamp_min(NEAR)
    coef = torch.stack((torch.cat((A, (A * inv_z).sum(1, keepdim=True)), 1),
                        torch.cat((B, (B * inv_z).sum(1, keepdim=True)), 1),
                        torch.cat((C, (C * inv_z).sum(1, keepdim=True)), 1)), 1)  # [F, 3 (A, B, C), 4 (b0, b1, b2, 1/z)]

    def evaluate(f, pu, pv):
        c = coef[f]
        return c[:, 0] * pu[:, None] + c[:, 1] * pv[:, None] + c[:, 2]  # [P, 4]

    idx = keep.nonzero().squeeze(1)
    n_pix = height * width
    counts = (bw * bh)[idx]
    empty = torch.iinfo(torch.int64).max
    best = torch.full((n_pix,), empty, dtype=torch.int64)
    bounds = torch.cumsum(counts, 0)
    start = 0
    while start < len(idx):  # chunks of about _PAIR_CHUNK (triangle, pixel) pairs
        stop = max(int(torch.searchsorted(bounds, bounds[start] - counts[start] + _PAIR_CHUNK, right=True)), start + 1)
        tri, c = idx[start:stop], counts[start:stop]
        start = stop
        owner = torch.repeat_interleave(c)
        offset = torch.arange(len(owner)) - (torch.cumsum(c, 0) - c)[owner]
        f = tri[owner]
        width_f = bw[f]
        jj = j0[f] + offset % width_f
        ii = i0[f] + offset // width_f
        val = evaluate(f, jj.double() + 0.5, ii.double() + 0.5)
        inside = (val[:, :3] >= 0).all(1) & (val[:, 3] > 0)
        f, pixel, depth = f[inside], (ii * width + jj)[inside], 1.0 / val[inside, 3]
        # One z-test and tie-break: the key is the float32 depth's bits (monotone for positive
        # floats) above the triangle index, so amin keeps the nearest, then the lowest index.
        key = (depth.float().view(torch.int32).long() << 32) | f
        best.scatter_reduce_(0, pixel, key, reduce="amin")
    hit = best != empty
    face = torch.where(hit, best & 0xFFFFFFFF, torch.full_like(best, -1))
    bary = torch.zeros(n_pix, 3, dtype=torch.float64)
    depth = torch.full((n_pix,), float("inf"), dtype=torch.float64)
    pix = hit.nonzero().squeeze(1)
    if len(pix):
        val = evaluate(face[pix], (pix % width).double() + 0.5, (pix // width).double() + 0.5)
        bary[pix] = val[:, :3]
        depth[pix] = 1.0 / val[:, 3]
    return face, bary, tri_z, depth


def render_views(
    mesh,
    c2w,
    intrinsics,
    height: int,
    width: int,
    *,
    supersample: int = 2,
    return_depth: bool = False,
    shading: bool = True,
):
    """Render ``mesh`` from ``V`` cameras.

    Args:
        mesh: a ``trimesh.Trimesh`` with face, vertex or texture colours (see
            :func:`mesh_colors`).
        c2w: ``[V, 4, 4]`` (or ``[V, 3, 4]``) camera-to-world, **OpenCV convention** (x
            right, y down, looking along +z), tensor or array.
        intrinsics: ``[V, 4]`` (or one ``[4]`` for all views) ``(fx, fy, cx, cy)`` in pixels
            at ``height x width``.
        height, width: output size in pixels.
        supersample: ``ss``: ``ss x ss`` samples per pixel for anti-aliasing (1: none, the
            pixel centre only).
        return_depth: also return the depth.
        shading: Lambertian + ambient shading (see the module docstring); False gives the
            unlit albedo.

    Returns:
        ``rgba [V, H, W, 4]`` float32 in [0, 1], straight alpha (alpha = coverage;
        ``rgb`` is 0 where alpha is 0); with ``return_depth``, also ``depth [V, H, W]``
        float32: the z-depth along the optical axis (not the distance along the ray) of the
        nearest surface at the pixel centre, ``inf`` where no surface is there (taken from
        the centre sample whatever ``supersample`` is).
    """
    c2w, intrinsics = _check(c2w, intrinsics, height, width, supersample)
    vertices = torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float64)
    faces = torch.as_tensor(np.asarray(mesh.faces), dtype=torch.int64)
    if faces.dim() != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise ValueError(f"render_views: mesh must have triangle faces [F, 3], got shape {tuple(faces.shape)}")
    face_rgb, vertex_rgb = mesh_colors(mesh)
    face_rgb = torch.as_tensor(face_rgb, dtype=torch.float64)
    vertex_rgb = None if vertex_rgb is None else torch.as_tensor(vertex_rgb, dtype=torch.float64)
    tri = vertices[faces]
    normals = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals = normals / normals.norm(dim=1, keepdim=True).clamp_min(1e-20)
    if shading:
        light = torch.zeros(len(faces), dtype=torch.float64)
        for lx, ly, lz, weight in LIGHTS:
            direction = torch.tensor([lx, ly, lz], dtype=torch.float64)
            light += weight * (normals @ (direction / direction.norm())).abs()
        face_shade = AMBIENT + (1 - AMBIENT) * light
    else:
        face_shade = torch.ones(len(faces), dtype=torch.float64)

    ss = int(supersample)
    big_h, big_w = height * ss, width * ss
    V = c2w.shape[0]
    rgba = torch.zeros(V, height, width, 4, dtype=torch.float32)
    depth_out = torch.full((V, height, width), float("inf"), dtype=torch.float32) if return_depth else None
    for view in range(V):
        R, t = c2w[view, :3, :3], c2w[view, :3, 3]
        verts_cam = (vertices - t) @ R  # world -> camera: R^T (x - t)
        fx, fy, cx, cy = intrinsics[view].tolist()
        # The supersampled image: sample (J + 0.5) / ss in pixel units, i.e. scaled intrinsics.
        K = torch.tensor([fx * ss, fy * ss, cx * ss, cy * ss], dtype=torch.float64)
        face, bary, tri_z, big_depth = _rasterize_view(verts_cam, faces, K, big_h, big_w)
        hit = face >= 0
        color = torch.zeros(big_h * big_w, 3, dtype=torch.float64)
        f = face[hit]
        if len(f):
            if vertex_rgb is None:
                albedo = face_rgb[f]
            else:  # perspective-correct interpolation of vertex colours
                w = bary[hit] / tri_z[f]
                w = w / w.sum(1, keepdim=True)
                albedo = (w[:, :, None] * vertex_rgb[faces[f]]).sum(1)
            color[hit] = albedo * face_shade[f, None]
        alpha = hit.double().view(height, ss, width, ss).mean(dim=(1, 3))
        premult = color.view(height, ss, width, ss, 3).mean(dim=(1, 3))
        rgb = torch.where(alpha[..., None] > 0, premult / alpha.clamp_min(1e-12)[..., None], torch.zeros_like(premult))
        rgba[view, ..., :3] = rgb.clamp(0, 1).float()
        rgba[view, ..., 3] = alpha.float()
        if return_depth:
            if ss % 2 == 1:  # the middle sample of each pixel is its centre
                d = big_depth.view(height, ss, width, ss)[:, ss // 2, :, ss // 2]
            else:  # depth at the true pixel centres: one extra pass without supersampling
                K1 = torch.tensor([fx, fy, cx, cy], dtype=torch.float64)
                d = _rasterize_view(verts_cam, faces, K1, height, width)[3]
            depth_out[view] = d.view(height, width).float()
    if return_depth:
        return rgba, depth_out
    return rgba
