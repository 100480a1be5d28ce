"""render_triplane, every backend in one file.

- module level: the unfused reference against OpenLRM's renderer written out by hand, and every
  fused backend against the reference (forward and gradients) across conventions and sampling;
- :class:`TestCpu`: render_triplane on the C++ CPU backend (csrc/cpu/render_triplane.cpp) against the unfused
  reference: forward outputs and gradients to the planes and the decoder, across the decoder
  presets, sampling modes, chunking of long rays, plane dtypes, thread counts and edge cases.
- :class:`TestTriton`: The Triton kernels of render_triplane against the unfused reference (backend="torch"):
  forward outputs and gradients to the planes and every decoder parameter, over the layouts the
  kernels specialise on (axes presets, concat / sum / mean, channel blocks with masked tails,
  padded hidden and output widths, no / several hidden layers), both compositing modes, every
  density, hidden and colour activation, samplers, half planes, early termination, edge sizes.
"""


import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import fastfields as ff
from fastfields.nn import TriplaneDecoder
from fastfields.ops.render_triplane import IMPLEMENTED
from fastfields.reference.render_triplane import decode_reference, render_pass_reference
from conftest import backend_params
from fastfields import _build


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


# =======================================================================================
# The C++ CPU backend (csrc/cpu/render_triplane.cpp).


# The kernel decodes at most this many samples at once (kRows in the .cpp): longer rays are
# cut into segments, which eg3d mode overlaps by one sample.
CPU_CHUNK = 128


def make_scene_cpu(B=1, R=20, C=8, H=16, W=16, dtype=torch.float32, seed=0):
    """Planes and rays from a camera at distance 2 towards the box [-1, 1]^3; rays 0 and 1 miss it."""
    gen = _gen(seed)
    planes = (torch.randn(B, 3, C, H, W, generator=gen) * 1.5).to(dtype)
    rays_o = torch.tensor([0.3, -2.0, 0.2]).expand(B, R, 3).clone()
    target = torch.randn(B, R, 3, generator=gen) * 0.7
    rays_d = F.normalize(target - rays_o, dim=-1)
    rays_d[:, :2] = F.normalize(torch.tensor([1.0, 0.2, 0.0]), dim=0)
    return planes, rays_o, rays_d


def make_decoder_cpu(in_features, hidden=16, seed=0, **kwargs):
    """A TriplaneDecoder with non-zero biases, so densities are neither 0 nor saturated."""
    torch.manual_seed(seed)
    decoder = TriplaneDecoder(in_features, hidden, **kwargs)
    with torch.no_grad():
        for layer in decoder.linears:
            layer.bias.normal_(0.0, 0.5)
    return decoder


# name: (render_triplane kwargs, decoder kwargs with in_features as a function of C)
CPU_CONFIGS = {
    "openlrm": (dict(n_samples=9), dict(n_layers=4, out_features=4), lambda C: 3 * C),
    "openlrm-importance": (dict(n_samples=8, n_importance=7), dict(n_layers=4, out_features=4), lambda C: 3 * C),
    "eg3d": (
        dict(axes=ff.EG3D_AXES, reduce="mean", near=1.2, far=2.9, mask_outside=False, n_samples=8, n_importance=6),
        dict(n_layers=2, out_features=1 + 8, activation="softplus"),
        lambda C: C,
    ),
    "triposr-nerf": (
        dict(axes=ff.XYZ_AXES, mode="nerf", density_activation="exp", density_bias=-1.0, padding="border", n_samples=9),
        dict(n_layers=5, out_features=4, activation="silu", color_activation="sigmoid"),
        lambda C: 3 * C,
    ),
    "sum-trunc-exp-align-corners": (
        dict(reduce="sum", align_corners=True, density_activation="trunc_exp", density_bias=-2.0, distance_scale=0.5,
             mode="nerf", n_samples=7),
        dict(hidden=24, n_layers=3, out_features=3, color_activation="none"),
        lambda C: C,
    ),
    # Rays longer than one chunk: several segments per ray (eg3d: sharing a sample).
    "long-eg3d": (dict(n_samples=2 * CPU_CHUNK + 11), dict(n_layers=3, out_features=4), lambda C: 3 * C),
    "long-nerf": (
        dict(mode="nerf", density_activation="relu", density_bias=0.0, n_samples=CPU_CHUNK + 9),
        dict(n_layers=3, out_features=4, activation="softplus"),
        lambda C: 3 * C,
    ),
}


