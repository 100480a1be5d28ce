"""fastfields.rendering: rays from cameras, ray-box intersection, samplers and the
occupancy grid, against known geometric answers and plain loop implementations."""

import math

import pytest
import torch

from fastfields.rendering import (
    OccupancyGrid,
    merge_samples,
    packed_info,
    ray_aabb_intersect,
    rays_from_cameras,
    sample_pdf,
    smooth_weights,
    stratified_samples,
)

BOX = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0)
OPENCV_FROM_OPENGL = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


def random_c2w(batch, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(batch, 3, 3, generator=gen, dtype=torch.float64))
    c2w = torch.eye(4, dtype=torch.float64).repeat(batch, 1, 1)
    c2w[:, :3, :3] = rotation
    c2w[:, :3, 3] = torch.randn(batch, 3, generator=gen, dtype=torch.float64) * 3
    return c2w.to(dtype)


def pixel_intrinsics(fx, fy, cx, cy, skew=0.0, batch=1):
    K = torch.tensor([[fx, skew, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return K.repeat(batch, 1, 1)


def look_at_opencv(position, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)):
    """c2w of an OpenCV camera at ``position`` looking at ``target`` (y down, z forward)."""
    position, target, up = (torch.tensor(v, dtype=torch.float64) for v in (position, target, up))
    forward = torch.nn.functional.normalize(target - position, dim=0)
    right = torch.nn.functional.normalize(torch.linalg.cross(forward, up), dim=0)
    down = torch.linalg.cross(forward, right)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, position
    return c2w[None]


# ---------------------------------------------------------------------------------------
# rays_from_cameras


def test_camera_at_known_pose():
    # Camera at (3, 0, 0) looking at the origin, 5x5 pixels, principal point at the centre.
    c2w = look_at_opencv((3.0, 0.0, 0.0))
    K = pixel_intrinsics(5.0, 5.0, 2.5, 2.5)
    rays_o, rays_d = rays_from_cameras(c2w, K, 5, 5)
    assert rays_o.shape == rays_d.shape == (1, 25, 3) and rays_d.dtype == torch.float64
    torch.testing.assert_close(rays_o, torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64).expand(1, 25, 3))
    image = rays_d.view(5, 5, 3)
    torch.testing.assert_close(image[2, 2], torch.tensor([-1.0, 0.0, 0.0], dtype=torch.float64))  # the principal ray
    torch.testing.assert_close(rays_d.norm(dim=-1), torch.ones(1, 25, dtype=torch.float64))
    # World z is up: the top row looks up, the right column towards +y (right of a camera facing -x).
    assert image[0, 2, 2] > 0 and image[4, 2, 2] < 0
    assert image[2, 4, 1] > 0 and image[2, 0, 1] < 0
    # Pixel (row 2, column 4) is 2 pixels = 2/5 focal lengths right of the axis.
    torch.testing.assert_close(image[2, 4], torch.nn.functional.normalize(torch.tensor([-1.0, 0.4, 0.0], dtype=torch.float64), dim=0))


def test_opengl_camera_looks_along_minus_z():
    c2w = torch.eye(4, dtype=torch.float64)[None]
    K = pixel_intrinsics(4.0, 4.0, 1.0, 2.0)
    _, rays_d = rays_from_cameras(c2w, K, 4, 3, convention="opengl", pixel_center=0.0)
    image = rays_d.view(4, 3, 3)
    torch.testing.assert_close(image[2, 1], torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64))  # pixel corner (1, 2)
    assert (image[..., 2] < 0).all()
    assert (image[:2, :, 1] > 0).all() and (image[3, :, 1] < 0).all()  # rows above the axis look up (+y)
    assert (image[:, 0, 0] < 0).all() and (image[:, 2, 0] > 0).all()  # columns right of it look right (+x)


@pytest.mark.parametrize("normalize", [True, False])
def test_conventions_agree_after_flipping_y_and_z(normalize):
    c2w_gl = random_c2w(3)
    K = pixel_intrinsics(7.0, 6.0, 3.2, 2.9, skew=0.3, batch=3)
    o_gl, d_gl = rays_from_cameras(c2w_gl, K, 5, 6, convention="opengl", normalize_directions=normalize)
    o_cv, d_cv = rays_from_cameras(c2w_gl @ OPENCV_FROM_OPENGL, K, 5, 6, convention="opencv", normalize_directions=normalize)
    torch.testing.assert_close(o_gl, o_cv)
    torch.testing.assert_close(d_gl, d_cv)


@pytest.mark.parametrize("convention", ["opencv", "opengl"])
def test_rays_project_back_to_their_pixels(convention):
    # Any point on a ray must project (pinhole, with skew) to the pixel it came from.
    B, H, W, center = 2, 4, 7, 0.5
    c2w = random_c2w(B, seed=1)
    K = pixel_intrinsics(9.0, 8.0, 3.1, 2.2, skew=0.7, batch=B)
    rays_o, rays_d = rays_from_cameras(c2w, K, H, W, convention=convention, pixel_center=center)
    points = rays_o + 2.5 * rays_d
    if convention == "opengl":
        c2w = c2w @ OPENCV_FROM_OPENGL
    camera = (points - c2w[:, None, :3, 3]) @ c2w[:, :3, :3]  # world -> OpenCV camera frame
    assert (camera[..., 2] > 0).all()
    uv = (camera / camera[..., 2:]) @ K.transpose(1, 2)
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    want = torch.stack([cols, rows], dim=-1).reshape(1, H * W, 2).to(torch.float64) + center
    torch.testing.assert_close(uv[..., :2], want.expand(B, -1, -1))


