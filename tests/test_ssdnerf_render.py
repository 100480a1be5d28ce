"""SSDNeRF's decoder, occupancy update and renderer vs the literal transcription of the official code."""


import pytest
import torch

from fastfields.models.ssdnerf.decoder import TriPlaneDecoder
from fastfields.models.ssdnerf import renderer as R
from fastfields.reference import ssdnerf as ref


def _decoder(C=4, seed=0):
    torch.manual_seed(seed)
    dec = TriPlaneDecoder(3 * C, hidden=32, sh_degree=4)
    with torch.no_grad():  # a non-zero direction net so the colour path is exercised
        dec.dir_net[0].weight.normal_(0, 0.3)
        dec.dir_net[0].bias.normal_(0, 0.1)
    return dec


def _params(dec):
    return {k: v for k, v in dec.state_dict().items() if k != "aabb"}


def _rays(n, seed=1, radius=2.0):
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(n, 3, generator=g)
    o = o / o.norm(dim=-1, keepdim=True) * radius
    target = (torch.rand(n, 3, generator=g) - 0.5) * 1.2
    d = target - o
    return o, d / d.norm(dim=-1, keepdim=True)


def test_point_decode_matches_official_channel_major_layout():
    dec = _decoder(C=4)
    code = torch.randn(2, 3, 4, 9, 11)
    xyz = torch.rand(2, 50, 3) * 2.4 - 1.2  # outside the box too: border padding
    dirs = torch.nn.functional.normalize(torch.randn(2, 50, 3), dim=-1)
    sigma, rgb = dec.point_decode(xyz, dirs, code, backend="torch")
    sigma_ref, rgb_ref = ref.point_decode_reference(_params(dec), xyz, dirs, code)
    torch.testing.assert_close(sigma, sigma_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rgb, rgb_ref, rtol=1e-5, atol=1e-6)
    # the official layout is not the plane-major one: a permuted weight would give other values
    w = dec.base_net[0].weight
    assert not torch.allclose(dec.plane_major_weight(), w)


def test_official_weights_layout_fixed_by_state_dict():
    dec = _decoder(C=6)
    names = {k: list(v.shape) for k, v in dec.state_dict().items()}
    assert names == {"aabb": [6], "base_net.0.weight": [32, 18], "base_net.0.bias": [32], "density_net.0.weight": [1, 32],
                     "density_net.0.bias": [1], "dir_net.0.weight": [32, 16], "dir_net.0.bias": [32],
                     "color_net.0.weight": [3, 32], "color_net.0.bias": [3]}
    assert dec.aabb.tolist() == [-1, -1, -1, 1, 1, 1]


