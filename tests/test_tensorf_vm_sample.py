"""tensorf_vm_sample: every backend against the PyTorch reference, forward and backward."""

import numpy
import pytest
import torch
import torch.nn.functional as F

from fastfields.ops.tensorf_vm_sample import (
    TENSORF_VM,
    ZERORF_VM,
    _gather_layout,
    output_shape,
    tensorf_vm_sample,
)
from fastfields.ops.triplane_sample import planes_channels_last
from fastfields.reference.tensorf_vm_sample import tensorf_vm_sample_reference

from conftest import backend_params

BACKENDS = backend_params()
OPTIONS = {
    "tensorf": TENSORF_VM,
    "zerorf": ZERORF_VM,
    "zeros-unaligned": dict(align_corners=False, padding="zeros"),
    "border-aligned": dict(align_corners=True, padding="border", mat_mode=((2, 0), (1, 1), (0, 2)), vec_mode=(1, 2, 2)),
}


def make_inputs(R=(3, 5, 2), sizes=((5, 7), (4, 9), (6, 3)), L=(6, 8, 5), N=37, dtype=torch.float32, device="cpu",
                spread=1.3, seed=0):
    """Three planes [R_k, H_k, W_k], three lines [R_k, L_k] (sizes differ per pair) and xyz [N, 3]."""
    gen = torch.Generator().manual_seed(seed)
    planes = [torch.randn(r, h, w, generator=gen, dtype=torch.float64).to(device, dtype) for r, (h, w) in zip(R, sizes)]
    lines = [torch.randn(r, length, generator=gen, dtype=torch.float64).to(device, dtype) for r, length in zip(R, L)]
    xyz = ((torch.rand(N, 3, generator=gen, dtype=torch.float64) * 2 - 1) * spread).to(device, dtype)
    return planes, lines, xyz


def leaves(tensors):
    return [t.detach().requires_grad_(True) for t in tensors]


def run(fn, planes, lines, xyz, grad_seed=1, **kwargs):
    """Output and gradients (planes..., lines..., xyz) of fn for a fixed random upstream gradient."""
    planes, lines, (xyz,) = leaves(planes), leaves(lines), leaves([xyz])
    out = fn(planes, lines, xyz, **kwargs)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
    out.backward(grad.to(out.device, out.dtype))
    return [out.detach()] + [t.grad for t in planes + lines + [xyz]]


NAMES = ["output"] + [f"grad planes[{k}]" for k in range(3)] + [f"grad lines[{k}]" for k in range(3)] + ["grad xyz"]


