"""voxel_sample: every backend against the PyTorch reference, forward and backward."""

import pytest
import torch
import torch.nn.functional as F

from fastfields._op import gather_layout
from fastfields.ops.voxel_sample import output_shape, volume_channels_last, voxel_sample
from fastfields.reference.voxel_sample import voxel_sample_reference

from conftest import backend_params

BACKENDS = backend_params()
# gradcheck evaluates the op hundreds of times: too slow for the Triton interpreter.
NATIVE_BACKENDS = [p for p in BACKENDS if p.values[0] != "triton" or p.values[1] == "cuda"]


def make_inputs(B=2, N=21, C=5, D=4, H=6, W=7, dtype=torch.float32, device="cpu", spread=1.3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    volume = torch.randn(B, C, D, H, W, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    xyz = ((torch.rand(B, N, 3, generator=gen, dtype=torch.float64) * 2 - 1) * spread).to(device=device, dtype=dtype)
    return volume, xyz


def run(fn, volume, xyz, grad_seed=1, **kwargs):
    """Output and gradients (volume, xyz) of fn for a fixed random upstream gradient."""
    volume = volume.detach().requires_grad_(True)
    xyz = xyz.detach().requires_grad_(True)
    out = fn(volume, xyz, **kwargs)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
    out.backward(grad.to(out.device, out.dtype))
    return out.detach(), volume.grad, xyz.grad


def assert_matches_reference(backend, volume, xyz, atol=1e-5, rtol=1e-5, **kwargs):
    got = run(voxel_sample, volume, xyz, backend=backend, **kwargs)
    want = run(voxel_sample_reference, volume, xyz, **kwargs)
    for name, g, w in zip(("output", "grad volume", "grad xyz"), got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        torch.testing.assert_close(g, w, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


def test_reference_is_grid_sample():
    """The contract itself: F.grid_sample on the volume with xyz viewed as a [B, N, 1, 1, 3] grid."""
    volume, xyz = make_inputs()
    for align_corners in (False, True):
        for padding in ("zeros", "border"):
            grid = xyz.view(2, 21, 1, 1, 3)
            want = F.grid_sample(volume, grid, mode="bilinear", padding_mode=padding, align_corners=align_corners)
            got = voxel_sample_reference(volume, xyz, align_corners=align_corners, padding=padding)
            torch.testing.assert_close(got, want.reshape(2, 5, 21).transpose(1, 2), atol=0, rtol=0)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_matches_reference(backend, device, align_corners, padding):
    volume, xyz = make_inputs(device=device)
    assert_matches_reference(backend, volume, xyz, align_corners=align_corners, padding=padding)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize(
    "shape",
    [
        dict(B=1, N=1, C=1, D=1, H=1, W=1),
        dict(B=1, N=1, C=3, D=2, H=2, W=2),
        dict(B=3, N=5, C=7, D=5, H=3, W=4),
        dict(B=1, N=40, C=32, D=8, H=8, W=8),
        dict(B=1, N=6, C=131, D=3, H=2, W=3),  # more than one Triton channel block
    ],
    ids=lambda s: "x".join(f"{k}{v}" for k, v in s.items()),
)
def test_shapes(backend, device, shape):
    volume, xyz = make_inputs(device=device, **shape)
    assert_matches_reference(backend, volume, xyz, padding="border")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_empty(backend, device):
    volume, xyz = make_inputs(N=0, device=device)
    out, grad_volume, grad_xyz = run(voxel_sample, volume, xyz, backend=backend)
    assert out.shape == (2, 0, 5) and grad_xyz.shape == (2, 0, 3)
    assert torch.count_nonzero(grad_volume) == 0
    volume, xyz = make_inputs(B=0, device=device)
    assert voxel_sample(volume, xyz, backend=backend).shape == (0, 21, 5)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_edges_outside_and_non_finite(backend, device, padding):
    volume, xyz = make_inputs(B=1, N=10, device=device)
    xyz[0, 0] = torch.tensor([1.0, -1.0, 1.0])  # exactly on the box corners
    xyz[0, 1] = torch.tensor([5.0, -7.0, 0.25])  # far outside
    xyz[0, 2] = torch.tensor([1e20, -1e20, 3e9])  # would overflow an int conversion
    xyz[0, 3] = torch.tensor([float("nan"), 0.0, 0.0])
    xyz[0, 4] = torch.tensor([0.0, float("inf"), 0.0])
    xyz[0, 5] = torch.tensor([0.0, 0.0, -float("inf")])
    xyz[0, 6] = torch.tensor([1.0 + 1e-7, -1.0 - 1e-7, 0.999])
    xyz[0, 7] = torch.tensor([0.0, 1.1, -1.05])  # just outside along H and D only
    for align_corners in (False, True):
        assert_matches_reference(backend, volume, xyz, padding=padding, align_corners=align_corners)
    out, grad_volume, grad_xyz = run(voxel_sample, volume, xyz, backend=backend, padding=padding)
    assert torch.isfinite(out).all() and (out[0, 3:6] == 0).all()
    assert torch.isfinite(grad_volume).all() and (grad_xyz[0, 3:6] == 0).all()


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.values[0] == "cpu"])
@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_many_incoherent_points(backend, device, padding):
    """Over 2^14 random points on volumes of over 512 KB: the CPU backward processes them in a
    spatial (Morton) order per batch (csrc/include/fastfields/cpu_gather.h) and must still read
    each point's upstream gradient and write its gradient at the point's own index."""
    volume, xyz = make_inputs(B=2, N=2**13 + 29, C=8, D=24, H=28, W=32, spread=1.05, device=device)
    xyz[0, 5, 1] = float("nan")
    xyz[1, 9, 2] = float("inf")
    for v in (volume, volume_channels_last(volume)):
        assert_matches_reference(backend, v, xyz, padding=padding, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_strided_inputs(backend, device):
    volume, xyz = make_inputs(device=device)
    gen = torch.Generator().manual_seed(2)  # not the global RNG: its state depends on the tests before
    wide_xyz = torch.randn(2, 21, 7, generator=gen).to(device)
    xyz_view = wide_xyz[..., 1:7:2]  # non-contiguous view
    xyz_view.copy_(xyz)
    assert not xyz_view.is_contiguous()
    channels_last = volume_channels_last(volume)
    assert channels_last.stride(1) == 1 and torch.equal(channels_last, volume)
    sliced = torch.randn(2, 11, 4, 6, 7, generator=gen).to(device)[:, 3:8]  # non-contiguous along C
    transposed = volume.transpose(2, 4).contiguous().transpose(2, 4)  # W-major storage
    for v in (channels_last, sliced, transposed):
        assert_matches_reference(backend, v, xyz_view, padding="border")


def test_gather_layout():
    """The ops hand their kernels a channels-last copy of a grid only when its texels will be read
    at least once each on average (fastfields._op.gather_layout)."""
    volume = torch.randn(2, 5, 4, 6, 7)  # 2 * 4 * 6 * 7 = 336 texels
    assert gather_layout(volume, 1, 335) is volume
    copied = gather_layout(volume, 1, 336)
    assert copied.shape == volume.shape and copied.stride(1) == 1 and torch.equal(copied, volume)
    channels_last = volume_channels_last(volume)
    assert gather_layout(channels_last, 1, 10**6) is channels_last
    one_channel = torch.randn(2, 1, 4, 6, 7)
    assert gather_layout(one_channel, 1, 10**6) is one_channel


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_standard_layout_few_and_many_points(backend, device):
    # 8 taps x 2 x 3 points < 336 texels: the volume is read as it is; with 400 points it is
    # gathered channels-last first. Either way the gradient comes back in the volume's layout.
    for n in (3, 400):
        volume, xyz = make_inputs(N=n, device=device)
        assert_matches_reference(backend, volume, xyz)
        _, grad_volume, _ = run(voxel_sample, volume, xyz, backend=backend)
        assert grad_volume.stride() == volume.stride()


def test_volume_channels_last():
    volume = torch.randn(2, 5, 3, 4, 6)
    for v in (volume, volume[0]):
        cl = volume_channels_last(v)
        assert torch.equal(cl, v) and cl.stride(-4) == 1
    assert volume_channels_last(volume).stride() == volume.contiguous(memory_format=torch.channels_last_3d).stride()
    with pytest.raises(ValueError, match="volume must be"):
        volume_channels_last(volume[0, 0])


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gradient_layout_follows_volume(backend, device):
    volume, xyz = make_inputs(device=device)
    for v in (volume_channels_last(volume), volume):
        v = v.detach().requires_grad_(True)
        voxel_sample(v, xyz, backend=backend).sum().backward()
        assert v.grad.stride() == v.stride()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_only_one_input_needs_grad(backend, device):
    volume, xyz = make_inputs(device=device)
    volume.requires_grad_(True)
    voxel_sample(volume, xyz, backend=backend).sum().backward()
    want = volume.detach().requires_grad_(True)
    voxel_sample_reference(want, xyz).sum().backward()
    torch.testing.assert_close(volume.grad, want.grad, atol=1e-5, rtol=1e-5)

    xyz.requires_grad_(True)
    (grad_xyz,) = torch.autograd.grad(voxel_sample(volume.detach(), xyz, backend=backend).sum(), xyz)
    (want_xyz,) = torch.autograd.grad(voxel_sample_reference(volume.detach(), xyz).sum(), xyz)
    torch.testing.assert_close(grad_xyz, want_xyz, atol=1e-5, rtol=1e-5)


def eager_in_dtype(volume, xyz):
    """What model code does today (EG3D / DiffRF sample_from_3dgrid), all in the volume's dtype."""
    B, N = xyz.shape[:2]
    grid = xyz.to(volume.dtype).reshape(B, 1, 1, N, 3)
    sampled = F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return sampled.permute(0, 4, 3, 2, 1).reshape(B, N, volume.shape[1])


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("xyz_dtype", ["same", "float32"])
def test_half_precision(backend, device, dtype, xyz_dtype):
    """The flash-attention rule: our error against a float32 reference is at most about twice
    that of the eager PyTorch code (grid_sample on the 5-D volume) run in the same dtype."""
    volume32, xyz32 = make_inputs(B=1, N=40, C=16, D=5, H=9, W=8, device=device)
    volume = volume_channels_last(volume32.to(dtype))
    xyz = xyz32.to(dtype) if xyz_dtype == "same" else xyz32
    want = run(voxel_sample_reference, volume.float(), xyz.float())
    got = run(voxel_sample, volume, xyz, backend=backend)
    eager = run(eager_in_dtype, volume, xyz)
    for name, g, e, w in zip(("output", "grad volume", "grad xyz"), got, eager, want):
        assert g.dtype == (volume.dtype if name != "grad xyz" else xyz.dtype), name
        ours = (g.double() - w.double()).abs().max().item()
        theirs = (e.double() - w.double()).abs().max().item()
        assert ours <= 2 * theirs + 1e-3 * w.abs().max().item(), f"{name}: {ours} vs eager {theirs}"


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_float64(backend, device):
    volume, xyz = make_inputs(dtype=torch.float64, device=device)
    for padding in ("zeros", "border"):
        assert_matches_reference(backend, volume, xyz, atol=1e-12, rtol=1e-10, padding=padding, align_corners=True)


@pytest.mark.parametrize("backend,device", NATIVE_BACKENDS)
def test_gradcheck(backend, device):
    volume, xyz = make_inputs(B=1, N=4, C=2, D=2, H=3, W=3, dtype=torch.float64, device=device, spread=0.9)
    volume.requires_grad_(True)
    xyz.requires_grad_(True)
    for padding in ("zeros", "border"):
        fn = lambda v, x: voxel_sample(v, x, padding=padding, backend=backend)  # noqa: E731
        # GPU backends scatter with atomics: two backward passes may differ in the last bits.
        assert torch.autograd.gradcheck(fn, (volume, xyz), eps=1e-6, atol=1e-6, nondet_tol=1e-12)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_reference_gradcheck(align_corners, padding):
    volume, xyz = make_inputs(B=2, N=3, C=2, D=2, H=3, W=2, dtype=torch.float64, spread=0.9)
    volume.requires_grad_(True)
    xyz.requires_grad_(True)
    fn = lambda v, x: voxel_sample_reference(v, x, align_corners=align_corners, padding=padding)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (volume, xyz), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradgradcheck(fn, (volume, xyz), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_double_backward_xyz(backend, device):
    """Eikonal / R1-style penalties differentiate the gradient w.r.t. xyz once more."""
    volume, xyz = make_inputs(B=1, N=9, device=device, dtype=torch.float64, spread=0.9)

    def second_order(fn, **kwargs):
        v = volume.detach().requires_grad_(True)
        x = xyz.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(v, x, **kwargs).square().sum(), x, create_graph=True)
        return torch.autograd.grad(g.square().sum(), (v, x))

    for g, w in zip(second_order(voxel_sample, backend=backend), second_order(voxel_sample_reference)):
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_opcheck(backend, device):
    volume, xyz = make_inputs(B=1, N=6, C=3, D=3, H=4, W=5, device=device)
    volume.requires_grad_(True)
    xyz.requires_grad_(True)
    torch.library.opcheck(torch.ops.fastfields.voxel_sample.default, (volume, xyz, False, "border", backend))
    grad = torch.randn(output_shape(volume, xyz), device=device)
    bwd_args = (grad, volume.detach(), xyz.detach(), True, "zeros", backend, True, True)
    torch.library.opcheck(torch.ops.fastfields.voxel_sample_backward.default, bwd_args)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_torch_compile_fullgraph(backend, device):
    volume, xyz = make_inputs(B=1, N=10, device=device)

    def loss(v, x):
        return (voxel_sample(v, x, padding="border", backend=backend) * 2).square().sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    got = run(lambda v, x: compiled(v, x).reshape(1), volume, xyz)
    want = run(lambda v, x: loss(v, x).reshape(1), volume, xyz)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# Bad input: a clear error that names the argument.


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda v, x: (v[0], x), ValueError, "volume must be a 5-D tensor"),
        (lambda v, x: (v, x[..., :2]), ValueError, "xyz must have shape [B, N, 3]"),
        (lambda v, x: (v, x[0]), ValueError, "xyz must be a 3-D tensor"),
        (lambda v, x: (v, x[:1]), ValueError, "xyz batch size 1 does not match volume batch size 2"),
        (lambda v, x: (v.half(), x.double()), TypeError, "xyz must have the dtype of volume"),
        (lambda v, x: (v.int(), x), TypeError, "volume must be float32"),
        (lambda v, x: (v, x.long()), TypeError, "xyz must be float32"),
        (lambda v, x: (v.numpy(), x), TypeError, "volume must be a torch.Tensor"),
        (lambda v, x: (v[:, :0], x), ValueError, "C, D, H and W >= 1"),
        (lambda v, x: (v[..., :0], x), ValueError, "C, D, H and W >= 1"),
        (lambda v, x: (v, x.to("meta")), ValueError, "xyz is on meta but volume is on cpu"),
    ],
)
def test_bad_input(make, error, words):
    volume, xyz = make(*make_inputs())
    with pytest.raises(error) as info:
        voxel_sample(volume, xyz)
    assert words in str(info.value) and "voxel_sample" in str(info.value)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(padding="reflection"), "padding must be one of"),
        (dict(align_corners=1), "align_corners must be a bool"),
        (dict(backend="vulkan"), "backend must be 'auto' or one of"),
    ],
)
def test_bad_options(kwargs, words):
    volume, xyz = make_inputs()
    with pytest.raises((ValueError, TypeError)) as info:
        voxel_sample(volume, xyz, **kwargs)
    assert words in str(info.value)