def test_unnormalized_directions_have_unit_depth():
    c2w = random_c2w(2, seed=2)
    K = pixel_intrinsics(5.0, 5.0, 2.0, 3.0, batch=2)
    _, rays_d = rays_from_cameras(c2w, K, 3, 4, normalize_directions=False)
    depth = (rays_d @ c2w[:, :3, :3])[..., 2]  # component along the optical axis
    torch.testing.assert_close(depth, torch.ones_like(depth))


def eg3d_ray_sampler(c2w, intrinsics, resolution, opencv_to_blender=False):
    """EG3D's RaySampler (OpenLRM's when opencv_to_blender), written plainly: normalised
    intrinsics, uv = (index + 0.5) / resolution, the x_lift/y_lift formula with skew."""
    fx, fy = intrinsics[:, 0, 0, None], intrinsics[:, 1, 1, None]
    cx, cy, sk = intrinsics[:, 0, 2, None], intrinsics[:, 1, 2, None], intrinsics[:, 0, 1, None]
    i, j = torch.meshgrid(torch.arange(resolution), torch.arange(resolution), indexing="ij")
    x = (j.reshape(1, -1).to(c2w.dtype) + 0.5) / resolution
    y = (i.reshape(1, -1).to(c2w.dtype) + 0.5) / resolution
    x_lift = (x - cx + cy * sk / fy - sk * y / fy) / fx
    y_lift = (y - cy) / fy
    points = torch.stack([x_lift, y_lift, torch.ones_like(x_lift), torch.ones_like(x_lift)], dim=-1)
    if opencv_to_blender:
        c2w = c2w @ OPENCV_FROM_OPENGL.to(c2w.dtype)
    world = (c2w @ points.transpose(1, 2)).transpose(1, 2)[..., :3]
    dirs = torch.nn.functional.normalize(world - c2w[:, None, :3, 3], dim=-1)
    return c2w[:, None, :3, 3].expand_as(dirs), dirs


def test_eg3d_and_openlrm_normalized_intrinsics():
    c2w = random_c2w(2, seed=3)
    K_norm = pixel_intrinsics(1.025, 1.1, 0.5, 0.45, skew=0.02, batch=2)  # EG3D's label layout (fractions of the image)
    for convention, blender in (("opencv", False), ("opengl", True)):  # EG3D: OpenCV poses; OpenLRM: Blender poses
        want_o, want_d = eg3d_ray_sampler(c2w, K_norm, 6, opencv_to_blender=blender)
        got_o, got_d = rays_from_cameras(c2w, K_norm, 6, 6, convention=convention, normalized_intrinsics=True)
        torch.testing.assert_close(got_o, want_o)
        torch.testing.assert_close(got_d, want_d)


def test_normalized_intrinsics_scale_by_image_size():
    H, W = 6, 10
    c2w = random_c2w(2, seed=4)
    K_pix = pixel_intrinsics(12.0, 9.0, 5.5, 2.5, skew=0.4, batch=2)
    K_norm = K_pix / torch.tensor([W, H, 1.0], dtype=torch.float64)[:, None]  # rows: (fx, s, cx)/W, (fy, cy)/H
    want = rays_from_cameras(c2w, K_pix, H, W)
    torch.testing.assert_close(rays_from_cameras(c2w, K_norm, H, W, normalized_intrinsics=True), want)
    # OpenLRM's (fx, fy, cx, cy) / (W, H, W, H) rows give the same rays as the matrix without skew.
    K_pix[:, 0, 1] = 0
    rows = torch.tensor([[12.0 / W, 9.0 / H, 5.5 / W, 2.5 / H]], dtype=torch.float64).repeat(2, 1)
    torch.testing.assert_close(rays_from_cameras(c2w, rows, H, W, normalized_intrinsics=True), rays_from_cameras(c2w, K_pix, H, W))


def test_rays_from_cameras_dtype_and_gradient():
    c2w = random_c2w(1, dtype=torch.float32)[:, :3].requires_grad_(True)  # [B, 3, 4] works too
    K = pixel_intrinsics(4.0, 4.0, 2.0, 2.0).float()
    rays_o, rays_d = rays_from_cameras(c2w, K, 4, 4)
    assert rays_o.dtype == rays_d.dtype == torch.float32
    (rays_o.sum() + rays_d.sum()).backward()
    assert c2w.grad is not None and torch.isfinite(c2w.grad).all() and c2w.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------
# ray_aabb_intersect


def rays(*pairs):
    o = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    d = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    return o, d


def test_aabb_known_answers():
    rays_o, rays_d = rays(
        ((-3.0, 0.0, 0.0), (1.0, 0.0, 0.0)),  # through the centre, along x (two zero components)
        ((-3.0, -3.0, -3.0), (2.0, 2.0, 2.0)),  # diagonal, unnormalised: t in units of |d|
        ((-3.0, 2.0, 0.0), (1.0, 0.0, 0.0)),  # parallel to x, outside the y slab: miss
        ((-3.0, 0.0, 0.0), (-1.0, 0.0, 0.0)),  # pointing away: miss
        ((-3.0, 0.0, 0.0), (1.0, 3.0, 0.0)),  # passes above the box: miss
        ((0.5, 0.0, 0.0), (1.0, 0.0, 0.0)),  # starts inside
        ((0.0, 0.0, 5.0), (0.0, 0.0, -1.0)),  # along -z
        ((-3.0, 1.0, 0.0), (1.0, 0.0, 0.0)),  # on the y = 1 face: the closed box is hit
    )
    t_near, t_far, hit = ray_aabb_intersect(rays_o, rays_d, BOX)
    assert hit.tolist() == [True, True, False, False, False, True, True, True]
    want_near = torch.tensor([2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 4.0, 2.0], dtype=torch.float64)
    want_far = torch.tensor([4.0, 2.0, 0.0, 0.0, 0.0, 0.5, 6.0, 4.0], dtype=torch.float64)
    torch.testing.assert_close(t_near, want_near)
    torch.testing.assert_close(t_far, want_far)