def assert_matches_reference(backend, planes, lines, xyz, atol=1e-5, rtol=1e-5, **kwargs):
    got = run(tensorf_vm_sample, planes, lines, xyz, backend=backend, **kwargs)
    want = run(tensorf_vm_sample_reference, planes, lines, xyz, **kwargs)
    for name, g, w in zip(NAMES, got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        torch.testing.assert_close(g, w, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("reduce", ["concat", "sum"])
@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_matches_reference(backend, device, reduce, options):
    planes, lines, xyz = make_inputs(device=device)
    assert_matches_reference(backend, planes, lines, xyz, reduce=reduce, **options)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize(
    "shape",
    [
        dict(R=(1, 1, 1), sizes=((1, 1), (1, 1), (1, 1)), L=(1, 1, 1), N=1),
        dict(R=(1, 2, 1), sizes=((2, 2), (1, 3), (3, 1)), L=(2, 1, 3), N=1),
        dict(R=(16, 4, 4), sizes=((9, 11), (9, 13), (11, 13)), L=(13, 11, 9), N=19),  # n_lamb_sigma-like
        dict(R=(70, 33, 5), sizes=((4, 6), (3, 5), (6, 4)), L=(5, 7, 3), N=21),  # several component blocks
    ],
    ids=lambda s: "R" + "-".join(map(str, s["R"])) + f"-N{s['N']}",
)
def test_shapes(backend, device, shape):
    planes, lines, xyz = make_inputs(device=device, **shape)
    for reduce in ("concat", "sum"):
        assert_matches_reference(backend, planes, lines, xyz, reduce=reduce)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_stacked_and_tensorf_parameter_shapes(backend, device):
    """[3, R, H, W] / [3, R, L] tensors and TensoRF's [1, R_k, H_k, W_k] / [1, R_k, L_k, 1] parameters."""
    planes, lines, xyz = make_inputs(R=(4, 4, 4), sizes=((5, 6),) * 3, L=(7, 7, 7), device=device)
    stacked = torch.stack(planes).requires_grad_(True)
    stacked_lines = torch.stack(lines).requires_grad_(True)
    out = tensorf_vm_sample(stacked, stacked_lines, xyz, backend=backend)
    out.square().sum().backward()
    params = [p[None].requires_grad_(True) for p in planes]
    line_params = [line[None, :, :, None].requires_grad_(True) for line in lines]
    out_params = tensorf_vm_sample(params, line_params, xyz, backend=backend)
    out_params.square().sum().backward()
    want = run(tensorf_vm_sample_reference, planes, lines, xyz)
    torch.testing.assert_close(out, out_params)
    torch.testing.assert_close(out, want[0])
    for k in range(3):
        torch.testing.assert_close(stacked.grad[k], params[k].grad[0])
        torch.testing.assert_close(stacked_lines.grad[k], line_params[k].grad[0, :, :, 0])
    assert params[0].grad.shape == params[0].shape and line_params[0].grad.shape == line_params[0].shape


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_empty_points(backend, device):
    planes, lines, xyz = make_inputs(N=0, device=device)
    out, *grads = run(tensorf_vm_sample, planes, lines, xyz, backend=backend)
    assert out.shape == (0, 10)
    assert grads[-1].shape == (0, 3)
    assert all(torch.count_nonzero(g) == 0 for g in grads[:-1])
    assert tensorf_vm_sample(planes, lines, xyz, reduce="sum", backend=backend).shape == (0,)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_edges_outside_and_non_finite(backend, device, padding):
    planes, lines, xyz = make_inputs(N=12, device=device)
    xyz[0] = torch.tensor([1.0, -1.0, 1.0])  # exactly on the box corners
    xyz[1] = torch.tensor([5.0, -7.0, 0.25])  # far outside
    xyz[2] = torch.tensor([1e20, -1e20, 3e9])  # would overflow an int conversion
    xyz[3] = torch.tensor([float("nan"), 0.0, 0.0])
    xyz[4] = torch.tensor([0.0, float("inf"), 0.0])
    xyz[5] = torch.tensor([1.0 + 1e-7, -1.0 - 1e-7, 0.999])
    for align_corners in (False, True):
        assert_matches_reference(backend, planes, lines, xyz, padding=padding, align_corners=align_corners)
    out, *grads = run(tensorf_vm_sample, planes, lines, xyz, backend=backend, reduce="sum", padding=padding)
    assert torch.isfinite(out).all() and (out[3:5] == 0).all() and (grads[-1][3:5] == 0).all()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_strided_inputs(backend, device):
    # Planes of more texels than 4 N are read in place, whatever their strides (see _gather_layout).
    planes, lines, xyz = make_inputs(sizes=((9, 11), (8, 13), (12, 7)), N=20, device=device)
    gen = torch.Generator().manual_seed(2)  # not the global RNG: its state depends on the tests before
    wide_xyz = torch.randn(20, 7, generator=gen).to(device)
    xyz_view = wide_xyz[:, 1:7:2]  # non-contiguous view
    xyz_view.copy_(xyz)
    channels_last = [planes_channels_last(p) for p in planes]
    assert channels_last[0].stride(0) == 1 and torch.equal(channels_last[0], planes[0])
    sliced = [torch.randn(2 * p.shape[0], *p.shape[1:], generator=gen).to(device)[1::2] for p in planes]  # along R
    transposed = [p.transpose(1, 2).contiguous().transpose(1, 2) for p in planes]  # W-major storage
    lines_t = [line.t().contiguous().t() for line in lines]  # component stride 1
    for p, l_ in ((channels_last, lines), (sliced, lines_t), (transposed, lines)):
        for reduce in ("concat", "sum"):
            assert_matches_reference(backend, p, l_, xyz_view, reduce=reduce)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_component_major_planes_small_and_large_n(backend, device):
    """A component-major plane is read in place for few points and copied channels-last for many."""
    for n_points in (3, 40):
        planes, lines, xyz = make_inputs(sizes=((8, 9), (7, 9), (9, 9)), N=n_points, device=device)
        copied = [p.stride(0) == 1 for p in _gather_layout(planes, n_points)]
        assert copied == [n_points == 40] * 3
        assert_matches_reference(backend, planes, lines, xyz, reduce="concat")


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.values[0] == "cpu"])
@pytest.mark.parametrize("reduce", ["concat", "sum"])
def test_many_incoherent_points(backend, device, reduce):
    """Over 2^14 random points on planes of over 512 KB: the CPU kernels process them in a spatial
    (Morton) order (csrc/include/fastfields/cpu_gather.h), split the gradients over per-thread
    buffers (the first one the result itself for channels-last float32 planes) and must still
    write every output and gradient at its point's own index."""
    planes, lines, xyz = make_inputs(R=(8, 6, 4), sizes=((160, 150), (140, 160), (150, 150)), L=(150, 160, 140),
                                     N=2**14 + 37, spread=1.05, device=device)
    xyz[5, 1] = float("nan")
    xyz[9, 2] = float("inf")
    for layout in (lambda p: p, planes_channels_last):
        assert_matches_reference(backend, [layout(p) for p in planes], lines, xyz, reduce=reduce, atol=1e-4,
                                 rtol=1e-4)
    # The planes' gradient alone, component-major: accumulated in scratch and transposed into place.
    got, want = leaves(planes), leaves(planes)
    grads = torch.autograd.grad(tensorf_vm_sample_reference(want, lines, xyz, reduce=reduce).sum(), want)
    got_grads = torch.autograd.grad(tensorf_vm_sample(got, lines, xyz, reduce=reduce, backend=backend).sum(), got)
    for g, w in zip(got_grads, grads):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gradient_layout_follows_inputs(backend, device):
    planes, lines, xyz = make_inputs(device=device)
    channels_last = leaves(planes_channels_last(p) for p in planes)
    lines_t = leaves(line.t().contiguous().t() for line in lines)
    tensorf_vm_sample(channels_last, lines_t, xyz, backend=backend).sum().backward()
    assert [p.grad.stride() for p in channels_last] == [p.stride() for p in channels_last]
    assert [line.grad.stride() for line in lines_t] == [line.stride() for line in lines_t]


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_only_some_inputs_need_grad(backend, device):
    planes, lines, xyz = make_inputs(device=device)
    for wanted, name in enumerate(("planes", "lines", "xyz")):
        grads = []
        for fn, kwargs in ((tensorf_vm_sample, dict(backend=backend)), (tensorf_vm_sample_reference, {})):
            groups = [list(planes), list(lines), [xyz]]
            groups[wanted] = leaves(groups[wanted])
            out = fn(groups[0], groups[1], groups[2][0], reduce="sum", **kwargs)
            grads.append(torch.autograd.grad(out.sum(), groups[wanted]))
        for g, w in zip(*grads):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")