def test_occupancy_update_matches_official():
    dec = _decoder(C=4)
    code = torch.randn(3, 4, 8, 8) * 2
    G = 8
    for decay, thresh in ((0.9, 0.1), (1.0, 50.0)):
        grid = R.new_grid(1.0, G)
        official = torch.zeros(G**3)
        for step in range(2):
            jitter = torch.rand(G**3, 3, generator=torch.Generator().manual_seed(step))
            bits = ref.update_extra_state_reference(_params(dec), code, official, jitter, G, 1.0, thresh, decay)
            R.update_grid(grid, R.grid_density_fn(dec, code, "torch"), bound=1.0, density_thresh=thresh, decay=decay,
                          generator=torch.Generator().manual_seed(step))
        occ = grid.occupied[0]
        n_occ = 0
        for ix in range(G):
            for iy in range(G):
                for iz in range(G):
                    m = ref.morton3d(ix, iy, iz)
                    assert bool(occ[ix, iy, iz]) == bool(int(bits[m // 8]) >> (m % 8) & 1)
                    torch.testing.assert_close(grid.densities[0, ix, iy, iz], official[m], rtol=1e-5, atol=1e-6)
                    n_occ += bool(occ[ix, iy, iz])
        if thresh > 1:  # the mean is the threshold: both kinds of cell
            assert 0 < n_occ < G**3


def _random_occupancy(G, seed):
    occ = torch.rand(G, G, G, generator=torch.Generator().manual_seed(seed)) < 0.5
    grid = R.new_grid(1.0, G)
    grid.occupied[0].copy_(occ)
    bits = torch.zeros(G**3 // 8, dtype=torch.uint8)
    for ix in range(G):
        for iy in range(G):
            for iz in range(G):
                if occ[ix, iy, iz]:
                    m = ref.morton3d(ix, iy, iz)
                    bits[m // 8] |= 1 << (m % 8)
    return grid, bits


@pytest.mark.parametrize("dt_gamma,perturb", [(0.0, False), (0.04, True)])
def test_render_matches_official_marching_and_compositing(dt_gamma, perturb):
    G, max_steps = 8, 64
    dec = _decoder(C=4)
    code = (torch.randn(1, 3, 4, 8, 8) * 1.5).requires_grad_(True)
    grid, bits = _random_occupancy(G, 3)
    o, d = _rays(40)
    o[0] = torch.tensor([0.0, 0.0, 3.0])  # looks away from the box: no samples
    d[0] = torch.tensor([0.0, 0.0, 1.0])
    noise = torch.rand(40, generator=torch.Generator().manual_seed(5)) if perturb else None

    ray_idx, xyz, t, dt = R.march_rays(grid, o, d, *R.near_far_from_aabb(o, d, 1.0, 0.2), bound=1.0, dt_gamma=dt_gamma,
                                       max_steps=max_steps, noise=noise)
    # sample positions equal the kernel's
    for r in (1, 7, 13):
        near, far = ref.near_far_reference(o[r].tolist(), d[r].tolist(), 1.0, 0.2)
        want = ref.march_rays_train_reference(o[r].tolist(), d[r].tolist(), bits, G, 1.0, near, far,
                                              0.0 if noise is None else float(noise[r]), dt_gamma, max_steps)
        got_t = t[ray_idx == r]
        assert len(want) == got_t.numel() and len(want) > 0
        torch.testing.assert_close(got_t, torch.tensor([w[2][1] for w in want]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(dt[ray_idx == r], torch.tensor([w[2][0] for w in want]), rtol=1e-5, atol=1e-6)

    gen = torch.Generator().manual_seed(5)
    image, _, weights, _ = R.render_rays(dec, code, o[None], d[None], [grid], dt_gamma=dt_gamma, max_steps=max_steps,
                                         perturb=perturb, generator=gen, backend="torch")
    image_ref, weights_ref = ref.render_reference(_params(dec), code[0], o, d, bits, G, dt_gamma=dt_gamma,
                                                  max_steps=max_steps, noises=noise, T_thresh=0.0)
    torch.testing.assert_close(image[0], image_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(weights[0], weights_ref, rtol=1e-4, atol=1e-5)
    assert float(weights[0, 0].detach()) == 0.0 and float(weights_ref.max()) > 0.5
    g1, = torch.autograd.grad(image.square().sum(), code)
    g2, = torch.autograd.grad(image_ref.square().sum(), code)
    torch.testing.assert_close(g1, g2, rtol=1e-3, atol=1e-5)


def test_inference_termination_matches_official():
    G = 8
    dec = _decoder(C=4)
    code = torch.randn(1, 3, 4, 8, 8) * 3
    grid, bits = _random_occupancy(G, 4)
    o, d = _rays(30, seed=2)
    with torch.no_grad():
        image, _, weights, _ = R.render_rays(dec, code, o[None], d[None], [grid], dt_gamma=0.0, max_steps=64,
                                             t_threshold=1e-4, backend="torch")
        image_ref, weights_ref = ref.render_reference(_params(dec), code[0], o, d, bits, G, max_steps=64, T_thresh=1e-4)
    torch.testing.assert_close(image[0], image_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(weights[0], weights_ref, rtol=1e-4, atol=1e-5)


def test_fused_backend_matches_torch():
    dec = _decoder(C=4)
    code = torch.randn(2, 3, 4, 8, 8)
    grids = [_random_occupancy(8, s)[0] for s in (6, 7)]
    o, d = _rays(64, seed=3)
    o, d = o[None].expand(2, -1, -1), d[None].expand(2, -1, -1)
    with torch.no_grad():
        a = R.render_rays(dec, code, o, d, grids, dt_gamma=0.0, max_steps=64, backend="torch")
        b = R.render_rays(dec, code, o, d, grids, dt_gamma=0.0, max_steps=64, backend="auto")
    torch.testing.assert_close(a[0], b[0], rtol=1e-4, atol=1e-5)
