"""composite / composite_packed: every backend against the PyTorch reference, forward and backward."""

import pytest
import torch
import torch.nn.functional as F

from fastfields.ops.composite import composite, composite_packed
from fastfields.reference.composite import composite_packed_reference, composite_reference

from conftest import backend_params

BACKENDS = backend_params()
WITH_TORCH = [pytest.param("torch", "cpu", id="torch-cpu")] + BACKENDS
ACTIVATIONS = ("none", "relu", "softplus", "exp", "trunc_exp")
# (density_bias, distance_scale, raw sigma scale, raw sigma shift) per activation: clear to
# nearly opaque rays, nothing saturated (EG3D-like softplus(x - 1), TensoRF-like scale 25).
SETTINGS = {
    "none": (0.0, 1.0, 2.0, 0.0),
    "relu": (0.5, 1.0, 2.0, 0.0),
    "softplus": (-1.0, 1.0, 2.0, 1.0),
    "exp": (-1.0, 2.0, 1.0, 0.0),
    "trunc_exp": (0.0, 25.0, 1.0, -3.0),
}


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def make_dense(R=6, S=9, C=3, activation="softplus", dtype=torch.float32, device="cpu", seed=0):
    """sigmas [R, S], rgbs [R, S, C], deltas [R, S], t [R, S] (increasing along each ray)."""
    gen = _gen(seed)
    _, _, spread, shift = SETTINGS[activation]
    sigmas = torch.randn(R, S, generator=gen, dtype=torch.float64) * spread + shift
    if activation == "none":
        sigmas = sigmas.abs()
    rgbs = torch.rand(R, S, C, generator=gen, dtype=torch.float64)
    deltas = torch.rand(R, S, generator=gen, dtype=torch.float64) * 0.4 + 0.05
    t = 2.0 + torch.cumsum(deltas, dim=1) - deltas
    return {k: v.to(device=device, dtype=dtype) for k, v in dict(sigmas=sigmas, rgbs=rgbs, deltas=deltas, t=t).items()}


def make_packed(counts=(3, 0, 1, 7, 2, 0, 5), C=3, activation="softplus", dtype=torch.float32, device="cpu", seed=0):
    """Packed samples of rays with the given sample counts (empty rays included)."""
    gen = _gen(seed)
    _, _, spread, shift = SETTINGS[activation]
    M = sum(counts)
    ray_indices = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts, dtype=torch.int64))
    sigmas = torch.randn(M, generator=gen, dtype=torch.float64) * spread + shift
    if activation == "none":
        sigmas = sigmas.abs()
    rgbs = torch.rand(M, C, generator=gen, dtype=torch.float64)
    lengths = torch.rand(M, generator=gen, dtype=torch.float64) * 0.4 + 0.05
    gaps = torch.rand(M, generator=gen, dtype=torch.float64) * 0.1  # samples need not touch
    ends = torch.zeros(M, dtype=torch.float64)
    for r in range(len(counts)):
        idx = (ray_indices == r).nonzero().flatten()
        ends[idx] = 1.0 + torch.cumsum(lengths[idx] + gaps[idx], 0)
    values = dict(sigmas=sigmas, rgbs=rgbs, t_starts=ends - lengths, t_ends=ends)
    inputs = {k: v.to(device=device, dtype=dtype) for k, v in values.items()}
    inputs["ray_indices"] = ray_indices.to(device)
    return inputs, len(counts)


def options(activation, **extra):
    bias, scale, _, _ = SETTINGS[activation]
    return dict(density_activation=activation, density_bias=bias, distance_scale=scale, **extra)


def run(fn, tensors, grad_names, seed=1, **kwargs):
    """Outputs of fn and the gradients of ``grad_names`` for a fixed random loss on every output."""
    tensors = {k: (v.detach().requires_grad_(k in grad_names) if v.is_floating_point() else v) for k, v in tensors.items()}
    outputs = fn(tensors, **kwargs)
    gen = _gen(seed)
    loss = 0
    for out in outputs:
        if out is not None:
            loss = loss + (out.double() * torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.device)).sum()
    if grad_names:
        grads = torch.autograd.grad(loss, [tensors[k] for k in grad_names], allow_unused=True)
    else:
        grads = []
    return [None if o is None else o.detach() for o in outputs], list(grads)


def dense_fn(backend):
    def fn(x, **kwargs):
        common = {"t": x.get("t"), "background": x.get("background"), **kwargs}
        if backend == "torch":
            return composite_reference(x["sigmas"], x["rgbs"], x.get("deltas"), **common)
        return composite(x["sigmas"], x["rgbs"], x.get("deltas"), backend=backend, **common)

    return fn