def tensorf_eager(planes, lines, xyz, reduce="concat"):
    """TensoRF's compute_appfeature / compute_densityfeature (before basis_mat), all in the planes' dtype:
    the baseline of the half-precision rule."""
    coords = xyz.to(planes[0].dtype)
    plane_grid = torch.stack([coords[:, pair] for pair in TENSORF_VM["mat_mode"]]).view(3, -1, 1, 2)
    line_coords = torch.stack([coords[:, axis] for axis in TENSORF_VM["vec_mode"]])
    line_grid = torch.stack((torch.zeros_like(line_coords), line_coords), dim=-1).view(3, -1, 1, 2)
    products = [
        F.grid_sample(plane[None], plane_grid[[k]], align_corners=True).view(plane.shape[0], -1)
        * F.grid_sample(line[None, :, :, None], line_grid[[k]], align_corners=True).view(line.shape[0], -1)
        for k, (plane, line) in enumerate(zip(planes, lines))
    ]
    features = torch.cat(products).T
    return features if reduce == "concat" else features.sum(dim=1)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("xyz_dtype", ["same", "float32"])
def test_half_precision(backend, device, dtype, xyz_dtype):
    """The flash-attention rule: our error against a float32 reference is at most about twice
    that of TensoRF's eager code run in the same dtype."""
    planes32, lines32, xyz32 = make_inputs(
        R=(16, 8, 8), sizes=((9, 8), (8, 7), (7, 9)), L=(9, 8, 7), N=40, device=device, spread=0.95
    )
    planes = [p.to(dtype) for p in planes32]
    lines = [line.to(dtype) for line in lines32]
    xyz = xyz32.to(dtype) if xyz_dtype == "same" else xyz32
    for reduce in ("concat", "sum"):
        want = run(tensorf_vm_sample_reference, [p.float() for p in planes], [line.float() for line in lines],
                   xyz.float(), reduce=reduce)
        got = run(tensorf_vm_sample, planes, lines, xyz, backend=backend, reduce=reduce)
        eager = run(tensorf_eager, planes, lines, xyz, reduce=reduce)
        for name, g, e, w in zip(NAMES, got, eager, want):
            assert g.dtype == (dtype if name != "grad xyz" else xyz.dtype), name
            ours = (g.double() - w.double()).abs().max().item()
            theirs = (e.double() - w.double()).abs().max().item()
            assert ours <= 2 * theirs + 1e-3 * w.abs().max().item(), f"{reduce} {name}: {ours} vs eager {theirs}"


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_float64(backend, device):
    planes, lines, xyz = make_inputs(dtype=torch.float64, device=device)
    for reduce in ("concat", "sum"):
        assert_matches_reference(backend, planes, lines, xyz, atol=1e-12, rtol=1e-10, reduce=reduce, **ZERORF_VM)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gradcheck(backend, device):
    planes, lines, xyz = make_inputs(R=(2, 1, 2), sizes=((3, 4), (2, 3), (4, 2)), L=(3, 4, 2), N=5,
                                     dtype=torch.float64, device=device, spread=0.9)
    inputs = tuple(leaves(planes + lines + [xyz]))
    fn = lambda *t: tensorf_vm_sample(t[0:3], t[3:6], t[6], backend=backend, **ZERORF_VM)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
