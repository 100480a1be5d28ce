"""Bad input to the ops (issue 20): the fuzz sweep's defects as regression tests, and a small
form of the sweep itself.

- silent wrong answers: NaN densities through Triton's softplus, NaN queries in attention,
  +-inf modulation and float32 rows near 1e19..1e20 in adaln_modulate, each compared with
  the float64 reference on every compiled backend of this machine;
- unclear errors: each must be a TypeError / ValueError that names the op and the argument.
"""

import math
import warnings

import pytest
import torch

import fastfields as ff
from fastfields.reference import adaln_modulate_reference
from fastfields.reference.attention import attention_reference

from conftest import backend_params

NAN = float("nan")
INF = float("inf")


def _fused(backends=("triton", "cpu", "cuda")):
    return [p for p in backend_params() if p.values[0] in backends]


# --------------------------------------------------------------------------- composite: NaN sigma


@pytest.mark.parametrize("backend, device", _fused())
@pytest.mark.parametrize("activation", ["softplus", "relu", "exp", "trunc_exp", "none"])
def test_composite_nan_sigma_spoils_its_ray_only(backend, device, activation):
    torch.manual_seed(0)
    sigmas = torch.randn(5, 7, device=device)
    rgbs = torch.rand(5, 7, 3, device=device)
    deltas = torch.full((5, 7), 0.1, device=device)
    sigmas[2, 3] = NAN
    kwargs = dict(density_activation=activation, t=torch.linspace(0, 1, 7, device=device).expand(5, 7))
    want = ff.composite(sigmas.double(), rgbs.double(), deltas.double(), backend="torch", **kwargs)
    got = ff.composite(sigmas, rgbs, deltas, backend=backend, **kwargs)
    for g, w in zip(got[:3], want[:3]):
        assert torch.equal(g.isnan(), w.isnan())
        assert bool(g[2].isnan().all()), "the NaN density must reach its ray's outputs"
        torch.testing.assert_close(g.double().nan_to_num(), w.nan_to_num(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend, device", _fused())
def test_composite_packed_nan_sigma_softplus(backend, device):
    torch.manual_seed(1)
    counts = torch.tensor([3, 0, 4, 2])
    ray_indices = torch.repeat_interleave(torch.arange(4), counts).to(device)
    M = int(counts.sum())
    sigmas = torch.randn(M, device=device)
    sigmas[4] = NAN  # ray 2
    rgbs = torch.rand(M, 3, device=device)
    t_starts = torch.rand(M, device=device).sort().values
    t_ends = t_starts + 0.05
    args = (ray_indices, 4)
    want = ff.composite_packed(sigmas.double(), rgbs.double(), t_starts.double(), t_ends.double(), *args,
                               density_activation="softplus", backend="torch")
    got = ff.composite_packed(sigmas, rgbs, t_starts, t_ends, *args, density_activation="softplus", backend=backend)
    for g, w in zip(got[:3], want[:3]):
        assert torch.equal(g.isnan(), w.isnan()) and bool(g[2].isnan().all())
        torch.testing.assert_close(g.double().nan_to_num(), w.nan_to_num(), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- attention


def test_attention_nan_query_row_is_nan_not_zero():
    q, k, v = (torch.randn(1, 2, 5, 8) for _ in range(3))
    q[0, 1, 3, 2] = NAN
    out = ff.attention(q, k, v, backend="torch")
    math_out = (torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(8), -1) @ v.double())
    assert torch.equal(out.isnan(), math_out.isnan()) and bool(out[0, 1, 3].isnan().all())
    torch.testing.assert_close(out.double().nan_to_num(), math_out.nan_to_num(), atol=1e-5, rtol=1e-5)
    clean = torch.randn(1, 2, 5, 8)
    assert torch.equal(attention_reference(clean, k[:, :, :0], v[:, :, :0]), torch.zeros_like(clean))  # no keys: zeros


@pytest.mark.parametrize("scale", [NAN, INF, -INF, "0.5", True])
def test_attention_scale_must_be_a_finite_float(scale):
    q = torch.randn(1, 1, 3, 4)
    with pytest.raises((TypeError, ValueError), match="attention: scale must be a"):
        ff.attention(q, q, q, scale=scale, backend="torch")


# --------------------------------------------------------------------------- adaln_modulate


def _adaln_case(values, D=24):
    torch.manual_seed(2)
    x = torch.randn(2, 3, D)
    params = dict(shift=torch.randn(2, D), scale=torch.randn(2, D), gate=torch.randn(2, D),
                  weight=torch.randn(D), bias=torch.randn(D), residual=torch.randn(2, 3, D))
    for (name, index), value in values.items():
        params[name][index] = value
    return x, params


def _adaln_check(backend, device, x, params, rtol=1e-5):
    x = x.to(device)
    params = {k: v.to(device) for k, v in params.items()}
    shift, scale = params.pop("shift"), params.pop("scale")
    want = adaln_modulate_reference(x.double(), shift.double(), scale.double(), **{k: v.double() for k, v in params.items()})
    got = ff.adaln_modulate(x, shift, scale, backend=backend, **params).double()
    assert torch.equal(got.isnan(), want.isnan()), "NaN where the float64 reference has none (or the reverse)"
    assert torch.equal(got.isinf(), want.isinf()) and torch.equal(got[got.isinf()], want[want.isinf()])
    finite = want.isfinite()
    torch.testing.assert_close(got[finite], want[finite], atol=1e-4, rtol=rtol)


@pytest.mark.parametrize("backend, device", _fused(("triton", "cpu")))
@pytest.mark.parametrize("values", [
    {("scale", (0, 5)): INF}, {("scale", (1, 2)): -INF}, {("gate", (0, 7)): INF}, {("gate", (1, 0)): -INF},
    {("shift", (0, 3)): INF, ("gate", (0, 3)): 2.0}, {("bias", 4): INF}, {("weight", 9): -INF},
], ids=lambda v: ",".join(f"{n}{i}={x}" for (n, i), x in v.items()))
def test_adaln_modulate_infinite_modulation_matches_reference(backend, device, values):
    x, params = _adaln_case(values)
    _adaln_check(backend, device, x, params)


@pytest.mark.parametrize("backend, device", _fused(("triton", "cpu")))
@pytest.mark.parametrize("magnitude", [1e18, 1e19, 5e19, 1e20, 1e30])
def test_adaln_modulate_huge_float32_rows(backend, device, magnitude):
    """Squared deviations beyond ~1e19 overflow float32: the rows must still normalise."""
    x, params = _adaln_case({}, D=300)
    x = x * magnitude + 3 * magnitude
    params["residual"] = params["residual"] * 0
    _adaln_check(backend, device, x, params, rtol=1e-4)


# --------------------------------------------------------------------------- render_triplane


def _render_inputs(B=1, R=4, C=4):
    planes = torch.randn(B, 3, C, 8, 8)
    rays_o = torch.tensor([0.0, 0.0, -2.0]).expand(B, R, 3).contiguous()
    rays_d = torch.tensor([0.0, 0.0, 1.0]).expand(B, R, 3).contiguous()
    return planes, rays_o, rays_d, ff.nn.TriplaneDecoder(3 * C)


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_render_triplane_zero_rays(backend):
    planes, rays_o, rays_d, decoder = _render_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rgb, depth, opacity, _ = ff.render_triplane(planes, rays_o[:, :0], rays_d[:, :0], decoder, n_samples=4,
                                                    n_importance=2, background=1.0, backend=backend)
    assert rgb.shape == (1, 0, 3) and depth.shape == (1, 0) and opacity.shape == (1, 0)


def test_render_triplane_float64_planes_with_a_float32_decoder():
    planes, rays_o, rays_d, decoder = _render_inputs()
    with pytest.raises(TypeError, match=r"render_triplane: .*decoder.*float64.*parameters are torch.float32"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ff.render_triplane(planes.double(), rays_o, rays_d, decoder, n_samples=4)
    rgb, *_ = ff.render_triplane(planes.double(), rays_o, rays_d, decoder.double(), n_samples=4, backend="torch")
    assert rgb.dtype == torch.float64  # what the message suggests works


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_render_triplane_background_of_the_wrong_length(backend):
    planes, rays_o, rays_d, decoder = _render_inputs()
    with pytest.raises(ValueError, match=r"render_triplane: background must .* broadcasts to .*\[1, 4, 3\].*\(2,\)"):
        ff.render_triplane(planes, rays_o, rays_d, decoder, n_samples=4, background=torch.ones(2), backend=backend)
    rgb, *_ = ff.render_triplane(planes, rays_o, rays_d, decoder, n_samples=4, background=torch.ones(3), backend=backend)
    assert rgb.shape == (1, 4, 3)


# --------------------------------------------------------------------------- the sweep: every bad argument is named


def _planes():
    return torch.randn(1, 3, 4, 8, 8)


def _xyz(n=5):
    return torch.rand(1, n, 3) * 2 - 1


def _packed(**overrides):
    args = dict(sigmas=torch.randn(6), rgbs=torch.rand(6, 3), t_starts=torch.arange(6.0), t_ends=torch.arange(6.0) + 1,
                ray_indices=torch.tensor([0, 0, 1, 1, 1, 2]), n_rays=3)
    args.update(overrides)
    return args


def _meta(t):
    return t.to("meta")


def _render(**overrides):
    planes, rays_o, rays_d, decoder = _render_inputs()
    args = dict(planes=planes, rays_o=rays_o, rays_d=rays_d, decoder=decoder, n_samples=4)
    args.update(overrides)
    return args


def _adaln(**overrides):
    args = dict(x=torch.randn(2, 3, 8), shift=torch.randn(2, 8), scale=torch.randn(2, 8))
    args.update(overrides)
    return args


VM_PLANES = [torch.randn(2, 8, 8) for _ in range(3)]
VM_LINES = [torch.randn(2, 8) for _ in range(3)]

# (op, argument the message must name, call)
SWEEP = [
    ("triplane_sample", "axes", lambda: ff.triplane_sample(_planes(), _xyz(), axes="xy")),
    ("triplane_sample", "axes", lambda: ff.triplane_sample(_planes(), _xyz(), axes=((0, 1), (0, 2), (2, 3)))),
    ("triplane_sample", "axes", lambda: ff.triplane_sample(_planes(), _xyz(), axes=None)),
    ("triplane_sample", "planes", lambda: ff.triplane_sample(torch.randn(1, 2, 4, 8, 8), _xyz())),
    ("triplane_sample", "planes", lambda: ff.triplane_sample(_planes().long(), _xyz())),
    ("triplane_sample", "planes", lambda: ff.triplane_sample(_planes().numpy(), _xyz())),
    ("triplane_sample", "xyz", lambda: ff.triplane_sample(_planes(), torch.rand(1, 5, 2))),
    ("triplane_sample", "xyz", lambda: ff.triplane_sample(_planes(), _xyz().half())),
    ("triplane_sample", "reduce", lambda: ff.triplane_sample(_planes(), _xyz(), reduce="max")),
    ("triplane_sample", "padding", lambda: ff.triplane_sample(_planes(), _xyz(), padding="reflect")),
    ("triplane_sample", "align_corners", lambda: ff.triplane_sample(_planes(), _xyz(), align_corners=1)),
    ("voxel_sample", "volume", lambda: ff.voxel_sample(torch.randn(1, 2, 4, 4), _xyz())),
    ("voxel_sample", "xyz", lambda: ff.voxel_sample(torch.randn(1, 2, 4, 4, 4), torch.rand(2, 5, 3))),
    ("voxel_sample", "padding", lambda: ff.voxel_sample(torch.randn(1, 2, 4, 4, 4), _xyz(), padding="nan")),
    ("tensorf_vm_sample", "xyz", lambda: ff.tensorf_vm_sample(VM_PLANES, VM_LINES, torch.rand(5, 2))),
    ("tensorf_vm_sample", "reduce", lambda: ff.tensorf_vm_sample(VM_PLANES, VM_LINES, torch.rand(5, 3), reduce="mean!")),
    ("tensorf_vm_sample", "lines", lambda: ff.tensorf_vm_sample(VM_PLANES, VM_LINES[:2], torch.rand(5, 3))),
    ("composite", "rgbs", lambda: ff.composite(torch.randn(4, 6), torch.rand(4, 5, 3), torch.rand(4, 6))),
    ("composite", "density_activation", lambda: ff.composite(torch.randn(4, 6), torch.rand(4, 6, 3), torch.rand(4, 6),
                                                             density_activation="gelu")),
    ("composite", "background", lambda: ff.composite(torch.randn(4, 6), torch.rand(4, 6, 3), torch.rand(4, 6),
                                                     background=torch.ones(2))),
    ("composite", "mode", lambda: ff.composite(torch.randn(4, 6), torch.rand(4, 6, 3), torch.rand(4, 6), mode="mip")),
    ("composite_packed", "ray_indices", lambda: ff.composite_packed(**_packed(ray_indices=torch.tensor([0, 1, 0, 1, 1, 2])))),
    ("composite_packed", "ray_indices", lambda: ff.composite_packed(**_packed(ray_indices=torch.tensor([0, 0, 1, 1, 1, 2]).int()))),
    ("composite_packed", "n_rays", lambda: ff.composite_packed(**_packed(n_rays=-1))),
    ("composite_packed", "ray_indices", lambda: ff.composite_packed(**_packed(n_rays=2))),
    ("composite_packed", "sigmas", lambda: ff.composite_packed(**{k: _meta(v) if isinstance(v, torch.Tensor) else v
                                                                  for k, v in _packed().items()}, backend="torch")),
    ("adaln_modulate", "shift", lambda: ff.adaln_modulate(**_adaln(shift=torch.randn(2, 7)))),
    ("adaln_modulate", "scale", lambda: ff.adaln_modulate(**_adaln(scale=torch.randn(3, 8)))),
    ("adaln_modulate", "residual", lambda: ff.adaln_modulate(**_adaln(residual=torch.randn(2, 3, 8).double()))),
    ("adaln_modulate", "eps", lambda: ff.adaln_modulate(**_adaln(eps=-1.0))),
    ("adaln_modulate", "x", lambda: ff.adaln_modulate(**_adaln(x=torch.randn(2, 3, 0), shift=torch.randn(2, 0),
                                                              scale=torch.randn(2, 0)))),
    ("attention", "k", lambda: ff.attention(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 5), torch.randn(1, 2, 3, 5))),
    ("attention", "q, k and v", lambda: ff.attention(torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4).double(),
                                                     torch.randn(1, 1, 3, 4))),
    ("attention", "scale", lambda: ff.attention(*(torch.randn(1, 1, 3, 4),) * 3, scale=NAN)),
    ("render_triplane", "planes", lambda: ff.render_triplane(**_render(planes=_meta(_planes()), rays_o=_meta(_render()["rays_o"]),
                                                                       rays_d=_meta(_render()["rays_d"]),
                                                                       decoder=_render()["decoder"].to("meta"), backend="torch"))),
    ("render_triplane", "axes", lambda: ff.render_triplane(**_render(axes="xy"))),
    ("render_triplane", "n_samples", lambda: ff.render_triplane(**_render(n_samples=0))),
    ("render_triplane", "box_warp", lambda: ff.render_triplane(**_render(box_warp=NAN))),
    ("render_triplane", "rays_d", lambda: ff.render_triplane(**_render(rays_d=torch.randn(1, 3, 3)))),
    ("render_triplane", "background", lambda: ff.render_triplane(**_render(background=torch.ones(5)))),
    ("render_triplane", "decoder", lambda: ff.render_triplane(**_render(decoder=ff.nn.TriplaneDecoder(7)))),
]


@pytest.mark.parametrize("op, argument, call", SWEEP, ids=[f"{op}-{arg}-{i}" for i, (op, arg, _) in enumerate(SWEEP)])
def test_bad_argument_is_named(op, argument, call):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises((TypeError, ValueError)) as info:
            call()
    message = str(info.value)
    assert message.startswith(f"{op}:"), message
    assert argument in message, message