def run_cpu(planes, rays_o, rays_d, decoder, backend, seed=None, grad=True, **kwargs):
    """Outputs, the planes' gradient and the decoder's parameter gradients of one render."""
    planes = planes.clone().requires_grad_(grad)
    decoder.zero_grad()
    generator = None if seed is None else _gen(seed)
    with torch.set_grad_enabled(grad):
        out = ff.render_triplane(planes, rays_o, rays_d, decoder, generator=generator, backend=backend, **kwargs)
    if not grad:
        return out, None, None
    _loss(out).backward()
    return [o.detach() if o is not None else None for o in out], planes.grad, [p.grad.clone() for p in decoder.parameters()]


def assert_matches_cpu(got, want, grads=True):
    (out, g_planes, g_params), (ref, ref_planes, ref_params) = got, want
    for a, b in zip(out, ref):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a.float(), b.float(), rtol=2e-4, atol=2e-5)
    if grads:
        torch.testing.assert_close(g_planes, ref_planes, rtol=2e-3, atol=1e-4)
        for a, b in zip(g_params, ref_params):
            torch.testing.assert_close(a, b, rtol=2e-3, atol=1e-4)


def _op_args(**change):
    """Arguments of torch.ops.fastfields_cpu.render_triplane_fwd for a tiny scene."""
    planes, rays_o, rays_d = make_scene_cpu(R=4, C=4)
    decoder = make_decoder_cpu(12, n_layers=3, out_features=4)
    t = torch.linspace(1.0, 3.0, 5).expand(1, 4, 5).contiguous()
    w = [layer.weight.detach() for layer in decoder.linears]
    b = [layer.bias.detach() for layer in decoder.linears]
    args = dict(planes=planes.permute(0, 1, 3, 4, 2).contiguous(), rays_o=rays_o, rays_d=rays_d, t=t, deltas=None,
                first_w=w[0], first_b=b[0], hidden_w=w[1][None], hidden_b=b[1][None], last_w=w[2], last_b=b[2],
                axes=[0, 1, 0, 2, 2, 1], reduce=0, align_corners=False, padding=0, scale=1.0, activation=0,
                color_act=0, mode=1, density_activation=2, density_bias=-1.0, distance_scale=1.0, mask_outside=True,
                t_threshold=0.0, return_weights=False)
    args.update(change)
    return args