@pytest.mark.parametrize("reduce", ["concat", "sum"])
def test_reference_gradcheck(options, reduce):
    planes, lines, xyz = make_inputs(R=(2, 1, 3), sizes=((3, 4), (4, 3), (2, 5)), L=(4, 3, 5), N=6, dtype=torch.float64,
                                     spread=0.9)
    inputs = tuple(leaves(planes + lines + [xyz]))
    fn = lambda *t: tensorf_vm_sample_reference(t[0:3], t[3:6], t[6], reduce=reduce, **options)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_create_graph_runs_through_reference(backend, device):
    """Double backward is not in the kernels; create_graph=True takes the reference path."""
    planes, lines, xyz = make_inputs(N=9, dtype=torch.float64, device=device, spread=0.9)

    def second_order(fn, **kwargs):
        p, l_, (x,) = leaves(planes), leaves(lines), leaves([xyz])
        (g,) = torch.autograd.grad(fn(p, l_, x, reduce="sum", **kwargs).square().sum(), x, create_graph=True)
        return torch.autograd.grad(g.square().sum(), p + l_ + [x])

    for g, w in zip(second_order(tensorf_vm_sample, backend=backend), second_order(tensorf_vm_sample_reference)):
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_opcheck(backend, device):
    planes, lines, xyz = make_inputs(R=(2, 3, 1), sizes=((3, 4), (2, 5), (4, 3)), L=(3, 4, 5), N=6, device=device)
    tensors = leaves(planes + lines + [xyz])
    config = ([0, 1, 1, 2, 2, 0], [2, 0, 1], "concat", False, "border", backend)
    torch.library.opcheck(torch.ops.fastfields.tensorf_vm_sample.default, (*tensors, *config))
    config = ([0, 1, 0, 2, 1, 2], [2, 1, 0], "sum", True, "zeros", backend)
    grad = torch.randn(output_shape(planes, xyz, "sum"), device=device)
    bwd_args = (grad, *[t.detach() for t in tensors], *config, True, True, True)
    torch.library.opcheck(torch.ops.fastfields.tensorf_vm_sample_backward.default, bwd_args)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_torch_compile_fullgraph(backend, device):
    planes, lines, xyz = make_inputs(N=10, device=device)

    def loss(*t):
        feats = tensorf_vm_sample(list(t[0:3]), list(t[3:6]), t[6], backend=backend, **ZERORF_VM)
        density = tensorf_vm_sample(list(t[0:3]), list(t[3:6]), t[6], reduce="sum", backend=backend)
        return (feats * 2).square().sum() + density.sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    got = run(lambda p, l_, x: compiled(*p, *l_, x).reshape(1), planes, lines, xyz)
    want = run(lambda p, l_, x: loss(*p, *l_, x).reshape(1), planes, lines, xyz)
    for name, g, w in zip(NAMES, got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")


# ---------------------------------------------------------------------------------------
# The presets reproduce the published code, written out here as it is there.


def test_tensorf_preset_is_tensorf():
    """TensorVMSplit.compute_densityfeature / compute_appfeature with [1, R_k, H_k, W_k] parameters."""
    planes, lines, xyz = make_inputs(R=(16, 4, 4), sizes=((9, 8), (7, 8), (7, 9)), L=(7, 9, 8), N=50, spread=1.1)
    plane_coef = [p[None] for p in planes]
    line_coef = [line[None, :, :, None] for line in lines]
    mat_mode, vec_mode = [[0, 1], [0, 2], [1, 2]], [2, 1, 0]
    coordinate_plane = torch.stack([xyz[..., mat_mode[k]] for k in range(3)]).view(3, -1, 1, 2)
    coordinate_line = torch.stack([xyz[..., vec_mode[k]] for k in range(3)])
    coordinate_line = torch.stack((torch.zeros_like(coordinate_line), coordinate_line), dim=-1).view(3, -1, 1, 2)
    plane_points, line_points = [], []
    for k in range(3):
        plane_points.append(F.grid_sample(plane_coef[k], coordinate_plane[[k]], align_corners=True).view(-1, 50))
        line_points.append(F.grid_sample(line_coef[k], coordinate_line[[k]], align_corners=True).view(-1, 50))
    sigma_feature = sum(torch.sum(p * l_, dim=0) for p, l_ in zip(plane_points, line_points))
    app_feature = (torch.cat(plane_points) * torch.cat(line_points)).T
    torch.testing.assert_close(tensorf_vm_sample(plane_coef, line_coef, xyz, reduce="sum", **TENSORF_VM), sigma_feature)
    torch.testing.assert_close(tensorf_vm_sample(plane_coef, line_coef, xyz), app_feature)


def test_zerorf_preset_is_zerorf():
    """TensorialDecoder.get_point_code (tensor_config xy, z, yz, x, zx, y; subreduce 2; reduce cat)."""
    planes, lines, xyz = make_inputs(R=(4, 4, 4), sizes=((8, 8),) * 3, L=(8, 8, 8), N=50, spread=1.1)
    tensor_config = ["xy", "z", "yz", "x", "zx", "y"]
    subs = [planes[0], lines[0], planes[1], lines[1], planes[2], lines[2]]
    codes = []
    for cfg, got in zip(tensor_config, subs):
        got = got[None]
        if got.ndim == 3:
            got = got.unsqueeze(-1)
            cfg += "x"
        coords = xyz[..., ["xyzt".index(axis) for axis in cfg]].reshape(1, 1, 50, 2)
        sampled = F.grid_sample(got, coords, mode="bilinear", padding_mode="border", align_corners=False)
        codes.append(sampled.reshape(1, got.shape[1], 50).transpose(1, 2))
    point_code = torch.cat([codes[0] * codes[1], codes[2] * codes[3], codes[4] * codes[5]], dim=-1).reshape(50, 12)
    torch.testing.assert_close(tensorf_vm_sample(planes, lines, xyz, **ZERORF_VM), point_code)
    named_axes = tensorf_vm_sample(planes, lines, xyz, **{**ZERORF_VM, "vec_mode": (2, 0, 1)})
    assert not torch.allclose(named_axes, point_code)


# ---------------------------------------------------------------------------------------
# Bad input: a clear error that names the argument.


def _replace(items, k, value):
    return [value if i == k else item for i, item in enumerate(items)]


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda p, l_, x: (torch.stack(p[:1] * 2), l_, x), ValueError, "planes must be [3, R, H, W] or three"),
        (lambda p, l_, x: (p[:2], l_, x), ValueError, "planes must be [3, R, H, W] or three [R_k, H_k, W_k]"),
        (lambda p, l_, x: (p[0], l_, x), ValueError, "got a tensor of shape (3, 5, 7)"),
        (lambda p, l_, x: (5, l_, x), ValueError, "got int"),
        (lambda p, l_, x: (_replace(p, 1, p[1][0]), l_, x), ValueError, "planes[1] must be a 3-D tensor [R_k, H_k"),
        (lambda p, l_, x: (_replace(p, 2, p[2][None].expand(2, -1, -1, -1)), l_, x), ValueError,
         "planes[2] must have shape [1, R_k, H_k, W_k]"),
        (lambda p, l_, x: (_replace(p, 0, p[0][:, :0]), l_, x), ValueError, "planes[0] must have R_k, H_k and W_k"),
        (lambda p, l_, x: (p, _replace(l_, 1, l_[1][:4]), x), ValueError,
         "lines[1] must have R_1 = 5 components like planes[1], got shape (4, 8)"),
        (lambda p, l_, x: (p, _replace(l_, 0, l_[0][None]), x), ValueError, "lines[0] must be a 2-D tensor [R_k, L_k]"),
        (lambda p, l_, x: (p, _replace(l_, 2, l_[2][None, :, :, None].expand(-1, -1, -1, 2)), x), ValueError,
         "lines[2] must have shape [1, R_k, L_k, 1] with size 1 at dim 3"),
        (lambda p, l_, x: (p, _replace(l_, 2, l_[2][:, :0]), x), ValueError, "lines[2] must have L_2 >= 1"),
        (lambda p, l_, x: (p, l_[:2], x), ValueError, "lines must be [3, R, L] or three [R_k, L_k]"),
        (lambda p, l_, x: (p, _replace(l_, 1, l_[1].half()), x), TypeError, "lines[1] must have the dtype of"),
        (lambda p, l_, x: (_replace(p, 2, p[2].double()), l_, x), TypeError, "planes[2] must have the dtype of"),
        (lambda p, l_, x: ([t.half() for t in p], [t.half() for t in l_], x.double()), TypeError,
         "xyz must have the dtype of planes"),
        (lambda p, l_, x: (_replace(p, 0, p[0].int()), l_, x), TypeError, "planes[0] must be float32"),
        (lambda p, l_, x: (p, l_, x.long()), TypeError, "xyz must be float32"),
        (lambda p, l_, x: (p, l_, x[:, :2]), ValueError, "xyz must have shape [N, 3]"),
        (lambda p, l_, x: (p, l_, x[None]), ValueError, "xyz must be a 2-D tensor [N, 3]"),
        (lambda p, l_, x: (_replace(p, 1, numpy.zeros(3)), l_, x), TypeError, "planes[1] must be a torch.Tensor"),
        (lambda p, l_, x: (p, l_, x.to("meta")), ValueError, "xyz is on meta but planes[0] is on cpu"),
        (lambda p, l_, x: (p, _replace(l_, 1, l_[1].to("meta")), x), ValueError, "lines[1] is on meta"),
    ],
)
def test_bad_input(make, error, words):
    planes, lines, xyz = make(*make_inputs())
    with pytest.raises(error) as info:
        tensorf_vm_sample(planes, lines, xyz)
    assert words in str(info.value) and "tensorf_vm_sample" in str(info.value)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(reduce="mean"), "reduce must be one of"),
        (dict(padding="reflection"), "padding must be one of"),
        (dict(align_corners=1), "align_corners must be a bool"),
        (dict(mat_mode=((0, 1), (0, 2))), "mat_mode must be three (u, v) pairs"),
        (dict(mat_mode=((0, 1), (0, 3), (2, 1))), "mat_mode must be three (u, v) pairs"),
        (dict(vec_mode=(2, 1)), "vec_mode must be three xyz components"),
        (dict(vec_mode=(2, 1, -1)), "vec_mode must be three xyz components"),
        (dict(backend="vulkan"), "backend must be 'auto' or one of"),
    ],
)
def test_bad_options(kwargs, words):
    planes, lines, xyz = make_inputs()
    with pytest.raises((ValueError, TypeError)) as info:
        tensorf_vm_sample(planes, lines, xyz, **kwargs)
    assert words in str(info.value)
