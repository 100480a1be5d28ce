"""triplane_sample: every backend against the PyTorch reference, forward and backward."""

import pytest
import torch
import torch.nn.functional as F

import fastfields as ff
from fastfields.ops.triplane_sample import output_shape
from fastfields.reference import triplane_sample_reference

from conftest import backend_params

BACKENDS = backend_params()
REDUCTIONS = ("none", "sum", "mean", "prod", "concat")


def make_inputs(B=2, N=37, C=5, H=7, W=9, dtype=torch.float32, device="cpu", spread=1.3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    planes = torch.randn(B, 3, C, H, W, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    xyz = ((torch.rand(B, N, 3, generator=gen, dtype=torch.float64) * 2 - 1) * spread).to(device=device, dtype=dtype)
    return planes, xyz


def run(fn, planes, xyz, grad_seed=1, **kwargs):
    """Output and gradients (planes, xyz) of fn for a fixed random upstream gradient."""
    planes = planes.detach().requires_grad_(True)
    xyz = xyz.detach().requires_grad_(True)
    out = fn(planes, xyz, **kwargs)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
    out.backward(grad.to(out.device, out.dtype))
    return out.detach(), planes.grad, xyz.grad


def reference(planes, xyz, **kwargs):
    return triplane_sample_reference(planes, xyz, **kwargs)


def assert_matches_reference(backend, planes, xyz, atol=1e-5, rtol=1e-5, **kwargs):
    got = run(ff.triplane_sample, planes, xyz, backend=backend, **kwargs)
    want = run(reference, planes, xyz, **kwargs)
    for name, g, w in zip(("output", "grad planes", "grad xyz"), got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        tol = atol
        if name == "grad xyz" and w.dtype == torch.float32:
            # A sum over channels and corners of terms of size ~(plane value x W / 2), and with
            # reduce="prod" of three features: float32 cancellation leaves ~1e-5 of its scale.
            tol = max(atol, 1e-5 * w.nan_to_num().abs().max().item())
        torch.testing.assert_close(g, w, atol=tol, rtol=rtol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("reduce", REDUCTIONS)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_matches_reference(backend, device, reduce, align_corners, padding):
    planes, xyz = make_inputs(device=device)
    assert_matches_reference(backend, planes, xyz, reduce=reduce, align_corners=align_corners, padding=padding)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize(
    "shape",
    [
        dict(B=1, N=1, C=1, H=1, W=1),
        dict(B=1, N=1, C=3, H=2, W=2),
        dict(B=3, N=5, C=7, H=5, W=3),
        dict(B=1, N=64, C=32, H=16, W=16),
        dict(B=1, N=20, C=70, H=4, W=6),
    ],
    ids=lambda s: "x".join(f"{k}{v}" for k, v in s.items()),
)
def test_shapes(backend, device, shape):
    planes, xyz = make_inputs(device=device, **shape)
    for reduce in ("mean", "concat"):
        assert_matches_reference(backend, planes, xyz, reduce=reduce, axes=ff.LRM_AXES)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_empty_points(backend, device):
    planes, xyz = make_inputs(N=0, device=device)
    out, grad_planes, grad_xyz = run(ff.triplane_sample, planes, xyz, backend=backend, reduce="none")
    assert out.shape == (2, 0, 3, 5)
    assert grad_xyz.shape == (2, 0, 3)
    assert torch.count_nonzero(grad_planes) == 0


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_edges_outside_and_non_finite(backend, device, padding):
    planes, xyz = make_inputs(B=1, N=12, device=device)
    xyz[0, 0] = torch.tensor([1.0, -1.0, 1.0])  # exactly on the box corners
    xyz[0, 1] = torch.tensor([5.0, -7.0, 0.25])  # far outside
    xyz[0, 2] = torch.tensor([1e20, -1e20, 3e9])  # would overflow an int conversion
    xyz[0, 3] = torch.tensor([float("nan"), 0.0, 0.0])
    xyz[0, 4] = torch.tensor([0.0, float("inf"), 0.0])
    xyz[0, 5] = torch.tensor([1.0 + 1e-7, -1.0 - 1e-7, 0.999])
    for align_corners in (False, True):
        assert_matches_reference(backend, planes, xyz, reduce="none", padding=padding, align_corners=align_corners)
    out = ff.triplane_sample(planes, xyz, backend=backend, reduce="none")
    assert torch.isfinite(out).all() and (out[0, 3:5] == 0).all()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_strided_inputs(backend, device):
    planes, xyz = make_inputs(device=device)
    gen = torch.Generator().manual_seed(2)
    wide_xyz = torch.randn(2, 37, 7, generator=gen).to(device)
    xyz_view = wide_xyz[..., 1:7:2]  # non-contiguous view
    xyz_view.copy_(xyz)
    assert not xyz_view.is_contiguous()
    channels_last = ff.planes_channels_last(planes)
    assert channels_last.stride(2) == 1 and torch.equal(channels_last, planes)
    sliced = torch.randn(2, 3, 11, 7, 9, generator=gen).to(device)[:, :, 2:7]  # non-contiguous along C
    transposed = planes.transpose(3, 4).contiguous().transpose(3, 4)  # W-major storage
    for p in (channels_last, sliced, transposed):
        for reduce in ("prod", "none"):
            assert_matches_reference(backend, p, xyz_view, reduce=reduce)


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.values[0] == "cpu"])
@pytest.mark.parametrize("reduce", ["none", "sum", "prod"])
def test_many_incoherent_points(backend, device, reduce):
    """Over 2^14 random points on planes of over 512 KB: the CPU kernels process them in a spatial
    (Morton) order per batch (csrc/include/fastfields/cpu_gather.h) and must still write every
    output and gradient at its point's own index."""
    planes, xyz = make_inputs(B=2, N=2**13 + 29, C=16, H=64, W=72, spread=1.05, device=device)
    xyz[0, 5, 1] = float("nan")
    xyz[1, 9, 2] = float("inf")
    for p in (planes, ff.planes_channels_last(planes)):
        assert_matches_reference(backend, p, xyz, reduce=reduce, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gradient_layout_follows_planes(backend, device):
    planes, xyz = make_inputs(device=device)
    channels_last = ff.planes_channels_last(planes).requires_grad_(True)
    ff.triplane_sample(channels_last, xyz, backend=backend).sum().backward()
    assert channels_last.grad.stride() == channels_last.stride()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_custom_axes_with_repeated_component(backend, device):
    planes, xyz = make_inputs(device=device)
    for axes in (((0, 1), (0, 1), (2, 0)), ((2, 2), (1, 0), (0, 2)), ff.XYZ_AXES):
        assert_matches_reference(backend, planes, xyz, reduce="sum", axes=axes)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_only_one_input_needs_grad(backend, device):
    planes, xyz = make_inputs(device=device)
    planes.requires_grad_(True)
    ff.triplane_sample(planes, xyz, backend=backend).sum().backward()
    want = planes.detach().requires_grad_(True)
    reference(want, xyz).sum().backward()
    torch.testing.assert_close(planes.grad, want.grad, atol=1e-5, rtol=1e-5)

    xyz.requires_grad_(True)
    (grad_xyz,) = torch.autograd.grad(ff.triplane_sample(planes.detach(), xyz, backend=backend).sum(), xyz)
    (want_xyz,) = torch.autograd.grad(reference(planes.detach(), xyz).sum(), xyz)
    torch.testing.assert_close(grad_xyz, want_xyz, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("xyz_dtype", ["same", "float32"])
def test_half_precision(backend, device, dtype, xyz_dtype):
    """The flash-attention rule: our error against a float32 reference is at most about twice
    that of the eager PyTorch code (three grid_samples + mean) run in the same dtype."""
    planes32, xyz32 = make_inputs(B=1, N=40, C=16, H=9, W=8, device=device)
    planes = planes32.to(dtype)
    xyz = xyz32.to(dtype) if xyz_dtype == "same" else xyz32
    for reduce in ("mean", "prod"):
        want = run(reference, planes.float(), xyz.float(), reduce=reduce)
        got = run(ff.triplane_sample, planes, xyz, backend=backend, reduce=reduce)
        eager = run(eager_in_dtype, planes, xyz, reduce=reduce)
        for name, g, e, w in zip(("output", "grad planes", "grad xyz"), got, eager, want):
            assert g.dtype == (planes.dtype if name != "grad xyz" else xyz.dtype), name
            ours = (g.double() - w.double()).abs().max().item()
            theirs = (e.double() - w.double()).abs().max().item()
            assert ours <= 2 * theirs + 1e-3 * w.abs().max().item(), f"{name}: {ours} vs eager {theirs}"


def eager_in_dtype(planes, xyz, reduce="mean"):
    """What model code does today, all in the planes' dtype (the baseline of the half-precision rule)."""
    grid_xyz = xyz.to(planes.dtype)
    feats = []
    for k, (a, b) in enumerate(ff.EG3D_AXES):
        grid = torch.stack((grid_xyz[..., a], grid_xyz[..., b]), -1).unsqueeze(1)
        feats.append(F.grid_sample(planes[:, k], grid, align_corners=False).squeeze(2).transpose(1, 2))
    stacked = torch.stack(feats, 2)
    return stacked.mean(2) if reduce == "mean" else stacked.prod(2)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_float64(backend, device):
    planes, xyz = make_inputs(dtype=torch.float64, device=device)
    assert_matches_reference(backend, planes, xyz, atol=1e-12, rtol=1e-10, reduce="prod", padding="border")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gradcheck(backend, device):
    planes, xyz = make_inputs(B=1, N=4, C=2, H=3, W=4, dtype=torch.float64, device=device, spread=0.9)
    planes.requires_grad_(True)
    xyz.requires_grad_(True)
    for reduce in ("prod", "concat"):
        fn = lambda p, x: ff.triplane_sample(p, x, reduce=reduce, backend=backend)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (planes, xyz), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("reduce", REDUCTIONS)
def test_reference_gradcheck(align_corners, padding, reduce):
    planes, xyz = make_inputs(B=2, N=6, C=2, H=4, W=5, dtype=torch.float64, spread=0.9)
    planes.requires_grad_(True)
    xyz.requires_grad_(True)
    fn = lambda p, x: triplane_sample_reference(p, x, reduce=reduce, align_corners=align_corners, padding=padding)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (planes, xyz), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_double_backward_xyz(backend, device):
    """Eikonal / R1-style penalties differentiate the gradient w.r.t. xyz once more."""
    planes, xyz = make_inputs(B=1, N=9, device=device, dtype=torch.float64, spread=0.9)

    def second_order(fn, **kwargs):
        p = planes.detach().requires_grad_(True)
        x = xyz.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(p, x, reduce="prod", **kwargs).square().sum(), x, create_graph=True)
        return torch.autograd.grad(g.square().sum(), (p, x))

    for g, w in zip(second_order(ff.triplane_sample, backend=backend), second_order(reference)):
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_opcheck(backend, device):
    planes, xyz = make_inputs(B=1, N=6, C=3, H=4, W=5, device=device)
    planes.requires_grad_(True)
    xyz.requires_grad_(True)
    for reduce in ("concat", "prod"):
        args = (planes, xyz, [0, 1, 0, 2, 2, 0], reduce, False, "zeros", backend)
        torch.library.opcheck(torch.ops.fastfields.triplane_sample.default, args)
        grad = torch.randn(output_shape(planes, xyz, reduce), device=device)
        bwd_args = (grad, planes.detach(), xyz.detach(), [0, 1, 0, 2, 2, 0], reduce, False, "zeros", backend, True, True)
        torch.library.opcheck(torch.ops.fastfields.triplane_sample_backward.default, bwd_args)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_torch_compile_fullgraph(backend, device):
    planes, xyz = make_inputs(B=1, N=10, device=device)

    def loss(p, x):
        feats = ff.triplane_sample(p, x, reduce="concat", axes=ff.LRM_AXES, backend=backend)
        return (feats * 2).square().sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    got = run(lambda p, x: compiled(p, x).reshape(1), planes, xyz)
    want = run(lambda p, x: loss(p, x).reshape(1), planes, xyz)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# Bad input: a clear error that names the argument.


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda p, x: (p[0], x), ValueError, "planes must be a 5-D tensor"),
        (lambda p, x: (p[:, :2], x), ValueError, "planes must have shape [B, 3, C, H, W]"),
        (lambda p, x: (p, x[..., :2]), ValueError, "xyz must have shape [B, N, 3]"),
        (lambda p, x: (p, x[0]), ValueError, "xyz must be a 3-D tensor"),
        (lambda p, x: (p, x[:1]), ValueError, "xyz batch size 1 does not match planes batch size 2"),
        (lambda p, x: (p.half(), x.double()), TypeError, "xyz must have the dtype of planes"),
        (lambda p, x: (p.int(), x), TypeError, "planes must be float32"),
        (lambda p, x: (p, x.long()), TypeError, "xyz must be float32"),
        (lambda p, x: (p.numpy(), x), TypeError, "planes must be a torch.Tensor"),
        (lambda p, x: (p[..., :0], x), ValueError, "C, H and W >= 1"),
        (lambda p, x: (p, x.to("meta")), ValueError, "xyz is on meta but planes is on cpu"),
    ],
)
def test_bad_input(make, error, words):
    planes, xyz = make(*make_inputs())
    with pytest.raises(error, match=None) as info:
        ff.triplane_sample(planes, xyz)
    assert words in str(info.value) and "triplane_sample" in str(info.value)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(reduce="max"), "reduce must be one of"),
        (dict(padding="reflection"), "padding must be one of"),
        (dict(align_corners=1), "align_corners must be a bool"),
        (dict(axes=((0, 1), (0, 2))), "axes must be three (u, v) pairs"),
        (dict(axes=((0, 1), (0, 3), (2, 1))), "axes must be three (u, v) pairs"),
        (dict(backend="vulkan"), "backend must be 'auto' or one of"),
    ],
)
def test_bad_options(kwargs, words):
    planes, xyz = make_inputs()
    with pytest.raises((ValueError, TypeError)) as info:
        ff.triplane_sample(planes, xyz, **kwargs)
    assert words in str(info.value)
