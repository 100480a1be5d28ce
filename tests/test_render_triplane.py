"""render_triplane: the unfused reference against OpenLRM's renderer written out by hand, and every
fused backend against the reference (forward and gradients) across conventions and sampling."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fastfields as ff
from fastfields.nn import TriplaneDecoder
from fastfields.ops.render_triplane import IMPLEMENTED
from fastfields.reference.render_triplane import decode_reference, render_pass_reference

from conftest import backend_params

BACKENDS = [p for p in backend_params() if p.values[0] in IMPLEMENTED]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def make_scene(B=1, R=24, C=8, H=12, W=10, dtype=torch.float32, seed=0, decoder=None, spread=0.35):
    """Planes, rays around an orbit camera at distance 2 looking at the box [-1, 1]^3 (some miss it),
    and an OpenLRM-style decoder with non-zero biases (so densities are neither 0 nor saturated)."""
    gen = _gen(seed)
    planes = (torch.randn(B, 3, C, H, W, generator=gen) * 1.5).to(dtype)
    origin = torch.tensor([0.3, -2.0, 0.2])
    target = torch.randn(B, R, 3, generator=gen) * spread * 2
    rays_o = origin.expand(B, R, 3).clone()
    rays_d = F.normalize(target - rays_o, dim=-1)
    rays_d[:, :2] = F.normalize(torch.tensor([1.0, 0.2, 0.0]), dim=0)  # parallel to the box's front: misses
    if decoder is None:
        decoder = TriplaneDecoder(3 * C, 16, n_layers=4, out_features=4)
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in decoder.linears:
            layer.bias.normal_(0.0, 0.5)
    return planes, rays_o, rays_d, decoder


# ---------------------------------------------------------------------------------------
# The reference against OpenLRM's renderer, written out as OpenLRM does it.


def openlrm_render(planes, rays_o, rays_d, decoder, n_samples, background):
    """OpenLRM v1.1's ImportanceRenderer coarse pass (no importance, no jitter), transcribed:
    ray-box 'auto' bounds, linspace depths, grid_sample of (xy, xz, zy) planes, plane-major
    concat, OSGDecoder, out-of-box samples -> sigma -finfo.max / 8, MipRayMarcher2."""
    B, R, _ = rays_o.shape
    t_near, t_far, hit = ff.rendering.ray_aabb_intersect(rays_o, rays_d, (-1, -1, -1, 1, 1, 1))
    s = torch.linspace(0, 1, n_samples)
    t = t_near[..., None] + s * (t_far - t_near)[..., None]  # [B, R, S]
    points = rays_o[..., None, :] + t[..., None] * rays_d[..., None, :]  # [B, R, S, 3]
    coords = points.reshape(B, -1, 3)
    feats = []
    for a, b in ((0, 1), (0, 2), (2, 1)):
        grid = coords[..., [a, b]].unsqueeze(1)
        feats.append(F.grid_sample(planes[:, len(feats)], grid, align_corners=False).squeeze(2).transpose(1, 2))
    x = torch.cat(feats, dim=-1)
    out = decoder.net(x)
    sigma = out[..., 0]
    rgb = torch.sigmoid(out[..., 1:]) * (1 + 2 * 0.001) - 0.001
    out_box = (coords.abs() > 1).any(-1)
    sigma = sigma.masked_fill(out_box, -torch.finfo(sigma.dtype).max / 8)
    rgb = rgb.masked_fill(out_box[..., None], 0.0)
    sigma, rgb = sigma.reshape(B, R, -1), rgb.reshape(B, R, n_samples, -1)
    deltas = t[..., 1:] - t[..., :-1]
    colors_mid = (rgb[..., :-1, :] + rgb[..., 1:, :]) / 2
    densities_mid = F.softplus((sigma[..., :-1] + sigma[..., 1:]) / 2 - 1)
    depths_mid = (t[..., :-1] + t[..., 1:]) / 2
    alpha = 1 - torch.exp(-densities_mid * deltas)
    alpha_shifted = torch.cat([torch.ones_like(alpha[..., :1]), 1 - alpha + 1e-10], -1)
    weights = alpha * torch.cumprod(alpha_shifted, -1)[..., :-1]
    rgb_out = (weights[..., None] * colors_mid).sum(-2)
    opacity = weights.sum(-1)
    depth = (weights * depths_mid).sum(-1)
    return rgb_out + (1 - opacity[..., None]) * background, depth, opacity, hit


def test_reference_is_openlrm_renderer():
    planes, rays_o, rays_d, decoder = make_scene(R=32)
    with torch.no_grad():
        expected_rgb, expected_depth, expected_opacity, hit = openlrm_render(planes, rays_o, rays_d, decoder, 16, 1.0)
        rgb, depth, opacity, _ = ff.render_triplane(planes, rays_o, rays_d, decoder, n_samples=16, background=1.0,
                                                    backend="torch")
    assert not hit[0, :2].any() and hit.sum() > 20
    torch.testing.assert_close(rgb, expected_rgb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(depth, expected_depth, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(opacity, expected_opacity, rtol=1e-5, atol=1e-5)
    assert (opacity[0, 2:] > 0.05).any()
    # Rays that miss: the background, zero depth and opacity.
    assert torch.all(rgb[0, :2] == 1.0) and torch.all(depth[0, :2] == 0) and torch.all(opacity[0, :2] == 0)


def test_openlrm_rendering_kwargs_map_to_the_same_render():
    planes, rays_o, rays_d, decoder = make_scene(R=16)
    openlrm_kwargs = dict(ray_start="auto", ray_end="auto", box_warp=2.0, white_back=True, disparity_space_sampling=False,
                          clamp_mode="softplus", depth_resolution=10, depth_resolution_importance=0)
    options = ff.eg3d_render_options(openlrm_kwargs)
    with torch.no_grad():
        expected = openlrm_render(planes, rays_o, rays_d, decoder, 10, 1.0)
        out = ff.render_triplane(planes, rays_o, rays_d, decoder, backend="torch", **options)
    for got, want in zip(out[:3], expected[:3]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    eg3d = ff.eg3d_render_options(dict(openlrm_kwargs, ray_start=2.25, ray_end=3.3, depth_resolution_importance=48),
                                  convention="eg3d")
    assert (eg3d["near"], eg3d["far"], eg3d["n_importance"], eg3d["axes"], eg3d["reduce"]) == (2.25, 3.3, 48, ff.EG3D_AXES, "mean")
    with pytest.raises(ValueError, match="both be 'auto' or both numbers"):
        ff.eg3d_render_options(dict(openlrm_kwargs, ray_start=2.0))
    with pytest.raises(ValueError, match="clamp_mode 'mipnerf' is not supported"):
        ff.eg3d_render_options(dict(openlrm_kwargs, clamp_mode="mipnerf"))


def test_importance_sampling_is_eg3d_two_pass():
    planes, rays_o, rays_d, decoder = make_scene(R=16)
    S, S_imp = 12, 10
    with torch.no_grad():
        rgb, depth, opacity, w = ff.render_triplane(planes, rays_o, rays_d, decoder, n_samples=S, n_importance=S_imp,
                                                    return_weights=True, backend="torch")
        t_near, t_far, _ = ff.rendering.ray_aabb_intersect(rays_o, rays_d, (-1, -1, -1, 1, 1, 1))
        t = ff.rendering.stratified_samples(t_near, t_far, S)
        options = dict(axes=ff.LRM_AXES, reduce="concat", align_corners=False, padding="zeros", scale=1.0,
                       mode="eg3d", density_activation="softplus", density_bias=-1.0, distance_scale=1.0,
                       mask_outside=True)
        coarse = render_pass_reference(planes, rays_o, rays_d, t, None, decoder, return_weights=True, **options)[3]
        t_mid = (t[..., 1:] + t[..., :-1]) / 2
        fine = ff.rendering.sample_pdf(t_mid[..., :-1], ff.rendering.smooth_weights(coarse)[..., 1:-1], S_imp)
        t_all, _ = ff.rendering.merge_samples(t, fine)
        expected = render_pass_reference(planes, rays_o, rays_d, t_all, None, decoder, return_weights=True, **options)
    assert w.shape == (1, 16, S + S_imp - 1)
    for got, want in zip((rgb, depth, opacity, w), expected):
        torch.testing.assert_close(got, want)


def test_reference_gradcheck_float64():
    planes, rays_o, rays_d, decoder = make_scene(R=6, C=2, H=5, W=4)
    decoder = decoder.double()
    planes = planes.double().requires_grad_(True)
    rays_o, rays_d = rays_o.double(), rays_d.double()
    t_near, t_far, _ = ff.rendering.ray_aabb_intersect(rays_o, rays_d, (-1, -1, -1, 1, 1, 1))
    t = ff.rendering.stratified_samples(t_near, t_far, 5)
    params = [p.detach().requires_grad_(True) for p in decoder.parameters()]  # weight, bias per layer

    def fn(planes, *params):
        decode = lambda x: decode_reference(x, params[0::2], params[1::2], "relu", "sigmoid_clamped")  # noqa: E731
        rgb, depth, opacity, _ = render_pass_reference(
            planes, rays_o, rays_d, t, None, decode, axes=ff.LRM_AXES, reduce="concat", align_corners=False,
            padding="zeros", scale=1.0, mode="eg3d", density_activation="softplus", density_bias=-1.0,
            distance_scale=1.0, mask_outside=True, return_weights=False)
        return rgb, depth, opacity

    assert torch.autograd.gradcheck(fn, (planes, *params))


# ---------------------------------------------------------------------------------------
# Fused backends against the reference.

CONFIGS = {
    # name: (render_triplane kwargs, decoder factory (C -> TriplaneDecoder))
    "openlrm": (dict(), lambda C: TriplaneDecoder(3 * C, 16, n_layers=4, out_features=4)),
    "openlrm-importance": (dict(n_importance=6), lambda C: TriplaneDecoder(3 * C, 16, n_layers=4, out_features=4)),
    "eg3d": (
        dict(axes=ff.EG3D_AXES, reduce="mean", near=1.2, far=2.9, mask_outside=False, n_importance=5),
        lambda C: TriplaneDecoder(C, 16, n_layers=2, out_features=1 + 6, activation="softplus"),
    ),
    "triposr-nerf": (
        dict(axes=ff.XYZ_AXES, mode="nerf", density_activation="exp", density_bias=-1.0, padding="border"),
        lambda C: TriplaneDecoder(3 * C, 16, n_layers=5, out_features=4, activation="silu", color_activation="sigmoid"),
    ),
    "trunc-exp-align-corners": (
        dict(align_corners=True, density_activation="trunc_exp", density_bias=-2.0, distance_scale=0.5, mode="nerf"),
        lambda C: TriplaneDecoder(3 * C, 32, n_layers=3, out_features=3, color_activation="none"),
    ),
}


def _render(planes, rays_o, rays_d, decoder, backend, seed=None, **kwargs):
    generator = None if seed is None else _gen(seed)
    return ff.render_triplane(planes, rays_o, rays_d, decoder, generator=generator, backend=backend, **kwargs)


def _loss(outputs):
    rgb, depth, opacity, _ = outputs
    gen = _gen(7)
    return ((rgb.float() * torch.randn(rgb.shape, generator=gen)).sum() + (depth.float() * 0.3).sum()
            + (opacity.float() * torch.randn(opacity.shape, generator=gen)).sum())


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_fused_matches_reference(backend, device, config):
    kwargs, make_decoder = CONFIGS[config]
    C = 8
    planes, rays_o, rays_d, decoder = make_scene(B=2, R=20, C=C, decoder=make_decoder(C))
    kwargs = dict(n_samples=9, background=1.0, return_weights=True, **kwargs)
    planes, rays_o, rays_d, decoder = planes.to(device), rays_o.to(device), rays_d.to(device), decoder.to(device)
    results = {}
    for name in ("torch", backend):
        p = planes.clone().requires_grad_(True)
        decoder.zero_grad()
        out = _render(p, rays_o, rays_d, decoder, name, **kwargs)
        _loss([o.cpu() if o is not None else None for o in out]).backward()
        results[name] = ([o.detach().cpu() for o in out], p.grad.cpu(), [q.grad.cpu() for q in decoder.parameters()])
    (ref_out, ref_gp, ref_gw), (out, gp, gw) = results["torch"], results[backend]
    for got, want in zip(out, ref_out):
        torch.testing.assert_close(got, want, rtol=2e-4, atol=2e-5)
    torch.testing.assert_close(gp, ref_gp, rtol=2e-3, atol=1e-4)
    for got, want in zip(gw, ref_gw):
        torch.testing.assert_close(got, want, rtol=2e-3, atol=1e-4)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_fused_perturbed_sampling_matches(backend, device):
    planes, rays_o, rays_d, decoder = (x.to(device) for x in make_scene(R=16))
    kwargs = dict(n_samples=8, n_importance=8, perturb=True, background=0.5)
    ref = _render(planes, rays_o, rays_d, decoder, "torch", seed=3, **kwargs)
    out = _render(planes, rays_o, rays_d, decoder, backend, seed=3, **kwargs)
    for got, want in zip(out[:3], ref[:3]):
        torch.testing.assert_close(got.cpu(), want.cpu(), rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_fused_half_planes(backend, device, dtype):
    planes, rays_o, rays_d, decoder = make_scene(R=16, dtype=dtype)
    planes, rays_o, rays_d, decoder = planes.to(device), rays_o.to(device), rays_d.to(device), decoder.to(device)
    ref = _render(planes.float(), rays_o, rays_d, decoder, "torch", n_samples=8)
    half_ref = _render(planes, rays_o, rays_d, decoder, "torch", n_samples=8)
    out = _render(planes, rays_o, rays_d, decoder, backend, n_samples=8)
    assert out[0].dtype == dtype
    # The planes are the same half values; both paths read them in float32: rounding of the output only.
    for got, want, half in zip(out[:3], ref[:3], half_ref[:3]):
        tol = 2 * (half.float() - want).abs().max().item() + 1e-3
        assert (got.float() - want).abs().max().item() <= tol


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_fused_empty_and_threshold(backend, device):
    planes, rays_o, rays_d, decoder = (x.to(device) for x in make_scene(R=12))
    empty = _render(planes, rays_o[:, :0], rays_d[:, :0], decoder, backend, n_samples=6)
    assert empty[0].shape == (1, 0, 3) and empty[1].shape == (1, 0)
    with torch.no_grad():
        ref = _render(planes, rays_o, rays_d, decoder, "torch", n_samples=10, t_threshold=0.5)
        out = _render(planes, rays_o, rays_d, decoder, backend, n_samples=10, t_threshold=0.5)
    for got, want in zip(out[:3], ref[:3]):
        torch.testing.assert_close(got.cpu(), want.cpu(), rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_opcheck(backend, device):
    planes, rays_o, rays_d, decoder = (x.to(device) for x in make_scene(R=5, C=4, H=6, W=5))
    t_near, t_far, _ = ff.rendering.ray_aabb_intersect(rays_o, rays_d, (-1, -1, -1, 1, 1, 1))
    t = ff.rendering.stratified_samples(t_near, t_far, 4).contiguous()
    weights = [layer.weight.detach().requires_grad_(True) for layer in decoder.linears]
    biases = [layer.bias.detach().requires_grad_(True) for layer in decoder.linears]
    planes = planes.requires_grad_(True)
    args = (planes, rays_o, rays_d, t, None, weights, biases, [0, 1, 0, 2, 2, 1], "concat", False, "zeros", 1.0,
            "relu", "sigmoid_clamped", "eg3d", "softplus", -1.0, 1.0, True, 0.0, True, backend)
    torch.library.opcheck(torch.ops.fastfields.render_triplane_pass.default, args)


# ---------------------------------------------------------------------------------------
# Fallbacks, memory behaviour, errors.


def test_arbitrary_decoder_runs_unfused_with_a_note():
    planes, rays_o, rays_d, decoder = make_scene(R=8)

    class Wrapped(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    ref = ff.render_triplane(planes, rays_o, rays_d, decoder, n_samples=6, backend="torch")
    with pytest.warns(RuntimeWarning, match="unfused path: the decoder is not a TriplaneDecoder"):
        out = ff.render_triplane(planes, rays_o, rays_d, Wrapped(decoder), n_samples=6)
    for got, want in zip(out[:3], ref[:3]):
        torch.testing.assert_close(got, want)


def test_gradients_to_rays_run_unfused():
    planes, rays_o, rays_d, decoder = make_scene(R=8)
    rays_d = rays_d.clone().requires_grad_(True)
    rgb, depth, opacity, _ = ff.render_triplane(planes, rays_o, rays_d, decoder, n_samples=6, near=1.0, far=3.0,
                                                backend="torch")
    (rgb.sum() + depth.sum()).backward()
    assert rays_d.grad is not None and rays_d.grad.abs().sum() > 0


def test_openlrm_decoder_state_dict_names():
    decoder = TriplaneDecoder(3 * 80)
    assert {k: tuple(v.shape) for k, v in decoder.state_dict().items()} == {
        "net.0.weight": (64, 240), "net.0.bias": (64,), "net.2.weight": (64, 64), "net.2.bias": (64,),
        "net.4.weight": (64, 64), "net.4.bias": (64,), "net.6.weight": (4, 64), "net.6.bias": (4,),
    }
    assert all(torch.all(layer.bias == 0) for layer in decoder.linears)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(planes=torch.randn(1, 2, 8, 4, 4)), "planes must have shape"),
        (dict(planes=torch.randn(3, 8, 4, 4)), "planes must be a 5-D"),
        (dict(rays_o=torch.randn(1, 5, 2)), "rays_o must have shape"),
        (dict(rays_d=torch.randn(1, 6, 3)), "rays_d must have the shape"),
        (dict(decoder=TriplaneDecoder(10)), "decoder takes 10 features"),
        (dict(n_samples=1), "n_samples must be an int >= 2"),
        (dict(n_importance=-1), "n_importance must be an int >= 0"),
        (dict(n_importance=4, mode="nerf"), "n_importance > 0 needs mode='eg3d'"),
        (dict(mode="mip"), "mode must be one of"),
        (dict(reduce="prod"), "reduce must be one of"),
        (dict(box_warp=0.0), r"box_warp must be in \(0"),
        (dict(near=1.0), "give both near and far"),
        (dict(near=3.0, far=1.0), "far must be >= near"),
        (dict(density_activation="sigmoid"), "density_activation must be one of"),
        (dict(decoder="mlp"), "decoder must be a TriplaneDecoder"),
        (dict(backend="cuda"), "not implemented"),
    ],
)
def test_errors(change, match):
    planes, rays_o, rays_d, decoder = make_scene(R=5, C=8)
    args = dict(planes=planes, rays_o=rays_o, rays_d=rays_d, decoder=decoder)
    kwargs = dict(n_samples=4)
    for key, value in change.items():
        (args if key in args else kwargs)[key] = value
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        ff.render_triplane(args["planes"], args["rays_o"], args["rays_d"], args["decoder"], **kwargs)


def test_threshold_needs_no_grad():
    planes, rays_o, rays_d, decoder = make_scene(R=5)
    with pytest.raises(ValueError, match="t_threshold > 0 is for inference"):
        ff.render_triplane(planes.requires_grad_(True), rays_o, rays_d, decoder, n_samples=4, t_threshold=0.1)