class TestCpu:
    """The C++ kernels against the reference."""

    pytestmark = pytest.mark.skipif(_build.why_unbuildable("cpu") is not None, reason=str(_build.why_unbuildable("cpu")))

    @pytest.mark.parametrize("config", list(CPU_CONFIGS))
    def test_matches_reference(self, config):
        kwargs, decoder_kwargs, features = CPU_CONFIGS[config]
        C = 8
        planes, rays_o, rays_d = make_scene_cpu(B=2, R=12 if config.startswith("long") else 20, C=C)
        decoder = make_decoder_cpu(features(C), **decoder_kwargs)
        kwargs = dict(background=1.0, return_weights=True, **kwargs)
        ref = run_cpu(planes, rays_o, rays_d, decoder, "torch", **kwargs)
        out = run_cpu(planes, rays_o, rays_d, decoder, "cpu", **kwargs)
        assert_matches_cpu(out, ref)
        rgb, _, opacity, weights = out[0]
        # Not a vacuous comparison: light reaches the camera, and rays 0, 1 (missing the box) see none.
        assert opacity[:, 2:].max() > 0.1 and weights.abs().sum() > 0
        if "near" not in kwargs:
            assert torch.all(opacity[:, :2] == 0) and torch.all(rgb[:, :2] == 1.0)
        assert out[1].abs().sum() > 0 and all(g.abs().sum() > 0 for g in out[2][::2])

    def test_perturbed_sampling_matches(self):
        planes, rays_o, rays_d = make_scene_cpu(R=16)
        decoder = make_decoder_cpu(24, n_layers=4, out_features=4)
        kwargs = dict(n_samples=8, n_importance=8, perturb=True, background=0.5)
        assert_matches_cpu(run_cpu(planes, rays_o, rays_d, decoder, "cpu", seed=3, **kwargs),
                       run_cpu(planes, rays_o, rays_d, decoder, "torch", seed=3, **kwargs))

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_half_planes(self, dtype):
        planes, rays_o, rays_d = make_scene_cpu(R=16, dtype=dtype)
        decoder = make_decoder_cpu(24, n_layers=3, out_features=4)
        out, g_planes, _ = run_cpu(planes, rays_o, rays_d, decoder, "cpu", n_samples=8)
        # The same half values read in float32 on both sides: only the outputs' rounding differs.
        ref, ref_planes, _ = run_cpu(planes.float(), rays_o, rays_d, decoder, "torch", n_samples=8)
        assert out[0].dtype == dtype and g_planes.dtype == dtype
        for a, b in zip(out[:3], ref[:3]):
            torch.testing.assert_close(a.float(), b, rtol=torch.finfo(dtype).eps, atol=1e-5)
        torch.testing.assert_close(g_planes.float(), ref_planes, rtol=torch.finfo(dtype).eps * 2, atol=1e-4)

    @pytest.mark.parametrize("n_samples", [10, 45, 2 * CPU_CHUNK + 5])
    @pytest.mark.parametrize("mode", ["eg3d", "nerf"])
    def test_threshold_stops_rays_like_the_reference(self, mode, n_samples):
        planes, rays_o, rays_d = make_scene_cpu(R=16)
        decoder = make_decoder_cpu(24, n_layers=3, out_features=4)
        kwargs = dict(n_samples=n_samples, t_threshold=0.3, return_weights=True, mode=mode, density_bias=1.0)
        out = run_cpu(planes, rays_o, rays_d, decoder, "cpu", grad=False, **kwargs)
        ref = run_cpu(planes, rays_o, rays_d, decoder, "torch", grad=False, **kwargs)
        assert_matches_cpu(out, ref, grads=False)
        weights = out[0][3]
        full = run_cpu(planes, rays_o, rays_d, decoder, "cpu", grad=False, **dict(kwargs, t_threshold=0.0))[0][3]
        assert ((weights == 0) & (full > 0)).any(), "no ray stopped early: the test does not test the threshold"

    def test_thread_counts_agree(self):
        """Workers split the rays and each accumulates private gradients: any thread count gives
        the same result (up to the order of the final sums)."""
        planes, rays_o, rays_d = make_scene_cpu(B=2, R=40)
        decoder = make_decoder_cpu(24, n_layers=4, out_features=4)
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            one = run_cpu(planes, rays_o, rays_d, decoder, "cpu", n_samples=12)
            torch.set_num_threads(2)
            two = run_cpu(planes, rays_o, rays_d, decoder, "cpu", n_samples=12)
        finally:
            torch.set_num_threads(threads)
        for a, b in zip(one[0][:3], two[0][:3]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(one[1], two[1], rtol=1e-5, atol=1e-6)
        for a, b in zip(one[2], two[2]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

    def test_empty_inputs(self):
        planes, rays_o, rays_d = make_scene_cpu(B=2, R=6)
        decoder = make_decoder_cpu(24, n_layers=4, out_features=4)
        out, g_planes, g_params = run_cpu(planes, rays_o[:, :0], rays_d[:, :0], decoder, "cpu", n_samples=6,
                                      return_weights=True)
        assert out[0].shape == (2, 0, 3) and out[1].shape == (2, 0) and out[3].shape == (2, 0, 5)
        assert torch.all(g_planes == 0) and all(torch.all(g == 0) for g in g_params)
        none = run_cpu(planes[:0], rays_o[:0], rays_d[:0], decoder, "cpu", n_samples=6)
        assert none[0][0].shape == (0, 6, 3) and none[1].shape == planes[:0].shape

    def test_kernel_entry_point_runs(self):
        from fastfields.ops._common import compiled_ops

        rgb, depth, opacity, weights = compiled_ops("cpu").render_triplane_fwd(**_op_args())
        assert rgb.shape == (1, 4, 3) and depth.shape == (1, 4) and weights.shape == (0,)

    @pytest.mark.parametrize(
        "change, match",
        [
            (dict(axes=[0, 1, 0, 2, 2]), "axes must hold 6 entries"),
            (dict(axes=[0, 1, 0, 3, 2, 1]), "axes entries must be 0, 1 or 2"),
            (dict(reduce=4), "reduce must be 0"),
            (dict(mode=2), "mode must be 0"),
            (dict(mode=0), "mode nerf needs deltas"),
            (dict(activation=5), "activation must be 0"),
            (dict(density_activation=7), "density_activation must be"),
            (dict(first_w=torch.randn(16, 13)), "first_w must be"),
            (dict(t=torch.ones(1, 3, 5)), "t must be"),
            (dict(t=torch.ones(1, 4, 1)), "at least 2 samples"),
        ],
    )
    def test_kernel_argument_errors(self, change, match):
        from fastfields.ops._common import compiled_ops

        with pytest.raises(RuntimeError, match=match):
            compiled_ops("cpu").render_triplane_fwd(**_op_args(**change))


# =======================================================================================
# The Triton backend (kernels/render_triplane.py).


TRITON = [p for p in backend_params() if p.values[0] == "triton"]


def make_scene_triton(B=1, R=24, C=8, H=16, W=16, dtype=torch.float32, decoder=None, seed=0, bias_std=0.5):
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


def _launcher_args(C=4, H=5, W=6, R=3, S=4, hidden=16, n_hidden=1, out=4):
    B = 1
    planes_cl = torch.randn(B, 3, H, W, C)
    rays = torch.randn(B, R, 3)
    t = torch.linspace(1.0, 3.0, S).expand(B, R, S).contiguous()
    mlp = (torch.randn(hidden, 3 * C), torch.randn(hidden), torch.randn(n_hidden, hidden, hidden),
           torch.randn(n_hidden, hidden), torch.randn(out, hidden), torch.randn(out))
    options = ([0, 1, 0, 2, 2, 1], 0, False, 0, 1.0, 0, 0, 1, 2, -1.0, 1.0, True, 0.0, False)
    return planes_cl, rays, rays.clone(), t, None, mlp, options


class TestTriton:
    """The Triton kernels against the reference."""

    @pytest.mark.parametrize("backend,device", TRITON)
    def test_openlrm_concat_two_tiles(self, backend, device):
        # OpenLRM's layout and decoder shape (hidden 64, two hidden layers): C = 40 reads three channel
        # blocks of 16 (the last half masked); R = 40 makes a full and a partial tile of rays.
        C = 40
        decoder = TriplaneDecoder(3 * C, 64, n_layers=4, out_features=4)
        planes, rays_o, rays_d, decoder = make_scene_triton(R=40, C=C, H=12, W=10, decoder=decoder, bias_std=0.3)
        out = check_against_reference(device, planes, rays_o, rays_d, decoder, n_samples=6, return_weights=True,
                                       background=1.0)
        opacity = out[2]
        assert torch.all(opacity[:, :2] == 0) and (opacity[:, 2:] > 0.05).float().mean() > 0.5

    @pytest.mark.parametrize("backend,device", TRITON)
    def test_eg3d_mean_no_hidden_layer_importance_perturbed_batch(self, backend, device):
        # EG3D: mean of the planes, softplus decoder without hidden layers (L = 0), 1 + 20 outputs
        # (padded to 32), planes' zero padding outside the box, fixed bounds, two-pass jittered
        # sampling, two batch elements (their own planes).
        C = 12
        decoder = TriplaneDecoder(C, 32, n_layers=2, out_features=1 + 20, activation="softplus")
        planes, rays_o, rays_d, decoder = make_scene_triton(B=2, R=20, C=C, decoder=decoder)
        check_against_reference(device, planes, rays_o, rays_d, decoder, seed=5, axes=ff.EG3D_AXES, reduce="mean",
                                near=1.2, far=2.9, mask_outside=False, n_samples=6, n_importance=5, perturb=True,
                                return_weights=True)

    @pytest.mark.parametrize("backend,device", TRITON)
    def test_nerf_xyz_sum_silu_exp_border_align_corners(self, backend, device):
        # TripoSR-like: XYZ planes, nerf mode with exp density, SiLU decoder of width 24 (padded to 32)
        # with three hidden layers, plain sigmoid; plus the sum reduce, border padding, align_corners.
        C = 5
        decoder = TriplaneDecoder(C, 24, n_layers=5, out_features=4, activation="silu", color_activation="sigmoid")
        planes, rays_o, rays_d, decoder = make_scene_triton(R=20, C=C, decoder=decoder)
        check_against_reference(device, planes, rays_o, rays_d, decoder, seed=2, axes=ff.XYZ_AXES, reduce="sum",
                                mode="nerf", density_activation="exp", density_bias=-1.0, padding="border",
                                align_corners=True, n_samples=7, perturb=True, return_weights=True)

    @pytest.mark.parametrize("density", ["none", "relu", "trunc_exp"])
    @pytest.mark.parametrize("backend,device", TRITON)
    def test_density_activations_and_raw_colour(self, backend, device, density):
        # Two outputs (density + one channel, padded to 16), colour without activation.
        C = 4
        decoder = TriplaneDecoder(3 * C, 16, n_layers=3, out_features=2, color_activation="none")
        planes, rays_o, rays_d, decoder = make_scene_triton(R=16, C=C, decoder=decoder, seed=3)
        bias = {"none": 1.0, "relu": 0.5, "trunc_exp": -1.0}[density]
        check_against_reference(device, planes, rays_o, rays_d, decoder, mode="nerf", density_activation=density,
                                density_bias=bias, distance_scale=0.7, n_samples=6)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("backend,device", TRITON)
    def test_half_planes(self, backend, device, dtype):
        # Both paths read the same half values in float32: the outputs agree to float32 rounding
        # before their cast to the planes' dtype; the plane gradients come back in that dtype.
        planes, rays_o, rays_d, decoder = make_scene_triton(R=16, C=4, dtype=dtype)
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
    def test_early_termination_matches_reference(self, backend, device, mode):
        # Dense planes so most rays stop well before their last sample: the tile stops when all have.
        planes, rays_o, rays_d, decoder = make_scene_triton(R=20, C=4)
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
    def test_no_rays(self, backend, device):
        planes, rays_o, rays_d, decoder = make_scene_triton(B=2, R=4, C=4)
        planes, decoder = planes.to(device).requires_grad_(True), decoder.to(device)
        rays = torch.zeros(2, 0, 3, device=device)
        rgb, depth, opacity, weights = ff.render_triplane(planes, rays, rays, decoder, n_samples=5, return_weights=True,
                                                          backend="triton")
        assert rgb.shape == (2, 0, 3) and depth.shape == (2, 0) and opacity.shape == (2, 0) and weights.shape == (2, 0, 4)
        (rgb.sum() + depth.sum() + opacity.sum()).backward()
        assert planes.grad.shape == planes.shape and torch.all(planes.grad == 0)
        assert all(torch.all(p.grad == 0) for p in decoder.parameters())

    def test_launchers_reject_bad_arguments(self):
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
    def test_channel_blocks_without_tail(self, backend, device):
        # C = 16 fills its channel block exactly: the kernels' unmasked channel path (C % BLOCK_C == 0,
        # as OpenLRM's C = 80), here with a hidden width that needs no padding either.
        C = 16
        decoder = TriplaneDecoder(3 * C, 16, n_layers=3, out_features=4)
        planes, rays_o, rays_d, decoder = make_scene_triton(R=16, C=C, H=8, W=8, decoder=decoder, bias_std=0.3)
        check_against_reference(device, planes, rays_o, rays_d, decoder, n_samples=5)

    @pytest.mark.parametrize("reduce", [0, 2])
    def test_decoder_packing_round_trip(self, reduce):
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

    def test_launchers_reject_planes_beyond_int32_offsets(self):
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
