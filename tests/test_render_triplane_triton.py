"""The Triton kernels of render_triplane against the unfused reference (backend="torch"):
forward outputs and gradients to the planes and every decoder parameter, over the layouts the
kernels specialise on (axes presets, concat / sum / mean, channel blocks with masked tails,
padded hidden and output widths, no / several hidden layers), both compositing modes, every
density, hidden and colour activation, samplers, half planes, early termination, edge sizes."""

import pytest
import torch
import torch.nn.functional as F

import fastfields as ff
from fastfields.nn import TriplaneDecoder

from conftest import backend_params

TRITON = [p for p in backend_params() if p.values[0] == "triton"]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def make_scene(B=1, R=24, C=8, H=16, W=16, dtype=torch.float32, decoder=None, seed=0, bias_std=0.5):
    """Planes, rays from (0.3, -2, 0.2) into the box [-1, 1]^3 (rays 0 and 1 of each batch
    element miss it) and a decoder with non-zero biases, so densities are neither 0 nor saturated."""
    gen = _gen(seed)
    planes = (torch.randn(B, 3, C, H, W, generator=gen) * 1.5).to(dtype)
    target = torch.randn(B, R, 3, generator=gen) * 0.6
    rays_o = torch.tensor([0.3, -2.0, 0.2]).expand(B, R, 3).clone()
    rays_d = F.normalize(target - rays_o, dim=-1)
    rays_d[:, :2] = F.normalize(torch.tensor([1.0, 0.2, 0.0]), dim=0)
    if decoder is None:
        decoder = TriplaneDecoder(3 * C, 16, n_layers=4, out_features=4)
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in decoder.linears:
            layer.bias.normal_(0.0, bias_std)
    return planes, rays_o, rays_d, decoder


def render_with_grads(planes, rays_o, rays_d, decoder, backend, seed=None, **kwargs):
    """Outputs and the gradients (planes, then the decoder parameters) of a fixed random loss
    on rgb, depth and opacity."""
    planes = planes.detach().clone().requires_grad_(True)
    decoder.zero_grad()
    generator = None if seed is None else _gen(seed)
    out = ff.render_triplane(planes, rays_o, rays_d, decoder, backend=backend, generator=generator, **kwargs)
    rgb, depth, opacity, _ = out
    gen = _gen(11)
    loss = ((rgb.float() * torch.randn(rgb.shape, generator=gen).to(rgb.device)).sum()
            + (depth.float() * torch.randn(depth.shape, generator=gen).to(rgb.device)).sum()
            + (opacity.float() * torch.randn(opacity.shape, generator=gen).to(rgb.device)).sum())
    loss.backward()
    grads = [planes.grad] + [p.grad for p in decoder.parameters()]
    return [None if o is None else o.detach().cpu() for o in out], [g.detach().cpu().clone() for g in grads]


def check_against_reference(device, planes, rays_o, rays_d, decoder, seed=None, grad_rtol=1e-3, grad_atol=1e-4,
                            **kwargs):
    planes, rays_o, rays_d, decoder = planes.to(device), rays_o.to(device), rays_d.to(device), decoder.to(device)
    want_out, want_grads = render_with_grads(planes, rays_o, rays_d, decoder, "torch", seed=seed, **kwargs)
    got_out, got_grads = render_with_grads(planes, rays_o, rays_d, decoder, "triton", seed=seed, **kwargs)
    for name, got, want in zip(("rgb", "depth", "opacity", "weights"), got_out, want_out):
        assert (got is None) == (want is None), name
        if want is not None:
            assert got.shape == want.shape and got.dtype == want.dtype, name
            torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5, msg=lambda m: f"{name}: {m}")
    names = ["planes"] + [name for name, _ in decoder.named_parameters()]
    for name, got, want in zip(names, got_grads, want_grads):
        assert got.abs().max() > 0 or want.abs().max() == 0, name
        torch.testing.assert_close(got, want, rtol=grad_rtol, atol=grad_atol, msg=lambda m: f"grad {name}: {m}")
    return want_out


