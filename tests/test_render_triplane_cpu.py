"""render_triplane on the C++ CPU backend (csrc/cpu/render_triplane.cpp) against the unfused
reference: forward outputs and gradients to the planes and the decoder, across the decoder
presets, sampling modes, chunking of long rays, plane dtypes, thread counts and edge cases."""

import pytest
import torch
import torch.nn.functional as F

import fastfields as ff
from fastfields import _build
from fastfields.nn import TriplaneDecoder

pytestmark = pytest.mark.skipif(_build.why_unbuildable("cpu") is not None, reason=str(_build.why_unbuildable("cpu")))

# The kernel decodes at most this many samples at once (kRows in the .cpp): longer rays are
# cut into segments, which eg3d mode overlaps by one sample.
CHUNK = 128


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def make_scene(B=1, R=20, C=8, H=16, W=16, dtype=torch.float32, seed=0):
    """Planes and rays from a camera at distance 2 towards the box [-1, 1]^3; rays 0 and 1 miss it."""
    gen = _gen(seed)
    planes = (torch.randn(B, 3, C, H, W, generator=gen) * 1.5).to(dtype)
    rays_o = torch.tensor([0.3, -2.0, 0.2]).expand(B, R, 3).clone()
    target = torch.randn(B, R, 3, generator=gen) * 0.7
    rays_d = F.normalize(target - rays_o, dim=-1)
    rays_d[:, :2] = F.normalize(torch.tensor([1.0, 0.2, 0.0]), dim=0)
    return planes, rays_o, rays_d


def make_decoder(in_features, hidden=16, seed=0, **kwargs):
    """A TriplaneDecoder with non-zero biases, so densities are neither 0 nor saturated."""
    torch.manual_seed(seed)
    decoder = TriplaneDecoder(in_features, hidden, **kwargs)
    with torch.no_grad():
        for layer in decoder.linears:
            layer.bias.normal_(0.0, 0.5)
    return decoder


# name: (render_triplane kwargs, decoder kwargs with in_features as a function of C)
CONFIGS = {
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
    "long-eg3d": (dict(n_samples=2 * CHUNK + 11), dict(n_layers=3, out_features=4), lambda C: 3 * C),
    "long-nerf": (
        dict(mode="nerf", density_activation="relu", density_bias=0.0, n_samples=CHUNK + 9),
        dict(n_layers=3, out_features=4, activation="softplus"),
        lambda C: 3 * C,
    ),
}


def _loss(outputs):
    rgb, depth, opacity, _ = outputs
    gen = _gen(7)
    return ((rgb.float() * torch.randn(rgb.shape, generator=gen)).sum() + (depth.float() * 0.3).sum()
            + (opacity.float() * torch.randn(opacity.shape, generator=gen)).sum())


def run(planes, rays_o, rays_d, decoder, backend, seed=None, grad=True, **kwargs):
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


def assert_matches(got, want, grads=True):
    (out, g_planes, g_params), (ref, ref_planes, ref_params) = got, want
    for a, b in zip(out, ref):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a.float(), b.float(), rtol=2e-4, atol=2e-5)
    if grads:
        torch.testing.assert_close(g_planes, ref_planes, rtol=2e-3, atol=1e-4)
        for a, b in zip(g_params, ref_params):
            torch.testing.assert_close(a, b, rtol=2e-3, atol=1e-4)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_matches_reference(config):
    kwargs, decoder_kwargs, features = CONFIGS[config]
    C = 8
    planes, rays_o, rays_d = make_scene(B=2, R=12 if config.startswith("long") else 20, C=C)
    decoder = make_decoder(features(C), **decoder_kwargs)
    kwargs = dict(background=1.0, return_weights=True, **kwargs)
    ref = run(planes, rays_o, rays_d, decoder, "torch", **kwargs)
    out = run(planes, rays_o, rays_d, decoder, "cpu", **kwargs)
    assert_matches(out, ref)
    rgb, _, opacity, weights = out[0]
    # Not a vacuous comparison: light reaches the camera, and rays 0, 1 (missing the box) see none.
    assert opacity[:, 2:].max() > 0.1 and weights.abs().sum() > 0
    if "near" not in kwargs:
        assert torch.all(opacity[:, :2] == 0) and torch.all(rgb[:, :2] == 1.0)
    assert out[1].abs().sum() > 0 and all(g.abs().sum() > 0 for g in out[2][::2])