def packed_fn(backend, n_rays):
    def fn(x, **kwargs):
        args = (x["sigmas"], x["rgbs"], x["t_starts"], x["t_ends"], x["ray_indices"], n_rays)
        kwargs = {"background": x.get("background"), **kwargs}
        if backend == "torch":
            return composite_packed_reference(*args, **kwargs)
        return composite_packed(*args, backend=backend, **kwargs)

    return fn


def assert_all_close(got, want, names, atol=2e-5, rtol=1e-4):
    got_outputs, got_grads = got
    want_outputs, want_grads = want
    labels = ["rgb", "depth", "opacity", "weights"] + [f"grad {n}" for n in names]
    for label, g, w in zip(labels, got_outputs + got_grads, want_outputs + want_grads):
        assert (g is None) == (w is None), label
        if w is not None:
            assert g.shape == w.shape and g.dtype == w.dtype, f"{label}: {g.shape} {g.dtype} vs {w.shape} {w.dtype}"
            torch.testing.assert_close(g, w, atol=atol, rtol=rtol, equal_nan=True, msg=lambda m: f"{label}: {m}")


def dense_grad_names(mode):
    return ["sigmas", "rgbs", "t", "background"] + (["deltas"] if mode == "nerf" else [])


# ---------------------------------------------------------------------------------------
# Against the reference


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("mode", ["nerf", "eg3d"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dense_matches_reference(backend, device, mode, activation):
    x = make_dense(activation=activation, device=device)
    if mode == "eg3d":
        del x["deltas"]
    x["background"] = torch.rand(6, 3, generator=_gen(3)).to(device)
    names = dense_grad_names(mode)
    kwargs = options(activation, mode=mode, return_weights=True)
    got = run(dense_fn(backend), x, names, **kwargs)
    want = run(dense_fn("torch"), x, names, **kwargs)
    assert_all_close(got, want, names)
    assert 0.05 < want[0][2].min() and want[0][2].max() < 0.999  # neither clear nor saturated


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("activation", ["none", "softplus", "trunc_exp"])
def test_packed_matches_reference(backend, device, activation):
    counts = (0, 3, 0, 1, 7, 2, 0, 5, 0, 0)  # empty rays first, inside and last
    x, n_rays = make_packed(counts=counts, activation=activation, device=device)
    x["background"] = torch.rand(3, generator=_gen(3)).to(device)
    names = ["sigmas", "rgbs", "t_starts", "t_ends", "background"]
    kwargs = options(activation, return_weights=True)
    got = run(packed_fn(backend, n_rays), x, names, **kwargs)
    want = run(packed_fn("torch", n_rays), x, names, **kwargs)
    assert_all_close(got, want, names)
    rgb, depth, opacity, _ = got[0]
    empty = torch.tensor([r for r, n in enumerate(counts) if n == 0], device=device)
    assert (opacity[empty] == 0).all() and (depth[empty] == 0).all()
    torch.testing.assert_close(rgb[empty], x["background"].expand(len(empty), 3))


@pytest.mark.parametrize("backend,device", WITH_TORCH)
def test_dense_and_packed_agree(backend, device):
    x = make_dense(R=4, S=6, activation="trunc_exp", device=device)
    starts = x["t"] - x["deltas"] / 2
    packed = dict(sigmas=x["sigmas"].flatten(), rgbs=x["rgbs"].flatten(0, 1), t_starts=starts.flatten(),
                  t_ends=(starts + x["deltas"]).flatten(), ray_indices=torch.arange(4, device=device).repeat_interleave(6))
    kwargs = options("trunc_exp", return_weights=True)
    dense_out, dense_grads = run(dense_fn(backend), dict(x, t=(starts + starts + x["deltas"]) / 2), ["sigmas", "rgbs"], **kwargs)
    packed_out, packed_grads = run(packed_fn(backend, 4), packed, ["sigmas", "rgbs"], **kwargs)
    for d, p in zip(dense_out + dense_grads, packed_out + packed_grads):
        torch.testing.assert_close(d.flatten(0, 1) if d.shape != p.shape else d, p, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# EG3D / OpenLRM


def mip_ray_marcher2(colors, densities, depths, bg_colors):
    """OpenLRM's MipRayMarcher2.run_forward, written from its description: colors [B, R, S, C],
    densities / depths [B, R, S, 1], bg_colors [B, 1]; softplus(x - 1) activation."""
    deltas = depths[:, :, 1:] - depths[:, :, :-1]
    colors_mid = (colors[:, :, :-1] + colors[:, :, 1:]) / 2
    densities_mid = (densities[:, :, :-1] + densities[:, :, 1:]) / 2
    depths_mid = (depths[:, :, :-1] + depths[:, :, 1:]) / 2
    densities_mid = F.softplus(densities_mid - 1)
    alpha = 1 - torch.exp(-densities_mid * deltas)
    alpha_shifted = torch.cat([torch.ones_like(alpha[:, :, :1]), 1 - alpha + 1e-10], -2)
    weights = alpha * torch.cumprod(alpha_shifted, -2)[:, :, :-1]
    composite_rgb = torch.sum(weights * colors_mid, -2)
    weight_total = weights.sum(2)
    composite_depth = torch.sum(weights * depths_mid, -2) / weight_total
    composite_depth = torch.nan_to_num(composite_depth, float("inf"))
    composite_depth = torch.clamp(composite_depth, torch.min(depths), torch.max(depths))
    composite_rgb = composite_rgb + bg_colors.unsqueeze(-1) * (1 - weight_total)
    return composite_rgb, composite_depth, weights


@pytest.mark.parametrize("backend,device", WITH_TORCH)
def test_eg3d_matches_mip_ray_marcher2(backend, device):
    B, R, S, C = 2, 5, 8, 3
    gen = _gen(4)
    densities = (torch.randn(B, R, S, 1, generator=gen) * 3 + 1).to(device).requires_grad_(True)
    colors = torch.rand(B, R, S, C, generator=gen).to(device).requires_grad_(True)
    depths = (2 + torch.sort(torch.rand(B, R, S, 1, generator=gen) * 1.5, dim=2).values).to(device)
    bg_colors = torch.rand(B, 1, generator=gen).to(device)
    inside = torch.rand(B, R, S, 1, generator=gen).to(device) > 0.2
    inside[0, 0] = False  # a ray that misses the box
    # OpenLRM's out-of-box samples: zero colour, sigma = nan_to_num(-inf) / 8.
    sentinel = torch.nan_to_num(torch.tensor(-float("inf"), device=device)) / 8
    want = mip_ray_marcher2(torch.where(inside, colors, 0), torch.where(inside, densities, sentinel), depths, bg_colors)

    fn = composite_reference if backend == "torch" else composite
    extra = {} if backend == "torch" else dict(backend=backend)
    rgb, depth, opacity, weights = fn(
        densities.masked_fill(~inside, float("-inf")).reshape(B * R, S), colors.reshape(B * R, S, C), None,
        t=depths.reshape(B * R, S), background=bg_colors.repeat_interleave(R, 0), mode="eg3d",
        density_activation="softplus", density_bias=-1.0, return_weights=True, **extra,
    )
    normalised = (depth / opacity).nan_to_num(float("inf")).clamp(depths.min(), depths.max())
    torch.testing.assert_close(rgb, want[0].reshape(B * R, C), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(normalised, want[1].reshape(B * R), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights, want[2].reshape(B * R, S - 1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(opacity, want[2].sum(2).reshape(B * R), atol=1e-6, rtol=1e-5)

    g_rgb = torch.randn(B, R, C, generator=gen).to(device)
    g_w = torch.randn(B, R, S - 1, 1, generator=gen).to(device)
    ours = torch.autograd.grad((rgb * g_rgb.reshape(B * R, C)).sum() + (weights * g_w.reshape(B * R, S - 1)).sum(),
                               (densities, colors))
    theirs = torch.autograd.grad((want[0] * g_rgb).sum() + (want[2] * g_w).sum(), (densities, colors))
    for g, w in zip(ours, theirs):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
    assert (ours[0][~inside] == 0).all()


# ---------------------------------------------------------------------------------------
# Early ray termination, edge cases, shapes, layouts


def layout_case(layout, device, activation="softplus", dtype=torch.float32, **shape):
    """(inputs, backend -> function, names of the differentiable inputs) of one layout."""
    if layout == "packed":
        x, n_rays = make_packed(activation=activation, dtype=dtype, device=device, **shape)
        return x, lambda backend: packed_fn(backend, n_rays), ["sigmas", "rgbs", "t_starts", "t_ends"]
    x = make_dense(activation=activation, dtype=dtype, device=device, **shape)
    if layout == "eg3d":
        del x["deltas"]
        return x, dense_fn, ["sigmas", "rgbs", "t"]
    return x, dense_fn, ["sigmas", "rgbs", "deltas", "t"]


LAYOUTS = ["nerf", "eg3d", "packed"]


@pytest.mark.parametrize("backend,device", WITH_TORCH)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_early_stop(backend, device, layout):
    x, fn, _ = layout_case(layout, device)
    kwargs = options("softplus", return_weights=True, **({"mode": "eg3d"} if layout == "eg3d" else {}))
    with torch.no_grad():
        got = fn(backend)(x, t_threshold=0.3, **kwargs)
        want = fn("torch")(x, t_threshold=0.3, **kwargs)
        full = fn(backend)(x, **kwargs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)
    # A stopped ray keeps its earlier weights exactly and drops the rest.
    kept, dropped = got[3] == full[3], (got[3] == 0) & (full[3] > 0)
    assert (kept | dropped).all() and dropped.any()


def test_early_stop_has_no_gradient():
    x = make_dense()
    sigmas = x["sigmas"].requires_grad_(True)
    with pytest.raises(RuntimeError, match="t_threshold > 0"):
        composite(sigmas, x["rgbs"], x["deltas"], t_threshold=0.01)
    with torch.no_grad():
        composite(sigmas, x["rgbs"], x["deltas"], t_threshold=0.01)


# The Triton interpreter computes exp(200) = inf and 0 * inf = nan (as the reference does) in numpy.
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("activation", ["none", "softplus", "trunc_exp"])
def test_edge_cases(backend, device, activation):
    """Saturating densities (T exactly 0, exp overflowing to inf), zero-length intervals,
    empty (-inf) samples, all-empty rays."""
    x = make_dense(R=6, S=7, activation=activation, device=device)
    huge = 200.0 if activation == "trunc_exp" else 1e30  # trunc_exp: exp(200) = inf, alpha = 1
    x["sigmas"][0, 2] = huge  # opaque in the middle: T = 0 behind it
    x["sigmas"][1, 0] = huge  # opaque at once
    x["deltas"][2] = 0.0  # zero-length intervals: a clear ray
    x["sigmas"][3, ::2] = float("-inf")  # empty samples
    x["sigmas"][4] = float("-inf")  # a ray that misses everything
    x["deltas"][5, 3] = 0.0
    if activation != "trunc_exp":  # inf * 0 is nan, for the reference too
        x["sigmas"][5, 3] = huge  # a huge density over a zero-length interval
    # With exp overflowing to inf, d tau / d delta = sigma = inf: the reference's delta
    # gradient is nan (0 * inf) too; compare the others.
    names = ["sigmas", "rgbs", "t"] + ([] if activation == "trunc_exp" else ["deltas"])
    kwargs = options(activation, return_weights=True)
    got = run(dense_fn(backend), x, names, **kwargs)
    want = run(dense_fn("torch"), x, names, **kwargs)
    assert_all_close(got, want, names)
    outputs, grads = got
    assert all(torch.isfinite(t).all() for t in outputs + grads)
    assert outputs[2][0] == pytest.approx(1.0) and outputs[2][1] == pytest.approx(1.0) and outputs[2][4] == 0
    assert (grads[0][3, ::2] == 0).all() and (grads[0][4] == 0).all()

    for layout in ("eg3d", "packed"):
        y, fn, names = layout_case(layout, device, activation)
        y["sigmas"].view(-1)[::3] = float("-inf")
        y["sigmas"].view(-1)[4] = huge
        if activation == "trunc_exp":
            names = [n for n in names if n not in ("t", "t_starts", "t_ends")]
        kwargs = options(activation, return_weights=True, **({"mode": "eg3d"} if layout == "eg3d" else {}))
        assert_all_close(run(fn(backend), y, names, **kwargs), run(fn("torch"), y, names, **kwargs), names)


@pytest.mark.parametrize("backend,device", WITH_TORCH)
def test_nan_stays_in_its_ray(backend, device):
    x = make_dense(R=3, device=device)
    x["sigmas"][1, 4] = float("nan")
    rgb, depth, opacity, _ = dense_fn(backend)(x)
    assert torch.isnan(rgb[1]).all() and torch.isnan(depth[1]) and torch.isnan(opacity[1])
    others = torch.tensor([0, 2], device=device)
    assert torch.isfinite(rgb[others]).all() and torch.isfinite(depth[others]).all() and torch.isfinite(opacity[others]).all()


# The CPU walks take the optics of 128 intervals at a time (32 with early stopping): rays of
# 300 samples cross both chunk boundaries, in every geometry, forward and backward. The Triton
# interpreter would take minutes over rays this long.
LONG_RAY_BACKENDS = [p for p in BACKENDS if p.values[0] != "triton" or p.values[1] == "cuda"]


@pytest.mark.parametrize("backend,device", LONG_RAY_BACKENDS)
@pytest.mark.parametrize("C", [3, 6])
def test_long_rays(backend, device, C):
    for mode in ("nerf", "eg3d"):
        x = make_dense(R=3, S=300, C=C, device=device)
        if mode == "eg3d":
            del x["deltas"]
        names = dense_grad_names(mode)[:3] + (["deltas"] if mode == "nerf" else [])
        kwargs = options("softplus", mode=mode, return_weights=True)
        assert_all_close(run(dense_fn(backend), x, names, **kwargs), run(dense_fn("torch"), x, names, **kwargs), names)
        with torch.no_grad():
            got = dense_fn(backend)(x, t_threshold=0.05, **kwargs)
            want = dense_fn("torch")(x, t_threshold=0.05, **kwargs)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=2e-5, rtol=1e-4)
    x, n_rays = make_packed(counts=[300, 0, 129, 31], C=C, device=device)
    names = ["sigmas", "rgbs", "t_starts", "t_ends"]
    assert_all_close(run(packed_fn(backend, n_rays), x, names), run(packed_fn("torch", n_rays), x, names), names)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize(
    "R,S,C",
    [(0, 5, 3), (3, 0, 3), (4, 1, 3), (5, 2, 1), (3, 5, 5), (2, 4, 33)],
    ids=lambda v: str(v),
)
def test_shapes(backend, device, R, S, C):
    for mode in ("nerf", "eg3d"):
        x = make_dense(R=R, S=S, C=C, device=device)
        if mode == "eg3d":
            del x["deltas"]
        names = dense_grad_names(mode)[:3] + (["deltas"] if mode == "nerf" else [])
        kwargs = options("softplus", mode=mode, return_weights=True)
        got = run(dense_fn(backend), x, names, **kwargs)
        want = run(dense_fn("torch"), x, names, **kwargs)
        assert_all_close(got, want, names)
        assert got[0][0].shape == (R, C) and got[0][3].shape == (R, max(S - 1, 0) if mode == "eg3d" else S)
    x, n_rays = make_packed(counts=[S] * R, C=C, device=device)
    names = ["sigmas", "rgbs", "t_starts", "t_ends"]
    assert_all_close(run(packed_fn(backend, n_rays), x, names), run(packed_fn("torch", n_rays), x, names), names)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_no_depth_without_t(backend, device):
    x = make_dense(device=device)
    del x["t"]
    got = run(dense_fn(backend), x, ["sigmas", "rgbs", "deltas"], background=0.5)
    want = run(dense_fn("torch"), x, ["sigmas", "rgbs", "deltas"], background=0.5)
    assert got[0][1] is None and got[0][3] is None
    assert_all_close(got, want, ["sigmas", "rgbs", "deltas"])


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_background_forms(backend, device):
    x = make_dense(R=4, device=device)
    for background in (None, 0.7, torch.rand(3), torch.rand(4, 1), torch.rand(4, 3), torch.tensor(0.2, dtype=torch.float64)):
        y, names, kwargs = dict(x), ["sigmas", "rgbs"], {}
        if isinstance(background, torch.Tensor):
            y["background"] = background.to(device)
            names.append("background")
        else:
            kwargs["background"] = background
        assert_all_close(run(dense_fn(backend), y, names, **kwargs), run(dense_fn("torch"), y, names, **kwargs), names)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_strided_inputs(backend, device):
    x = make_dense(R=5, S=6, C=3, device=device)
    wide = {k: torch.stack([v, v], dim=-1)[..., 1] for k, v in x.items()}  # non-contiguous views
    wide["rgbs"] = x["rgbs"].transpose(0, 1).contiguous().transpose(0, 1)
    assert not any(v.is_contiguous() for v in wide.values())
    names = ["sigmas", "rgbs", "deltas", "t"]
    assert_all_close(run(dense_fn(backend), wide, names), run(dense_fn("torch"), x, names), names)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_only_some_inputs_need_grad(backend, device):
    x = make_dense(device=device)
    for names in (["sigmas"], ["rgbs"], ["t"], ["deltas", "rgbs"]):
        got = run(dense_fn(backend), x, names)
        want = run(dense_fn("torch"), x, names)
        assert_all_close(got, want, names)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_saves_nothing_per_sample(backend, device, layout):
    """For the backward, only the inputs themselves and per-ray outputs are kept: no alpha,
    transmittance or weights (the reference keeps several per-sample tensors)."""
    x, fn, names = layout_case(layout, device, C=1)  # per-ray outputs smaller than per-sample tensors
    kwargs = options("softplus", **({"mode": "eg3d"} if layout == "eg3d" else {}))
    leaves = {k: v.requires_grad_(k in names) for k, v in x.items()}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fn(backend)(leaves, background=1.0, **kwargs)
    inputs = {v.data_ptr() for v in leaves.values()}
    per_sample = [t for t in saved if t.numel() >= x["sigmas"].numel() and t.data_ptr() not in inputs]
    assert saved and not per_sample, [tuple(t.shape) for t in per_sample]


# ---------------------------------------------------------------------------------------
# Precision


def eager_in_dtype(sigmas, rgbs, deltas, t, activation, bias, scale):
    """What model code does today (TensoRF's raw2alpha), everything in the inputs' dtype."""
    density = {"softplus": F.softplus, "trunc_exp": torch.exp, "none": lambda v: v}[activation](sigmas + bias)
    alpha = 1 - torch.exp(-density * deltas * scale)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha], -1), -1)[:, :-1]
    weights = alpha * trans
    return (weights[..., None] * rgbs).sum(-2), (weights * t).sum(-1), weights.sum(-1), weights


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("geometry_dtype", ["same", "float32"])
def test_half_precision(backend, device, dtype, geometry_dtype):
    """The flash-attention rule: our error against a float32 reference is at most about twice
    that of the eager cumprod code run in the same dtype."""
    x32 = make_dense(R=16, S=24, C=4, device=device)
    x = {k: v.to(dtype) if k == "rgbs" or geometry_dtype == "same" else v for k, v in x32.items()}
    names = ["sigmas", "rgbs", "deltas", "t"]
    kwargs = options("softplus", return_weights=True)
    want = run(dense_fn("torch"), {k: v.float() for k, v in x.items()}, names, **kwargs)
    got = run(dense_fn(backend), x, names, **kwargs)
    bias, scale = kwargs["density_bias"], kwargs["distance_scale"]
    same = {k: v.to(dtype) for k, v in x.items()}
    eager = run(lambda y, **k: eager_in_dtype(y["sigmas"], y["rgbs"], y["deltas"], y["t"], "softplus", bias, scale), same, names)
    labels = ["rgb", "depth", "opacity", "weights"] + names
    for label, g, e, w in zip(labels, got[0] + got[1], eager[0] + eager[1], want[0] + want[1]):
        expected_dtype = dtype if label in ("rgb", "depth", "opacity", "weights", "rgbs") else x[label].dtype
        assert g.dtype == expected_dtype, label
        ours = (g.double() - w.double()).abs().max().item()
        theirs = (e.double() - w.double()).abs().max().item()
        assert ours <= 2 * theirs + 1e-3 * w.abs().max().item(), f"{label}: {ours} vs eager {theirs}"


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_float64(backend, device, layout):
    x, fn, names = layout_case(layout, device, dtype=torch.float64)
    kwargs = options("softplus", return_weights=True, **({"mode": "eg3d"} if layout == "eg3d" else {}))
    assert_all_close(run(fn(backend), x, names, **kwargs), run(fn("torch"), x, names, **kwargs), names, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradcheck(backend, device, layout):
    """The kernels' backward against finite differences (float64)."""
    shape = {"counts": (2, 0, 3), "C": 2} if layout == "packed" else {"R": 2, "S": 4, "C": 2}
    x, fn, names = layout_case(layout, device, "softplus", torch.float64, **shape)
    kwargs = options("softplus", return_weights=True, **({"mode": "eg3d"} if layout == "eg3d" else {}))
    leaves = [x[n].detach().requires_grad_(True) for n in names]

    def f(*values):
        outputs = fn(backend)({**x, **dict(zip(names, values))}, **kwargs)
        return tuple(o for o in outputs if o is not None)

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("mode", ["nerf", "eg3d"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_reference_gradcheck(mode, activation):
    x = make_dense(R=3, S=4, C=2, activation=activation, dtype=torch.float64)
    x["sigmas"] = x["sigmas"] + torch.where(x["sigmas"] > 0, 0.1, -0.1)  # away from relu's kink
    if mode == "eg3d":
        del x["deltas"]
    x["background"] = torch.rand(3, 2, dtype=torch.float64)
    names = dense_grad_names(mode)
    kwargs = options(activation, mode=mode, return_weights=True)

    def f(*values):
        outputs = dense_fn("torch")({**x, **dict(zip(names, values))}, **kwargs)
        return tuple(o for o in outputs if o is not None)

    assert torch.autograd.gradcheck(f, [x[n].requires_grad_(True) for n in names], eps=1e-6, atol=1e-6)


def test_reference_packed_gradcheck():
    x, n_rays = make_packed(counts=(2, 0, 3, 1), activation="trunc_exp", dtype=torch.float64)
    names = ["sigmas", "rgbs", "t_starts", "t_ends"]
    kwargs = options("trunc_exp", return_weights=True)

    def f(*values):
        return packed_fn("torch", n_rays)({**x, **dict(zip(names, values))}, **kwargs)

    assert torch.autograd.gradcheck(f, [x[n].requires_grad_(True) for n in names], eps=1e-6, atol=1e-6)


def test_reference_is_the_quadrature():
    """The reference against the compositing sum written out ray by ray."""
    x = make_dense(R=3, S=5, C=2, dtype=torch.float64)
    bias, scale, _, _ = SETTINGS["softplus"]
    rgb, depth, opacity, weights = composite_reference(x["sigmas"], x["rgbs"], x["deltas"], t=x["t"], background=0.25,
                                                       density_activation="softplus", density_bias=bias,
                                                       distance_scale=scale, return_weights=True)
    for r in range(3):
        trans, acc, d, o = 1.0, torch.zeros(2, dtype=torch.float64), 0.0, 0.0
        for i in range(5):
            alpha = 1 - torch.exp(-F.softplus(x["sigmas"][r, i] + bias) * x["deltas"][r, i] * scale)
            w = trans * alpha
            torch.testing.assert_close(weights[r, i], w)
            acc, d, o, trans = acc + w * x["rgbs"][r, i], d + w * x["t"][r, i], o + w, trans * (1 - alpha)
        torch.testing.assert_close(rgb[r], acc + (1 - o) * 0.25)
        torch.testing.assert_close(depth[r], d)
        torch.testing.assert_close(opacity[r], o)


# ---------------------------------------------------------------------------------------
# torch.library integration


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_opcheck(backend, device):
    x = {k: v.requires_grad_(True) for k, v in make_dense(R=3, S=4, C=3, device=device).items()}
    for args in (
        (x["sigmas"], x["rgbs"], x["deltas"], x["t"], "nerf", "softplus", -1.0, 2.0, 0.0, True, backend),
        (x["sigmas"], x["rgbs"], None, x["t"], "eg3d", "relu", 0.0, 1.0, 0.0, False, backend),
    ):
        torch.library.opcheck(torch.ops.fastfields.composite.default, args)
    p, n_rays = make_packed(counts=(2, 0, 3), device=device)
    p = {k: v.requires_grad_(True) if v.is_floating_point() else v for k, v in p.items()}
    torch.library.opcheck(torch.ops.fastfields.composite_packed.default,
                          (p["sigmas"], p["rgbs"], p["t_starts"], p["t_ends"], p["ray_indices"], n_rays, "trunc_exp",
                           0.0, 1.0, 0.0, True, backend))

    def upstream(R, S):  # grad rgb, depth, opacity, weights (dense) and the per-ray totals
        return (torch.randn(R, 3, device=device), torch.randn(R, device=device), torch.randn(R, device=device),
                None if S is None else torch.randn(R, S, device=device), torch.randn(R, device=device))

    x = {k: v.detach() for k, v in x.items()}
    torch.library.opcheck(torch.ops.fastfields.composite_backward.default,
                          (*upstream(3, 4), x["sigmas"], x["rgbs"], x["deltas"], x["t"], None, 0, "softplus", -1.0,
                           2.0, backend, True, True, True, False))
    p = {k: v.detach() for k, v in p.items()}
    offsets = torch.tensor([0, 2, 2, 5], device=device)
    torch.library.opcheck(torch.ops.fastfields.composite_backward.default,
                          (*upstream(n_rays, None), p["sigmas"], p["rgbs"], p["t_starts"], p["t_ends"], offsets, 1,
                           "trunc_exp", 0.0, 1.0, backend, True, True, True, True))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_torch_compile_fullgraph(backend, device):
    x = make_dense(R=4, S=5, device=device)
    p, n_rays = make_packed(device=device)

    def loss(sigmas, rgbs, packed_sigmas):
        rgb, depth, opacity, weights = composite(sigmas, rgbs, x["deltas"], t=x["t"], background=1.0, backend=backend,
                                                 density_activation="softplus", return_weights=True)
        rgb2, depth2, _, _ = composite_packed(packed_sigmas, p["rgbs"], p["t_starts"], p["t_ends"], p["ray_indices"],
                                              n_rays, backend=backend, density_activation="softplus")
        return rgb.square().sum() + depth.sum() + weights.square().sum() + rgb2.sum() + depth2.sum() + opacity.sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    inputs = [x["sigmas"], x["rgbs"], p["sigmas"]]
    got_inputs = [v.detach().requires_grad_(True) for v in inputs]
    want_inputs = [v.detach().requires_grad_(True) for v in inputs]
    got = compiled(*got_inputs)
    want = loss(*want_inputs)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for g, w in zip(torch.autograd.grad(got, got_inputs), torch.autograd.grad(want, want_inputs)):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# Bad input: a clear error that names the op and the argument.


@pytest.mark.parametrize(
    "change, error, words",
    [
        (lambda x: dict(x, sigmas=x["sigmas"][0]), ValueError, "sigmas must be a 2-D tensor [R, S]"),
        (lambda x: dict(x, rgbs=x["rgbs"][:, :3]), ValueError, "rgbs must have shape [R, S, C] with [R, S] = (6, 9)"),
        (lambda x: dict(x, deltas=x["deltas"][:, :3]), ValueError, "deltas must have the shape of sigmas"),
        (lambda x: dict(x, t=x["t"].T), ValueError, "t must have the shape of sigmas"),
        (lambda x: dict(x, deltas=None), ValueError, "mode='nerf' needs deltas"),
        (lambda x: dict(x, mode="eg3d"), ValueError, "mode='eg3d' takes its intervals from t"),
        (lambda x: dict(x, mode="eg3d", deltas=None, t=None), ValueError, "mode='eg3d' needs the sample depths t"),
        (lambda x: dict(x, rgbs=x["rgbs"].half(), sigmas=x["sigmas"].double()), TypeError, "sigmas must have the dtype of rgbs"),
        (lambda x: dict(x, sigmas=x["sigmas"].int()), TypeError, "sigmas must be float32"),
        (lambda x: dict(x, rgbs=x["rgbs"][..., :0]), ValueError, "rgbs must have C >= 1"),
        (lambda x: dict(x, t=x["t"].to("meta")), ValueError, "t is on meta but sigmas is on cpu"),
        (lambda x: dict(x, background=torch.rand(2, 3)), ValueError, "background must be a number or a tensor that broadcasts"),
        (lambda x: dict(x, background="white"), TypeError, "background must be a real number"),
        (lambda x: dict(x, mode="mip"), ValueError, "mode must be one of"),
        (lambda x: dict(x, density_activation="sigmoid"), ValueError, "density_activation must be one of"),
        (lambda x: dict(x, t_threshold=1.0), ValueError, "t_threshold must be finite and in [0.0, 1.0)"),
        (lambda x: dict(x, distance_scale=float("nan")), ValueError, "distance_scale must be finite"),
        (lambda x: dict(x, return_weights=1), TypeError, "return_weights must be a bool"),
        (lambda x: dict(x, backend="vulkan"), ValueError, "backend must be 'auto' or one of"),
    ],
)
def test_bad_input(change, error, words):
    x = change(make_dense())
    with pytest.raises(error) as info:
        composite(x.pop("sigmas"), x.pop("rgbs"), x.pop("deltas"), **x)
    assert words in str(info.value) and "composite" in str(info.value)


@pytest.mark.parametrize("backend,device", WITH_TORCH)
@pytest.mark.parametrize(
    "change, error, words",
    [
        (lambda x: dict(x, ray_indices=x["ray_indices"].flip(0)), ValueError, "ray_indices must be sorted ascending"),
        (lambda x: dict(x, ray_indices=x["ray_indices"] + 1), ValueError, "ray_indices must lie in [0, n_rays = 7)"),
        (lambda x: dict(x, ray_indices=x["ray_indices"] - 1), ValueError, "ray_indices must lie in [0, n_rays = 7)"),
        (lambda x: dict(x, ray_indices=x["ray_indices"].int()), TypeError, "ray_indices must be an int64 tensor [M]"),
        (lambda x: dict(x, ray_indices=x["ray_indices"][1:]), ValueError, "ray_indices must have the shape of sigmas"),
        (lambda x: dict(x, t_ends=x["t_ends"][:-1]), ValueError, "t_ends must have the shape of sigmas (18,)"),
        (lambda x: dict(x, rgbs=x["rgbs"][:-1]), ValueError, "rgbs must have shape [M, C] with M = 18"),
        (lambda x: dict(x, sigmas=x["sigmas"][:, None]), ValueError, "sigmas must be a 1-D tensor [M]"),
        (lambda x: dict(x, n_rays=-1), ValueError, "n_rays must be an int >= 0"),
        (lambda x: dict(x, background=torch.rand(7, 2)), ValueError, "background must be a number or a tensor"),
    ],
)
def test_bad_packed_input(backend, device, change, error, words):
    x, n_rays = make_packed(device=device)
    x = change(dict(x, n_rays=n_rays))
    args = [x.pop(k) for k in ("sigmas", "rgbs", "t_starts", "t_ends", "ray_indices", "n_rays")]
    with pytest.raises(error) as info:
        composite_packed(*args, backend=backend, **x)
    assert words in str(info.value) and "composite_packed" in str(info.value)


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.values[0] == "cpu"])
def test_cpu_ray_offsets_long_runs(backend, device):
    """The CPU pass that turns sorted ray_indices into ray offsets skips whole blocks of one
    ray: offsets as searchsorted's for runs of every length (empty rays included), and a layout
    broken inside a long run, or by a run out of range, is still caught at its first sample."""
    from fastfields._op import compiled_ops
    from fastfields.ops.composite import ray_offsets

    gen = torch.Generator().manual_seed(0)
    n_rays = 3000
    counts = torch.randint(0, 61, (n_rays,), generator=gen)
    counts[::7] = 0
    ray_indices = torch.repeat_interleave(torch.arange(n_rays), counts)
    offsets, first_bad = compiled_ops("cpu").composite_offsets(ray_indices, n_rays)
    assert first_bad == -1 and torch.equal(offsets, ray_offsets(ray_indices, n_rays))
    starts = torch.cumsum(counts, 0) - counts
    long_ray = int(torch.nonzero(counts > 50)[5, 0])
    middle = int(starts[long_ray]) + 37
    broken = ray_indices.clone()
    broken[middle] = long_ray - 1  # descends inside a run of 50+ samples
    assert compiled_ops("cpu").composite_offsets(broken, n_rays)[1] == middle
    broken = ray_indices.clone()
    run = slice(int(starts[long_ray]), int(starts[long_ray] + counts[long_ray]))
    broken[run] = n_rays + 5  # a whole run out of range (and then descending)
    assert compiled_ops("cpu").composite_offsets(broken, n_rays)[1] == run.start