@pytest.mark.parametrize("backend,device", TRITON)
def test_openlrm_concat_two_tiles(backend, device):
    # OpenLRM's layout and decoder shape (hidden 64, two hidden layers): C = 40 reads three channel
    # blocks of 16 (the last half masked); R = 40 makes a full and a partial tile of rays.
    C = 40
    decoder = TriplaneDecoder(3 * C, 64, n_layers=4, out_features=4)
    planes, rays_o, rays_d, decoder = make_scene(R=40, C=C, H=12, W=10, decoder=decoder, bias_std=0.3)
    out = check_against_reference(device, planes, rays_o, rays_d, decoder, n_samples=6, return_weights=True,
                                   background=1.0)
    opacity = out[2]
    assert torch.all(opacity[:, :2] == 0) and (opacity[:, 2:] > 0.05).float().mean() > 0.5


@pytest.mark.parametrize("backend,device", TRITON)
def test_eg3d_mean_no_hidden_layer_importance_perturbed_batch(backend, device):
    # EG3D: mean of the planes, softplus decoder without hidden layers (L = 0), 1 + 20 outputs
    # (padded to 32), planes' zero padding outside the box, fixed bounds, two-pass jittered
    # sampling, two batch elements (their own planes).
    C = 12
    decoder = TriplaneDecoder(C, 32, n_layers=2, out_features=1 + 20, activation="softplus")
    planes, rays_o, rays_d, decoder = make_scene(B=2, R=20, C=C, decoder=decoder)
    check_against_reference(device, planes, rays_o, rays_d, decoder, seed=5, axes=ff.EG3D_AXES, reduce="mean",
                            near=1.2, far=2.9, mask_outside=False, n_samples=6, n_importance=5, perturb=True,
                            return_weights=True)


@pytest.mark.parametrize("backend,device", TRITON)
def test_nerf_xyz_sum_silu_exp_border_align_corners(backend, device):
    # TripoSR-like: XYZ planes, nerf mode with exp density, SiLU decoder of width 24 (padded to 32)
    # with three hidden layers, plain sigmoid; plus the sum reduce, border padding, align_corners.
    C = 5
    decoder = TriplaneDecoder(C, 24, n_layers=5, out_features=4, activation="silu", color_activation="sigmoid")
    planes, rays_o, rays_d, decoder = make_scene(R=20, C=C, decoder=decoder)
    check_against_reference(device, planes, rays_o, rays_d, decoder, seed=2, axes=ff.XYZ_AXES, reduce="sum",
                            mode="nerf", density_activation="exp", density_bias=-1.0, padding="border",
                            align_corners=True, n_samples=7, perturb=True, return_weights=True)


@pytest.mark.parametrize("density", ["none", "relu", "trunc_exp"])
@pytest.mark.parametrize("backend,device", TRITON)
def test_density_activations_and_raw_colour(backend, device, density):
    # Two outputs (density + one channel, padded to 16), colour without activation.
    C = 4
    decoder = TriplaneDecoder(3 * C, 16, n_layers=3, out_features=2, color_activation="none")
    planes, rays_o, rays_d, decoder = make_scene(R=16, C=C, decoder=decoder, seed=3)
    bias = {"none": 1.0, "relu": 0.5, "trunc_exp": -1.0}[density]
    check_against_reference(device, planes, rays_o, rays_d, decoder, mode="nerf", density_activation=density,
                            density_bias=bias, distance_scale=0.7, n_samples=6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend,device", TRITON)
def test_half_planes(backend, device, dtype):
    # Both paths read the same half values in float32: the outputs agree to float32 rounding
    # before their cast to the planes' dtype; the plane gradients come back in that dtype.
    planes, rays_o, rays_d, decoder = make_scene(R=16, C=4, dtype=dtype)
    planes, rays_o, rays_d, decoder = planes.to(device), rays_o.to(device), rays_d.to(device), decoder.to(device)
    want_out, want_grads = render_with_grads(planes, rays_o, rays_d, decoder, "torch", n_samples=6)
    got_out, got_grads = render_with_grads(planes, rays_o, rays_d, decoder, "triton", n_samples=6)
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    for got, want in zip(got_out[:3], want_out[:3]):
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)
    assert got_grads[0].dtype == dtype
    for got, want in zip(got_grads, want_grads):
        torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("mode", ["eg3d", "nerf"])