def test_perturbed_sampling_matches():
    planes, rays_o, rays_d = make_scene(R=16)
    decoder = make_decoder(24, n_layers=4, out_features=4)
    kwargs = dict(n_samples=8, n_importance=8, perturb=True, background=0.5)
    assert_matches(run(planes, rays_o, rays_d, decoder, "cpu", seed=3, **kwargs),
                   run(planes, rays_o, rays_d, decoder, "torch", seed=3, **kwargs))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_planes(dtype):
    planes, rays_o, rays_d = make_scene(R=16, dtype=dtype)
    decoder = make_decoder(24, n_layers=3, out_features=4)
    out, g_planes, _ = run(planes, rays_o, rays_d, decoder, "cpu", n_samples=8)
    # The same half values read in float32 on both sides: only the outputs' rounding differs.
    ref, ref_planes, _ = run(planes.float(), rays_o, rays_d, decoder, "torch", n_samples=8)
    assert out[0].dtype == dtype and g_planes.dtype == dtype
    for a, b in zip(out[:3], ref[:3]):
        torch.testing.assert_close(a.float(), b, rtol=torch.finfo(dtype).eps, atol=1e-5)
    torch.testing.assert_close(g_planes.float(), ref_planes, rtol=torch.finfo(dtype).eps * 2, atol=1e-4)


@pytest.mark.parametrize("n_samples", [10, 45, 2 * CHUNK + 5])
@pytest.mark.parametrize("mode", ["eg3d", "nerf"])
def test_threshold_stops_rays_like_the_reference(mode, n_samples):
    planes, rays_o, rays_d = make_scene(R=16)
    decoder = make_decoder(24, n_layers=3, out_features=4)
    kwargs = dict(n_samples=n_samples, t_threshold=0.3, return_weights=True, mode=mode, density_bias=1.0)
    out = run(planes, rays_o, rays_d, decoder, "cpu", grad=False, **kwargs)
    ref = run(planes, rays_o, rays_d, decoder, "torch", grad=False, **kwargs)
    assert_matches(out, ref, grads=False)
    weights = out[0][3]
    full = run(planes, rays_o, rays_d, decoder, "cpu", grad=False, **dict(kwargs, t_threshold=0.0))[0][3]
    assert ((weights == 0) & (full > 0)).any(), "no ray stopped early: the test does not test the threshold"


def test_thread_counts_agree():
    """Workers split the rays and each accumulates private gradients: any thread count gives
    the same result (up to the order of the final sums)."""
    planes, rays_o, rays_d = make_scene(B=2, R=40)
    decoder = make_decoder(24, n_layers=4, out_features=4)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(planes, rays_o, rays_d, decoder, "cpu", n_samples=12)
        torch.set_num_threads(2)
        two = run(planes, rays_o, rays_d, decoder, "cpu", n_samples=12)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one[0][:3], two[0][:3]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(one[1], two[1], rtol=1e-5, atol=1e-6)
    for a, b in zip(one[2], two[2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_empty_inputs():
    planes, rays_o, rays_d = make_scene(B=2, R=6)
    decoder = make_decoder(24, n_layers=4, out_features=4)
    out, g_planes, g_params = run(planes, rays_o[:, :0], rays_d[:, :0], decoder, "cpu", n_samples=6,
                                  return_weights=True)
    assert out[0].shape == (2, 0, 3) and out[1].shape == (2, 0) and out[3].shape == (2, 0, 5)
    assert torch.all(g_planes == 0) and all(torch.all(g == 0) for g in g_params)
    none = run(planes[:0], rays_o[:0], rays_d[:0], decoder, "cpu", n_samples=6)
    assert none[0][0].shape == (0, 6, 3) and none[1].shape == planes[:0].shape


def _op_args(**change):
    """Arguments of torch.ops.fastfields_cpu.render_triplane_fwd for a tiny scene."""
    planes, rays_o, rays_d = make_scene(R=4, C=4)
    decoder = make_decoder(12, n_layers=3, out_features=4)
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


def test_kernel_entry_point_runs():
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
def test_kernel_argument_errors(change, match):
    from fastfields.ops._common import compiled_ops

    with pytest.raises(RuntimeError, match=match):
        compiled_ops("cpu").render_triplane_fwd(**_op_args(**change))