def test_aabb_near_far_clip():
    rays_o, rays_d = rays(((-3.0, 0.0, 0.0), (1.0, 0.0, 0.0)), ((0.5, 0.0, 0.0), (1.0, 0.0, 0.0)))
    t_near, t_far, hit = ray_aabb_intersect(rays_o, rays_d, BOX, near=0.2, far=3.0)
    torch.testing.assert_close(t_near, torch.tensor([2.0, 0.2], dtype=torch.float64))
    torch.testing.assert_close(t_far, torch.tensor([3.0, 0.5], dtype=torch.float64))
    # Per-ray bounds; a far plane before the box empties the interval (t_near = t_far = near).
    t_near, t_far, hit = ray_aabb_intersect(rays_o, rays_d, BOX, near=torch.tensor([0.0, 0.1]), far=torch.tensor([1.5, 9.0]))
    assert hit.tolist() == [False, True]
    torch.testing.assert_close(t_near, torch.tensor([0.0, 0.1], dtype=torch.float64))
    torch.testing.assert_close(t_far, torch.tensor([0.0, 0.5], dtype=torch.float64))


def test_aabb_layouts_agree():
    rays_o, rays_d = rays(((-3.0, 0.2, 0.1), (1.0, 0.1, 0.0)))
    box = (-1.0, -2.0, -0.5, 1.0, 2.0, 0.5)
    want = ray_aabb_intersect(rays_o, rays_d, box)
    for layout in (torch.tensor(box), list(box), ((-1.0, -2.0, -0.5), (1.0, 2.0, 0.5)), (torch.tensor(box[:3]), torch.tensor(box[3:]))):
        for got, expected in zip(ray_aabb_intersect(rays_o, rays_d, layout), want):
            torch.testing.assert_close(got, expected)