@pytest.mark.parametrize("backend,device", TRITON)
def test_early_termination_matches_reference(backend, device, mode):
    # Dense planes so most rays stop well before their last sample: the tile stops when all have.
    planes, rays_o, rays_d, decoder = make_scene(R=20, C=4)
    planes, rays_o, rays_d, decoder = planes.to(device), rays_o.to(device), rays_d.to(device), decoder.to(device)
    with torch.no_grad():
        decoder.linears[-1].bias[0] = 3.0
        kwargs = dict(n_samples=10, mode=mode, return_weights=True, t_threshold=0.2, background=0.5)
        want = ff.render_triplane(planes, rays_o, rays_d, decoder, backend="torch", **kwargs)
        got = ff.render_triplane(planes, rays_o, rays_d, decoder, backend="triton", **kwargs)
        full = ff.render_triplane(planes, rays_o, rays_d, decoder, backend="torch", **dict(kwargs, t_threshold=0.0))
    stopped = (want[3] == 0) & (full[3] > 0)
    assert stopped.sum() > 10  # the threshold did cut rays short
    for got_x, want_x in zip(got, want):
        torch.testing.assert_close(got_x.cpu(), want_x.cpu(), rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("backend,device", TRITON)
def test_no_rays(backend, device):
    planes, rays_o, rays_d, decoder = make_scene(B=2, R=4, C=4)
    planes, decoder = planes.to(device).requires_grad_(True), decoder.to(device)
    rays = torch.zeros(2, 0, 3, device=device)
    rgb, depth, opacity, weights = ff.render_triplane(planes, rays, rays, decoder, n_samples=5, return_weights=True,
                                                      backend="triton")
    assert rgb.shape == (2, 0, 3) and depth.shape == (2, 0) and opacity.shape == (2, 0) and weights.shape == (2, 0, 4)
    (rgb.sum() + depth.sum() + opacity.sum()).backward()
    assert planes.grad.shape == planes.shape and torch.all(planes.grad == 0)
    assert all(torch.all(p.grad == 0) for p in decoder.parameters())


def _launcher_args(C=4, H=5, W=6, R=3, S=4, hidden=16, n_hidden=1, out=4):
    B = 1
    planes_cl = torch.randn(B, 3, H, W, C)
    rays = torch.randn(B, R, 3)
    t = torch.linspace(1.0, 3.0, S).expand(B, R, S).contiguous()
    mlp = (torch.randn(hidden, 3 * C), torch.randn(hidden), torch.randn(n_hidden, hidden, hidden),
           torch.randn(n_hidden, hidden), torch.randn(out, hidden), torch.randn(out))
    options = ([0, 1, 0, 2, 2, 1], 0, False, 0, 1.0, 0, 0, 1, 2, -1.0, 1.0, True, 0.0, False)
    return planes_cl, rays, rays.clone(), t, None, mlp, options


def test_launchers_reject_bad_arguments():
    pytest.importorskip("triton")
    from fastfields.kernels.render_triplane import render_triplane_bwd, render_triplane_fwd

    planes_cl, rays_o, rays_d, t, deltas, mlp, options = _launcher_args()
    with pytest.raises(ValueError, match="first_w must be float32"):
        render_triplane_fwd(planes_cl, rays_o, rays_d, t, deltas, mlp[0][:, :5], *mlp[1:], *options)
    with pytest.raises(ValueError, match="rays_d must be float32"):
        render_triplane_fwd(planes_cl, rays_o, rays_d[:, :2], t, deltas, *mlp, *options)
    nerf = list(options)
    nerf[7] = 0
    with pytest.raises(ValueError, match="mode nerf needs deltas"):
        render_triplane_fwd(planes_cl, rays_o, rays_d, t, None, *mlp, *nerf)
    with pytest.raises(TypeError, match="planes_cl must be float32, float16 or bfloat16"):
        render_triplane_fwd(planes_cl.double(), rays_o, rays_d, t, deltas, *mlp, *options)
    grads = (torch.zeros(1, 3, 3), torch.zeros(1, 3), torch.zeros(1, 3), torch.zeros(1, 3))
    threshold = list(options)
    threshold[12] = 0.5
    with pytest.raises(ValueError, match="t_threshold must be 0"):
        render_triplane_bwd(*grads, planes_cl, rays_o, rays_d, t, deltas, *mlp, *threshold)
    with pytest.raises(ValueError, match="grad_rgb must be float32"):
        render_triplane_bwd(torch.zeros(1, 3, 2), *grads[1:], planes_cl, rays_o, rays_d, t, deltas, *mlp, *options)


@pytest.mark.parametrize("backend,device", TRITON)
def test_channel_blocks_without_tail(backend, device):
    # C = 16 fills its channel block exactly: the kernels' unmasked channel path (C % BLOCK_C == 0,
    # as OpenLRM's C = 80), here with a hidden width that needs no padding either.
    C = 16
    decoder = TriplaneDecoder(3 * C, 16, n_layers=3, out_features=4)
    planes, rays_o, rays_d, decoder = make_scene(R=16, C=C, H=8, W=8, decoder=decoder, bias_std=0.3)
    check_against_reference(device, planes, rays_o, rays_d, decoder, n_samples=5)


@pytest.mark.parametrize("reduce", [0, 2])
def test_decoder_packing_round_trip(reduce):
    # The launchers hand the kernels the decoder transposed and zero-padded, and read the weight
    # gradients back from padded replicas: every entry must land where the kernels index it.
    pytest.importorskip("triton")
    from fastfields.kernels.render_triplane import _Packing

    C, HD, O, L = 5, 24, 3, 2
    n_planes = 3 if reduce == 0 else 1
    pk = _Packing(C, HD, O, L, reduce)
    assert (pk.block_c, pk.ncb, pk.cp, pk.hd_p, pk.o_p) == (16, 1, 16, 32, 16)
    gen = _gen(4)
    params = (torch.randn(HD, n_planes * C, generator=gen), torch.randn(HD, generator=gen),
              torch.randn(L, HD, HD, generator=gen), torch.randn(L, HD, generator=gen),
              torch.randn(O, HD, generator=gen), torch.randn(O, generator=gen))
    w1t, b1, hwt, hb, lwt, lb = pk.pack(*params)
    first_w, first_b, hidden_w, hidden_b, last_w, last_b = params
    for k in range(n_planes):
        torch.testing.assert_close(w1t[k, :C, :HD], first_w[:, k * C:(k + 1) * C].t(), rtol=0, atol=0)
    torch.testing.assert_close(hwt[:L, :HD, :HD], hidden_w.transpose(1, 2), rtol=0, atol=0)
    torch.testing.assert_close(lwt[:HD, :O], last_w.t(), rtol=0, atol=0)
    for packed, real in ((b1, first_b), (hb, hidden_b), (lb, last_b)):
        torch.testing.assert_close(packed[..., :real.shape[-1]], real, rtol=0, atol=0)
    # The padding is exactly zero, so padded lanes stay zero through every layer.
    padded_sum = sum(float(x.abs().sum()) for x in (w1t, b1, hwt, hb, lwt, lb))
    assert padded_sum == pytest.approx(sum(float(p.abs().sum()) for p in params), rel=1e-6)

    # Two replicas in the kernels' gradient layouts (dW1 [NP, HD_P, CP], dW_i [out, in],
    # dW_last [O_P, HD_P]) sum and unpad to the parameters' shapes.
    ws = pk.workspaces(2, "cpu")
    grads = [torch.randn(p.shape, generator=gen) for p in params]
    for r, scale in ((0, 0.25), (1, 0.75)):
        for k in range(n_planes):
            ws[0][r, k, :HD, :C] = scale * grads[0][:, k * C:(k + 1) * C]
        ws[1][r, :HD] = scale * grads[1]
        ws[2][r, :L, :HD, :HD] = scale * grads[2]
        ws[3][r, :L, :HD] = scale * grads[3]
        ws[4][r, :O, :HD] = scale * grads[4]
        ws[5][r, :O] = scale * grads[5]
    for got, want in zip(pk.unpack_grads(ws), grads):
        assert got.shape == want.shape and got.is_contiguous()
        torch.testing.assert_close(got, want)


def test_launchers_reject_planes_beyond_int32_offsets():
    pytest.importorskip("triton")
    from fastfields.kernels.render_triplane import render_triplane_fwd

    # Shapes only (meta tensors): the check runs before any memory is touched.
    planes_cl = torch.empty(1, 3, 1 << 15, 1 << 15, 2, device="meta")
    rays = torch.zeros(1, 3, 3)
    t = torch.linspace(1.0, 3.0, 4).expand(1, 3, 4).contiguous()
    mlp = (torch.zeros(16, 6), torch.zeros(16), torch.zeros(0, 16, 16), torch.zeros(0, 16), torch.zeros(4, 16),
           torch.zeros(4))
    options = ([0, 1, 0, 2, 2, 1], 0, False, 0, 1.0, 0, 0, 1, 2, -1.0, 1.0, True, 0.0, False)
    with pytest.raises(ValueError, match="32-bit texel offsets"):
        render_triplane_fwd(planes_cl, rays, rays, t, None, *mlp, *options)