def test_aabb_against_dense_marching():
    gen = torch.Generator().manual_seed(0)
    n = 96
    rays_o = torch.randn(n, 3, generator=gen, dtype=torch.float64) * 1.5
    rays_d = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    rays_d[: n // 3, 0] = 0  # axis-parallel rays
    rays_d[n // 3 : n // 2, 1:] = 0
    box = torch.tensor([-1.0, -0.5, -0.8, 0.7, 1.0, 0.9], dtype=torch.float64)
    t_near, t_far, hit = ray_aabb_intersect(rays_o, rays_d, box)
    t = torch.linspace(0, 8, 8001, dtype=torch.float64)
    points = rays_o[:, None] + t[None, :, None] * rays_d[:, None]
    inside = ((points >= box[:3]) & (points <= box[3:])).all(dim=-1)  # [n, T]
    assert torch.equal(hit, inside.any(dim=-1)) and 10 < int(hit.sum()) < n
    first = torch.where(inside, t, torch.inf).amin(dim=-1)
    last = torch.where(inside, t, -torch.inf).amax(dim=-1)
    step = 1e-3
    assert (first[hit] - t_near[hit]).abs().max() <= step and (t_far[hit] - last[hit]).abs().max() <= step


def test_aabb_gradients_finite_with_zero_components():
    rays_o, rays_d = rays(((-3.0, 0.2, 0.1), (1.0, 0.0, 0.0)), ((0.1, 0.2, -4.0), (0.0, 0.0, 2.0)))
    rays_o.requires_grad_(True)
    rays_d.requires_grad_(True)
    t_near, t_far, _ = ray_aabb_intersect(rays_o, rays_d, BOX)
    (t_near + t_far).sum().backward()
    assert torch.isfinite(rays_o.grad).all() and torch.isfinite(rays_d.grad).all()
    torch.testing.assert_close(rays_o.grad[0], torch.tensor([-2.0, 0.0, 0.0], dtype=torch.float64))


def test_aabb_nan_rays_miss():
    rays_o, rays_d = rays(((math.nan, 0.0, 0.0), (1.0, 0.0, 0.0)), ((-3.0, 0.0, 0.0), (math.nan, 0.0, 0.0)))
    t_near, t_far, hit = ray_aabb_intersect(rays_o, rays_d, BOX)
    assert not hit.any() and torch.isfinite(t_near).all() and torch.isfinite(t_far).all()


# ---------------------------------------------------------------------------------------
# stratified_samples


def test_stratified_unperturbed_is_linspace():
    t_near = torch.tensor([0.5, 2.25, 1.0])
    t_far = torch.tensor([1.5, 3.3, 1.0])
    t = stratified_samples(t_near, t_far, 7)
    want = torch.stack([torch.linspace(float(a), float(b), 7) for a, b in zip(t_near, t_far)])
    torch.testing.assert_close(t, want)
    assert t.shape == (3, 7) and t.dtype == torch.float32
    assert torch.equal(t[:, 0], t_near) and torch.allclose(t[:, -1], t_far)


def test_stratified_perturbed_bounds_and_order():
    gen = torch.Generator().manual_seed(0)
    t_near, t_far, S = torch.full((256,), 2.25), 3.3, 48
    t = stratified_samples(t_near, t_far, S, perturb=True, generator=gen)
    grid = stratified_samples(t_near, t_far, S)
    spacing = (3.3 - 2.25) / (S - 1)
    offset = (t - grid) / spacing  # EG3D: each sample moves forward by U[0, 1) spacings
    assert (offset >= -1e-5).all() and (offset < 1 + 1e-5).all()
    assert (t[:, 1:] > t[:, :-1]).all()
    assert 0.45 < float(offset.mean()) < 0.55 and float(offset.std()) > 0.25  # one independent draw per sample
    assert float(offset[0].std()) > 0.2  # not a single offset per ray
    again = stratified_samples(t_near, t_far, S, perturb=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, again)


def test_stratified_disparity():
    t_near, t_far = torch.tensor([0.5, 1.0], dtype=torch.float64), torch.tensor([4.0, 2.0], dtype=torch.float64)
    t = stratified_samples(t_near, t_far, 5, spacing="disparity")
    assert t.dtype == torch.float64
    inv = 1 / t
    torch.testing.assert_close(inv[:, 1:] - inv[:, :-1], ((1 / t_far - 1 / t_near) / 4)[:, None].expand(2, 4))
    torch.testing.assert_close(t[:, 0], t_near)
    torch.testing.assert_close(t[:, -1], t_far)
    t_far = torch.tensor([2.5, 5.0], dtype=torch.float64)  # the largest far planes that allow jitter with 5 samples
    jittered = stratified_samples(t_near, t_far, 5, spacing="disparity", perturb=True, generator=torch.Generator().manual_seed(1))
    grid = stratified_samples(t_near, t_far, 5, spacing="disparity")
    assert (jittered >= grid).all() and (jittered[:, :-1] < grid[:, 1:]).all()
    assert (jittered[:, 1:] > jittered[:, :-1]).all() and (jittered > 0).all() and torch.isfinite(jittered).all()


def test_stratified_shapes_and_broadcasting():
    t_far = torch.full((2, 3), 4.0)
    t = stratified_samples(1.0, t_far, 4)
    assert t.shape == (2, 3, 4)
    torch.testing.assert_close(t[1, 2], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    single = stratified_samples(torch.tensor([1.0]), torch.tensor([3.0]), 1)
    assert single.tolist() == [[1.0]]
    single = stratified_samples(torch.tensor([1.0]), torch.tensor([3.0]), 1, perturb=True)
    assert 1.0 <= float(single) < 3.0


# ---------------------------------------------------------------------------------------
# sample_pdf, smooth_weights, merge_samples


def brute_force_inverse_cdf(bins, weights, u, eps=1e-5):
    """The piecewise-linear inverse CDF, one sample at a time."""
    out = torch.empty(len(u), dtype=torch.float64)
    w = [float(x) + eps for x in weights]
    total = sum(w)
    cdf = [0.0]
    for x in w:
        cdf.append(cdf[-1] + x / total)
    for n, value in enumerate(u.tolist()):
        k = max(i for i in range(len(w)) if cdf[i] <= value) if value < cdf[-1] else len(w) - 1
        frac = (value - cdf[k]) / (cdf[k + 1] - cdf[k])
        out[n] = float(bins[k]) + min(frac, 1.0) * float(bins[k + 1] - bins[k])
    return out


@pytest.mark.parametrize("deterministic", [True, False])
def test_sample_pdf_matches_brute_force(deterministic):
    gen = torch.Generator().manual_seed(0)
    R, S, n = 5, 9, 33
    bins = torch.sort(torch.rand(R, S + 1, generator=gen, dtype=torch.float64) * 4 + 1, dim=-1).values
    weights = torch.rand(R, S, generator=gen, dtype=torch.float64)
    weights[weights < 0.3] = 0  # empty bins
    t = sample_pdf(bins, weights, n, deterministic=deterministic, generator=torch.Generator().manual_seed(7))
    if deterministic:
        u = torch.linspace(0, 1, n, dtype=torch.float64).expand(R, n)
    else:
        u = torch.rand(R, n, generator=torch.Generator().manual_seed(7), dtype=torch.float64).sort(dim=-1).values
    want = torch.stack([brute_force_inverse_cdf(bins[r], weights[r], u[r]) for r in range(R)])
    torch.testing.assert_close(t, want)
    assert (t[:, 1:] >= t[:, :-1]).all() and (t >= bins[:, :1]).all() and (t <= bins[:, -1:]).all()


def test_sample_pdf_concentrates_where_the_weight_is():
    bins = torch.linspace(0, 10, 11).expand(4, 11)
    weights = torch.zeros(4, 10)
    weights[torch.arange(4), torch.tensor([0, 3, 7, 9])] = 1.0
    t = sample_pdf(bins, weights, 64, deterministic=False, generator=torch.Generator().manual_seed(0))
    lo = torch.tensor([0.0, 3.0, 7.0, 9.0])[:, None]
    in_bin = ((t >= lo) & (t <= lo + 1)).float().mean(dim=-1)
    assert (in_bin > 0.99).all()
    # Two bins with weights 3:1 receive samples in that ratio.
    weights = torch.zeros(1, 10)
    weights[0, 2], weights[0, 6] = 3.0, 1.0
    t = sample_pdf(bins[:1], weights, 4000, deterministic=True)
    share = ((t >= 2) & (t <= 3)).float().mean()
    assert abs(float(share) - 0.75) < 0.01


def test_sample_pdf_detached_and_shaped():
    bins = torch.linspace(0, 1, 6).expand(2, 3, 6).clone().requires_grad_(True)
    weights = torch.rand(2, 3, 5, requires_grad=True)
    t = sample_pdf(bins, weights, 8)
    assert t.shape == (2, 3, 8) and not t.requires_grad and t.dtype == torch.float32


def eg3d_sample_pdf(bins, weights, n_importance, eps=1e-5):
    """EG3D's sample_pdf (deterministic u), which tolerates bins longer than weights + 1."""
    n_rays, n_bins = weights.shape
    weights = weights + eps
    pdf = weights / weights.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)
    u = torch.linspace(0, 1, n_importance, dtype=bins.dtype).expand(n_rays, n_importance).contiguous()
    inds = torch.searchsorted(cdf, u, right=True)
    below, above = (inds - 1).clamp_min(0), inds.clamp_max(n_bins)
    idx = torch.stack([below, above], -1).view(n_rays, 2 * n_importance)
    cdf_g = cdf.gather(1, idx).view(n_rays, n_importance, 2)
    bins_g = bins.gather(1, idx).view(n_rays, n_importance, 2)
    denom = cdf_g[..., 1] - cdf_g[..., 0]
    denom[denom < eps] = 1
    return bins_g[..., 0] + (u - cdf_g[..., 0]) / denom * (bins_g[..., 1] - bins_g[..., 0])


def test_eg3d_importance_pass():
    # EG3D: S coarse depths, S - 1 interval weights, smoothed, then sample_pdf(t_mid, w[:, 1:-1]).
    gen = torch.Generator().manual_seed(3)
    S = 12
    t = stratified_samples(torch.full((4,), 2.25, dtype=torch.float64), 3.3, S)
    w = torch.rand(4, S - 1, generator=gen, dtype=torch.float64)
    smoothed = torch.nn.functional.avg_pool1d(torch.nn.functional.max_pool1d(w[:, None], 2, 1, padding=1), 2, 1)[:, 0] + 0.01
    t_mid = 0.5 * (t[:, :-1] + t[:, 1:])
    want = eg3d_sample_pdf(t_mid, smoothed[:, 1:-1], 16)
    got = sample_pdf(t_mid[:, :-1], smooth_weights(w)[:, 1:-1], 16)
    torch.testing.assert_close(got, want)


def test_smooth_weights_by_hand():
    w = torch.tensor([[0.0, 1.0, 0.0, 0.0, 2.0]])
    # max over (w[i-1], w[i]) with the ends unpadded: [0, 1, 1, 0, 2, 2]; pairwise means: [0.5, 1, 0.5, 1, 2]
    torch.testing.assert_close(smooth_weights(w), torch.tensor([[0.51, 1.01, 0.51, 1.01, 2.01]]))
    torch.testing.assert_close(smooth_weights(w, padding=0.0), torch.tensor([[0.5, 1.0, 0.5, 1.0, 2.0]]))
    torch.testing.assert_close(smooth_weights(torch.tensor([3.0])), torch.tensor([3.01]))
    x = torch.rand(2, 3, 6, dtype=torch.float64)
    left = torch.cat([x[..., :1], x[..., :-1]], dim=-1)
    right = torch.cat([x[..., 1:], x[..., -1:]], dim=-1)
    want = (torch.maximum(left, x) + torch.maximum(x, right)) / 2 + 0.01
    out = smooth_weights(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, want)


def test_merge_samples():
    t_coarse = torch.tensor([[1.0, 2.0, 3.0], [0.0, 5.0, 6.0]])
    t_fine = torch.tensor([[2.0, 0.5], [7.0, 5.5]])
    t, order = merge_samples(t_coarse, t_fine)
    assert t.tolist() == [[0.5, 1.0, 2.0, 2.0, 3.0], [0.0, 5.0, 5.5, 6.0, 7.0]]
    assert order.tolist() == [[4, 0, 1, 3, 2], [0, 1, 4, 2, 3]]  # ties keep the coarse sample first
    feats = torch.cat([t_coarse, t_fine], dim=-1)[..., None] * torch.tensor([1.0, -1.0])  # [R, S, 2]
    gathered = feats.gather(-2, order.unsqueeze(-1).expand_as(feats))
    torch.testing.assert_close(gathered[..., 0], t)
    torch.testing.assert_close(gathered[..., 1], -t)


# ---------------------------------------------------------------------------------------
# packed_info


def test_packed_info_against_loop():
    gen = torch.Generator().manual_seed(0)
    n_rays = 9
    ray_indices = torch.sort(torch.randint(0, n_rays, (40,), generator=gen)).values
    ray_indices = ray_indices[ray_indices != 4]  # a ray without samples
    info = packed_info(ray_indices, n_rays)
    assert info.shape == (n_rays, 2) and info.dtype == torch.int64
    for r in range(n_rays):
        members = (ray_indices == r).nonzero()[:, 0].tolist()
        assert info[r, 1] == len(members)
        if members:
            assert info[r, 0] == members[0] and members == list(range(members[0], members[0] + len(members)))
    assert info[4, 1] == 0 and int(info[-1].sum()) == len(ray_indices)
    assert packed_info(torch.zeros(0, dtype=torch.long), 3).tolist() == [[0, 0]] * 3


# ---------------------------------------------------------------------------------------
# OccupancyGrid


def sphere_density(radius, center=(0.0, 0.0, 0.0), value=10.0):
    center = torch.tensor(center)
    return lambda x: (((x - center).norm(dim=-1) < radius).float() * value)


def march_loop(grid, rays_o, rays_d, near, far, step_size, cone_angle=0.0):
    """Every ray marched one step at a time in Python: the plain implementation."""
    res = torch.tensor(grid.resolution)
    out = []
    for r in range(rays_o.shape[0]):
        o, d = rays_o[r].double(), rays_d[r].double()
        start, end, hit = ray_aabb_intersect(o, d, grid.aabbs[-1].double(), near, far)
        if not hit or not d.abs().max() > 0:
            continue
        t = float(start)
        while t < float(end):
            t1 = min(t + max(step_size, cone_angle * t), float(end))
            p = o + 0.5 * (t + t1) * d
            for level in range(grid.n_levels):
                lo, hi = grid.aabbs[level, :3].double(), grid.aabbs[level, 3:].double()
                if ((p >= lo) & (p <= hi)).all():
                    ijk = torch.minimum(torch.floor((p - lo) / (hi - lo) * res).long().clamp_min(0), res - 1)
                    if grid.occupied[level][tuple(ijk.tolist())]:
                        out.append((r, t, t1))
                    break
            t = t1
    return out


def test_grid_marches_everything_before_update():
    grid = OccupancyGrid(BOX, resolution=8)
    rays_o, rays_d = rays(((-3.0, 0.0, 0.0), (1.0, 0.0, 0.0)), ((-3.0, 2.0, 0.0), (1.0, 0.0, 0.0)), ((0.0, 0.0, 0.0), (0.0, 0.0, 1.0)))
    ray_indices, t_starts, t_ends = grid.sample(rays_o.float(), rays_d.float(), near=0.0, far=10.0, step_size=0.25)
    assert ray_indices.tolist() == [0] * 8 + [2] * 4
    torch.testing.assert_close(t_starts[:8], torch.arange(8) * 0.25 + 2.0)
    torch.testing.assert_close(t_ends[8:], torch.tensor([0.25, 0.5, 0.75, 1.0]))
    assert ray_indices.dtype == torch.int64 and t_starts.dtype == torch.float32


def test_grid_skips_empty_space_around_a_sphere():
    grid = OccupancyGrid(BOX, resolution=16)
    grid.update(sphere_density(0.5), step=0, n_samples_per_cell=4, generator=torch.Generator().manual_seed(0))
    cell_diagonal = 2 / 16 * math.sqrt(3)
    assert 0 < int(grid.occupied.sum()) < 16**3 // 4
    gen = torch.Generator().manual_seed(1)
    n = 64
    targets = (torch.rand(n, 3, generator=gen) * 2 - 1) * 0.9
    rays_o = torch.randn(n, 3, generator=gen)
    rays_o = 3 * rays_o / rays_o.norm(dim=-1, keepdim=True)
    rays_d = torch.nn.functional.normalize(targets - rays_o, dim=-1)
    rays_o[-4:, 0] = 5.0  # outside the box, looking away: no samples
    rays_d[-4:] = torch.tensor([1.0, 0.0, 0.0])
    step = 0.02
    ray_indices, t_starts, t_ends = grid.sample(rays_o, rays_d, near=0.0, far=10.0, step_size=step)
    midpoints = rays_o[ray_indices] + (0.5 * (t_starts + t_ends))[:, None] * rays_d[ray_indices]
    assert len(ray_indices) > 0 and (midpoints.norm(dim=-1) < 0.5 + cell_diagonal).all()
    assert (ray_indices[1:] >= ray_indices[:-1]).all() and (t_ends > t_starts).all()
    # distance from the centre to each ray's line
    closest = (rays_o - (rays_o * rays_d).sum(-1, keepdim=True) * rays_d).norm(dim=-1)
    counts = packed_info(ray_indices, n)[:, 1]
    assert (counts[closest > 0.5 + cell_diagonal] == 0).all() and (counts[-4:] == 0).all()
    # Cells wholly inside the sphere are surely occupied: the chord of the inner sphere is covered.
    for r in (closest < 0.5 - cell_diagonal - 0.05).nonzero()[:, 0].tolist():
        half = math.sqrt((0.5 - cell_diagonal) ** 2 - float(closest[r]) ** 2)
        t_mid = float(-(rays_o[r] * rays_d[r]).sum())
        mine = ray_indices == r
        for t in torch.arange(t_mid - half + step, t_mid + half - step, step / 2).tolist():
            assert ((t_starts[mine] <= t) & (t_ends[mine] >= t)).any()
    assert (counts[closest < 0.5 - cell_diagonal - 0.05] > 0).all()
    # Fewer samples than marching the whole box.
    full = OccupancyGrid(BOX, resolution=16).sample(rays_o, rays_d, near=0.0, far=10.0, step_size=step)[0]
    assert len(ray_indices) < len(full) / 3


@pytest.mark.parametrize("cone_angle", [0.0, 0.02])
@pytest.mark.parametrize("n_levels", [1, 2])
def test_grid_matches_loop_marcher(cone_angle, n_levels):
    grid = OccupancyGrid(BOX, resolution=(6, 8, 5), n_levels=n_levels)
    grid.update(sphere_density(0.8, center=(0.3, -0.2, 1.0)), step=0, n_samples_per_cell=2, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(2)
    rays_o = torch.randn(10, 3, generator=gen, dtype=torch.float64) * 2.5
    targets = torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64) + torch.randn(10, 3, generator=gen, dtype=torch.float64) * 0.5
    rays_d = torch.nn.functional.normalize(targets - rays_o, dim=-1)
    rays_d[0] = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    rays_o[0] = torch.tensor([0.25, -0.25, -4.0], dtype=torch.float64)
    ray_indices, t_starts, t_ends = grid.sample(rays_o, rays_d, near=0.1, far=7.0, step_size=0.07, cone_angle=cone_angle)
    want = march_loop(grid, rays_o, rays_d, 0.1, 7.0, 0.07, cone_angle)
    assert len(want) > 20 and ray_indices.tolist() == [w[0] for w in want]
    torch.testing.assert_close(t_starts, torch.tensor([w[1] for w in want], dtype=torch.float64))
    torch.testing.assert_close(t_ends, torch.tensor([w[2] for w in want], dtype=torch.float64))


def test_grid_levels_cover_the_outside():
    grid = OccupancyGrid(BOX, resolution=8, n_levels=2)  # level 1 covers [-2, 2]^3
    grid.update(sphere_density(1.6), step=0, n_samples_per_cell=4, generator=torch.Generator().manual_seed(0))
    rays_o, rays_d = rays(((-3.0, 1.3, 0.0), (1.0, 0.0, 0.0)), ((-3.0, 1.9, 1.9), (1.0, 0.0, 0.0)))
    ray_indices, t_starts, t_ends = grid.sample(rays_o.float(), rays_d.float(), near=0.0, far=10.0, step_size=0.05)
    counts = packed_info(ray_indices, 2)[:, 1]
    assert counts[0] > 0 and counts[1] == 0  # y = 1.3 is outside the base box but inside the sphere
    midpoints = rays_o[0].float() + (0.5 * (t_starts + t_ends))[:, None] * rays_d[0].float()
    assert (midpoints.norm(dim=-1) < 1.6 + 4 / 8 * math.sqrt(3)).all()


def test_grid_update_ema_and_subset():
    grid = OccupancyGrid(BOX, resolution=4)
    grid.update(lambda x: torch.full((x.shape[0], 1), 2.0), step=0)
    assert torch.equal(grid.densities, torch.full_like(grid.densities, 2.0)) and grid.occupied.all()
    grid.update(lambda x: torch.full((x.shape[0],), 0.5), step=1, decay=0.5)
    torch.testing.assert_close(grid.densities, torch.full_like(grid.densities, 1.0))  # max(2 * 0.5, 0.5)
    grid.update(lambda x: (x[:, 0] > 0).float() * 0.004 + torch.where(x[:, 0] < -0.5, torch.nan, 0.0), step=2, decay=0.0)
    # the threshold is min(0.01, mean of the positive densities) = 0.004: equal is not above it
    assert not grid.occupied.any()
    grid.update(lambda x: (x[:, 0] > 0).float() * 0.02, step=3, decay=0.0)
    assert grid.occupied[0, 2:].all() and not grid.occupied[0, :2].any()
    # After warmup: a quarter of the cells drawn uniformly plus as many occupied ones.
    seen = []
    grid.update(lambda x: seen.append(x.shape[0]) or torch.zeros(x.shape[0]), step=500, warmup_steps=256, n_samples_per_cell=3)
    assert seen == [(64 // 4 + 16) * 3]


def test_grid_sigma_fn_culling():
    grid = OccupancyGrid(BOX, resolution=4)
    rays_o, rays_d = rays(((-3.0, 0.0, 0.0), (1.0, 0.0, 0.0)), ((0.0, -3.0, 0.0), (0.0, 1.0, 0.0)))
    rays_o, rays_d = rays_o.float(), rays_d.float()
    # sigma * dt = 1 per step: transmittance e^-k before step k, kept while >= 1e-4 -> k <= 9
    ray_indices, _, _ = grid.sample(rays_o, rays_d, near=0.0, far=9.0, step_size=0.01, sigma_fn=lambda a, b, r: torch.full_like(a, 100.0))
    assert packed_info(ray_indices, 2)[:, 1].tolist() == [10, 10]
    # alpha_threshold drops the transparent samples (here: the first half of each chord).
    def sigma_fn(t_starts, t_ends, ray_indices):
        return torch.where(t_starts >= 3.0, 1.0, 0.0)

    ray_indices, t_starts, _ = grid.sample(
        rays_o, rays_d, near=0.0, far=9.0, step_size=0.25, sigma_fn=sigma_fn, alpha_threshold=0.1, early_stop_eps=0.0
    )
    assert ray_indices.tolist() == [0] * 4 + [1] * 4 and (t_starts >= 3.0).all()


def test_grid_stratified_and_edge_cases():
    grid = OccupancyGrid(BOX, resolution=4)
    rays_o, rays_d = rays(((-3.0, 0.1, 0.0), (1.0, 0.0, 0.0)))
    rays_o, rays_d = rays_o.float(), rays_d.float()
    a = grid.sample(rays_o, rays_d, near=0.0, far=9.0, step_size=0.3, stratified=True, generator=torch.Generator().manual_seed(0))
    b = grid.sample(rays_o, rays_d, near=0.0, far=9.0, step_size=0.3, stratified=True, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert 2.0 < float(a[1][0]) < 2.3 and float(a[2][-1]) == 4.0
    empty = grid.sample(rays_o[:0], rays_d[:0], near=0.0, far=9.0, step_size=0.3)
    assert [x.shape for x in empty] == [(0,), (0,), (0,)]
    zero = grid.sample(torch.zeros(1, 3), torch.zeros(1, 3), near=0.0, far=math.inf, step_size=0.3)
    assert zero[0].numel() == 0
    assert set(grid.state_dict()) == {"aabbs", "densities", "occupied"}


# ---------------------------------------------------------------------------------------
# bad input


C2W, K3 = torch.eye(4)[None], pixel_intrinsics(2.0, 2.0, 1.0, 1.0).float()
O, D = torch.zeros(4, 3), torch.ones(4, 3)


def march(rays_o, rays_d, **kwargs):
    return OccupancyGrid(BOX).sample(rays_o, rays_d, **{"near": 0.0, "far": 1.0, "step_size": 0.1, **kwargs})


@pytest.mark.parametrize(
    "thunk, error, words",
    [
        (lambda: rays_from_cameras(C2W[0], K3, 2, 2), ValueError, "rays_from_cameras: c2w must have shape [B, 4, 4] or [B, 3, 4]"),
        (lambda: rays_from_cameras(C2W, K3[:, :2], 2, 2), ValueError, "rays_from_cameras: intrinsics must have shape"),
        (lambda: rays_from_cameras(C2W.repeat(2, 1, 1), K3, 2, 2), ValueError, "intrinsics batch size 1 does not match c2w batch size 2"),
        (lambda: rays_from_cameras(C2W.long(), K3, 2, 2), TypeError, "rays_from_cameras: c2w must be float32"),
        (lambda: rays_from_cameras(C2W.numpy(), K3, 2, 2), TypeError, "c2w must be a torch.Tensor"),
        (lambda: rays_from_cameras(C2W, K3, 0, 2), ValueError, "rays_from_cameras: height must be a positive int"),
        (lambda: rays_from_cameras(C2W, K3, 2, 2.0), ValueError, "width must be a positive int"),
        (lambda: rays_from_cameras(C2W, K3, 2, 2, convention="blender"), ValueError, "convention must be one of ('opencv', 'opengl')"),
        (lambda: rays_from_cameras(C2W, K3.to("meta"), 2, 2), ValueError, "intrinsics is on meta but c2w is on cpu"),
        (lambda: rays_from_cameras(C2W, K3, 2, 2, normalized_intrinsics=1), TypeError, "normalized_intrinsics must be a bool"),
        (lambda: ray_aabb_intersect(O, D[:3], BOX), ValueError, "ray_aabb_intersect: rays_d shape (3, 3) does not match rays_o shape (4, 3)"),
        (lambda: ray_aabb_intersect(O[:, :2], D[:, :2], BOX), ValueError, "ray_aabb_intersect: rays_o must have shape [..., 3]"),
        (lambda: ray_aabb_intersect(O, D, (0, 0, 0, 1, 1)), ValueError, "ray_aabb_intersect: aabb must be 6 numbers"),
        (lambda: ray_aabb_intersect(O, D, (1, 0, 0, 0, 1, 1)), ValueError, "aabb must have min < max"),
        (lambda: ray_aabb_intersect(O, D, BOX, near="0"), TypeError, "ray_aabb_intersect: near must be a float or a tensor"),
        (lambda: ray_aabb_intersect(O, D, BOX, far=torch.ones(3)), ValueError, "far of shape (3,) does not broadcast"),
        (lambda: stratified_samples(0.0, 1.0, 4), TypeError, "stratified_samples: t_near or t_far must be a tensor"),
        (lambda: stratified_samples(torch.zeros(3), torch.ones(3), 0), ValueError, "stratified_samples: n_samples must be a positive int"),
        (lambda: stratified_samples(torch.zeros(3), torch.ones(2), 4), ValueError, "do not broadcast"),
        (lambda: stratified_samples(torch.zeros(3), 1.0, 4, spacing="log"), ValueError, "spacing must be one of"),
        (lambda: stratified_samples(torch.zeros(3), 1.0, 4, spacing="disparity"), ValueError, "needs t_near > 0"),
        (lambda: stratified_samples(torch.ones(3), 9.0, 4, spacing="disparity", perturb=True), ValueError, "t_far <= n_samples * t_near"),
        (lambda: stratified_samples(torch.zeros(3), 1.0, 4, generator=0), TypeError, "generator must be a torch.Generator"),
        (lambda: sample_pdf(torch.ones(2, 5), torch.ones(2, 5), 4), ValueError, "sample_pdf: bins must have shape [..., S + 1]"),
        (lambda: sample_pdf(torch.ones(2, 6), torch.ones(2, 5).long(), 4), TypeError, "sample_pdf: weights must be float32"),
        (lambda: sample_pdf(torch.ones(2, 6), torch.ones(2, 5), 4, eps=0.0), ValueError, "eps must be a positive float"),
        (lambda: smooth_weights(torch.ones(2, 0)), ValueError, "smooth_weights: weights must have shape [..., S] with S >= 1"),
        (lambda: merge_samples(torch.ones(2, 3), torch.ones(3, 3)), ValueError, "merge_samples: t_fine must have the leading shape"),
        (lambda: merge_samples(torch.ones(2, 3), torch.ones(2, 3).double()), TypeError, "t_fine must have the dtype of t_coarse"),
        (lambda: packed_info(torch.tensor([0, 2, 1]), 3), ValueError, "packed_info: ray_indices must be sorted ascending"),
        (lambda: packed_info(torch.tensor([0, 3]), 3), ValueError, "packed_info: ray_indices must lie in [0, n_rays)"),
        (lambda: packed_info(torch.tensor([0.0]), 3), TypeError, "packed_info: ray_indices must be an integer tensor"),
        (lambda: packed_info(torch.tensor([0]), -1), ValueError, "packed_info: n_rays must be a non-negative int"),
        (lambda: OccupancyGrid(BOX, resolution=(4, 4)), ValueError, "OccupancyGrid: resolution must be a positive int or three"),
        (lambda: OccupancyGrid(BOX, n_levels=0), ValueError, "OccupancyGrid: n_levels must be a positive int"),
        (lambda: OccupancyGrid((0, 0, 0, 1, 1)), ValueError, "OccupancyGrid: aabb must be 6 numbers"),
        (lambda: OccupancyGrid(BOX).update(lambda x: x, 0), ValueError, "OccupancyGrid.update: density_fn must return one density per point"),
        (lambda: OccupancyGrid(BOX).update(None, 0), TypeError, "density_fn must be callable"),
        (lambda: OccupancyGrid(BOX).update(lambda x: x[:, 0], 0, decay=2.0), ValueError, "decay must be a float in [0, 1]"),
        (lambda: march(O[None], D[None]), ValueError, "OccupancyGrid.sample: rays_o must have shape [R, 3]"),
        (lambda: march(O, D, step_size=0.0), ValueError, "step_size must be a float > 0"),
        (lambda: march(O, D, alpha_threshold=0.1), ValueError, "alpha_threshold > 0 needs sigma_fn"),
        (lambda: march(O, D, sigma_fn=lambda a, b, r: a[:1]), ValueError, "sigma_fn must return one density per sample"),
        (lambda: march(O.to("meta"), D.to("meta")), ValueError, "grid is on cpu but rays_o is on meta"),
        (lambda: march(O, D, near=torch.zeros(2)), ValueError, "OccupancyGrid.sample: near of shape (2,) does not broadcast"),
    ],
)
def test_bad_input(thunk, error, words):
    with pytest.raises(error) as info:
        thunk()
    assert words in str(info.value)
