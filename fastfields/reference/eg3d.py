"""EG3D's generator transcribed literally from the official code (NVlabs/eg3d @7cf1fd1), as
plain functions over a state dict: the ground truth of :mod:`fastfields.models.eg3d`.

Kept literal on purpose: ``training/triplane.py`` (mapping with pose conditioning, synthesis,
ray sampling, super-resolution), ``networks_stylegan2.py`` (equalised-lr layers, the
modulated convolution, the blocks' w indexing) and the unfused renderer of
``volumetric_rendering/`` (``generate_planes`` + ``torch.linalg.inv`` + ``grid_sample``,
``OSGDecoder``, ``MipRayMarcher2``, ``sample_importance`` / ``sample_pdf``, ``unify_samples``),
op for op and in the official order of random draws (``generator`` replaces torch's global
generator when given). The low-level StyleGAN2 ops (``upfirdn2d``, ``bias_act``,
``conv2d_resample``, ``modulated_conv2d``) are the model's :mod:`fastfields.models.eg3d.ops`,
themselves transcriptions of the official reference paths. float32 only (what the official
code runs on a CPU: its fp16 blocks fall back to float32 there).

``sd`` is the generator's state dict (official names), ``cfg`` an ``EG3DConfig``.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..models.eg3d import ops

State = Dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------
# networks_stylegan2.py


def fully_connected(sd: State, prefix: str, x: torch.Tensor, lr_multiplier: float = 1.0,
                    activation: str = "linear") -> torch.Tensor:
    weight = sd[f"{prefix}.weight"]
    w = weight.to(x.dtype) * (lr_multiplier / np.sqrt(weight.shape[1]))
    b = sd[f"{prefix}.bias"].to(x.dtype)
    if lr_multiplier != 1:
        b = b * lr_multiplier
    if activation == "linear":
        return torch.addmm(b.unsqueeze(0), x, w.t())
    return ops.bias_act(x.matmul(w.t()), b, act=activation)


def mapping(sd: State, cfg, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1,
            truncation_cutoff: Optional[int] = None, num_ws: Optional[int] = None) -> torch.Tensor:
    """``TriPlaneGenerator.mapping`` -> ``MappingNetwork.forward``."""
    if cfg.c_gen_conditioning_zero:
        c = torch.zeros_like(c)
    c = c * cfg.c_scale
    p = "backbone.mapping"
    x = ops.normalize_2nd_moment(z.to(torch.float32))
    y = ops.normalize_2nd_moment(fully_connected(sd, f"{p}.embed", c.to(torch.float32)))
    x = torch.cat([x, y], dim=1)
    for idx in range(cfg.mapping_layers):
        x = fully_connected(sd, f"{p}.fc{idx}", x, lr_multiplier=cfg.mapping_lr_multiplier, activation="lrelu")
    x = x.unsqueeze(1).repeat([1, num_ws or synthesis_num_ws(cfg), 1])
    if truncation_psi != 1:
        w_avg = sd[f"{p}.w_avg"]
        if truncation_cutoff is None:
            x = w_avg.lerp(x, truncation_psi)
        else:
            x[:, :truncation_cutoff] = w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
    return x


def synthesis_layer(sd: State, p: str, x, w, resolution: int, up: int, noise_mode: str, fused_modconv: bool,
                    conv_clamp, generator=None):
    styles = fully_connected(sd, f"{p}.affine", w)
    noise = None
    if noise_mode == "random":
        noise = torch.randn([x.shape[0], 1, resolution, resolution], device=x.device, generator=generator) \
            * sd[f"{p}.noise_strength"]
    if noise_mode == "const":
        noise = sd[f"{p}.noise_const"] * sd[f"{p}.noise_strength"]
    x = ops.modulated_conv2d(x=x, weight=sd[f"{p}.weight"], styles=styles, noise=noise, up=up, padding=1,
                             resample_filter=sd[f"{p}.resample_filter"], flip_weight=(up == 1),
                             fused_modconv=fused_modconv)
    return ops.bias_act(x, sd[f"{p}.bias"], act="lrelu", gain=np.sqrt(2), clamp=conv_clamp)


def to_rgb(sd: State, p: str, x, w, fused_modconv: bool, conv_clamp):
    weight = sd[f"{p}.weight"]
    styles = fully_connected(sd, f"{p}.affine", w) * (1 / np.sqrt(weight.shape[1] * weight.shape[2] * weight.shape[3]))
    x = ops.modulated_conv2d(x=x, weight=weight, styles=styles, demodulate=False, fused_modconv=fused_modconv)
    return ops.bias_act(x, sd[f"{p}.bias"], clamp=conv_clamp)


def synthesis_block(sd: State, p: str, x, img, ws, resolution: int, first: bool, upsample: bool, noise_mode: str,
                    fused_modconv: bool, conv_clamp, generator=None):
    """``SynthesisBlock`` ('skip'); ``upsample=False`` is ``SynthesisBlockNoUp``."""
    w_iter = iter(ws.unbind(dim=1))
    if first:
        x = sd[f"{p}.const"].unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
        x = synthesis_layer(sd, f"{p}.conv1", x, next(w_iter), resolution, 1, noise_mode, fused_modconv, conv_clamp,
                            generator)
    else:
        x = synthesis_layer(sd, f"{p}.conv0", x, next(w_iter), resolution, 2 if upsample else 1, noise_mode,
                            fused_modconv, conv_clamp, generator)
        x = synthesis_layer(sd, f"{p}.conv1", x, next(w_iter), resolution, 1, noise_mode, fused_modconv, conv_clamp,
                            generator)
    if img is not None and upsample:
        img = ops.upsample2d(img, sd[f"{p}.resample_filter"])
    y = to_rgb(sd, f"{p}.torgb", x, next(w_iter), fused_modconv, conv_clamp)
    img = img.add_(y) if img is not None else y
    return x, img


def synthesis_num_ws(cfg) -> int:
    return 2 * (int(np.log2(cfg.plane_resolution)) - 1)


def backbone_synthesis(sd: State, cfg, ws, noise_mode: str = "const", fused_modconv: bool = True, generator=None):
    """``SynthesisNetwork.forward``: the triplanes ``[N, 3 * C, H, W]``."""
    resolutions = [2 ** i for i in range(2, int(np.log2(cfg.plane_resolution)) + 1)]
    x = img = None
    w_idx = 0
    for res in resolutions:
        num_conv = 1 if res == 4 else 2
        cur_ws = ws.narrow(1, w_idx, num_conv + 1)
        w_idx += num_conv
        x, img = synthesis_block(sd, f"backbone.synthesis.b{res}", x, img, cur_ws, res, res == 4, True, noise_mode,
                                 fused_modconv, cfg.conv_clamp, generator)
    return img


# ---------------------------------------------------------------------------------------
# superresolution.py


def superresolution(sd: State, cfg, rgb, x, ws, noise_mode: str = "none", fused_modconv: bool = True, generator=None):
    from ..models.eg3d.superresolution import SR_MODULES

    in_res, _, up0, _, _ = SR_MODULES[cfg.superresolution_module]
    in_res = cfg.sr_input_resolution or in_res
    clamp = 256 if cfg.sr_num_fp16_res > 0 else None
    ws = ws[:, -1:, :].repeat(1, 3, 1)
    if cfg.superresolution_module == "SuperresolutionHybrid4X":
        resize = x.shape[-1] < in_res
    else:
        resize = x.shape[-1] != in_res
    if resize:
        x = F.interpolate(x, size=(in_res, in_res), mode="bilinear", align_corners=False, antialias=cfg.sr_antialias)
        rgb = F.interpolate(rgb, size=(in_res, in_res), mode="bilinear", align_corners=False, antialias=cfg.sr_antialias)
    mid = in_res * 2 if up0 else in_res
    x, rgb = synthesis_block(sd, "superresolution.block0", x, rgb, ws, mid, False, up0, noise_mode, fused_modconv,
                             clamp, generator)
    x, rgb = synthesis_block(sd, "superresolution.block1", x, rgb, ws, cfg.img_resolution, False, True, noise_mode,
                             fused_modconv, clamp, generator)
    return rgb


# ---------------------------------------------------------------------------------------
# volumetric_rendering/


def generate_planes() -> torch.Tensor:
    return torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                         [[1, 0, 0], [0, 0, 1], [0, 1, 0]],
                         [[0, 0, 1], [1, 0, 0], [0, 1, 0]]], dtype=torch.float32)


def project_onto_planes(planes, coordinates):
    N, M, C = coordinates.shape
    n_planes, _, _ = planes.shape
    coordinates = coordinates.unsqueeze(1).expand(-1, n_planes, -1, -1).reshape(N * n_planes, M, 3)
    inv_planes = torch.linalg.inv(planes).unsqueeze(0).expand(N, -1, -1, -1).reshape(N * n_planes, 3, 3)
    return torch.bmm(coordinates, inv_planes)[..., :2]


def sample_from_planes(plane_axes, plane_features, coordinates, box_warp):
    N, n_planes, C, H, W = plane_features.shape
    _, M, _ = coordinates.shape
    plane_features = plane_features.view(N * n_planes, C, H, W)
    coordinates = (2 / box_warp) * coordinates
    projected = project_onto_planes(plane_axes, coordinates).unsqueeze(1)
    out = F.grid_sample(plane_features, projected.float(), mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.permute(0, 3, 2, 1).reshape(N, n_planes, M, C)


def osg_decoder(sd: State, sampled_features, lr_multiplier: float = 1.0):
    x = sampled_features.mean(1)
    N, M, C = x.shape
    x = x.view(N * M, C)
    x = fully_connected(sd, "decoder.net.0", x, lr_multiplier)
    x = F.softplus(x)
    x = fully_connected(sd, "decoder.net.2", x, lr_multiplier)
    x = x.view(N, M, -1)
    rgb = torch.sigmoid(x[..., 1:]) * (1 + 2 * 0.001) - 0.001
    return {"rgb": rgb, "sigma": x[..., 0:1]}


def run_model(sd: State, cfg, planes, coordinates):
    features = sample_from_planes(generate_planes().to(coordinates.device), planes, coordinates, cfg.box_warp)
    return osg_decoder(sd, features, cfg.decoder_lr_mul)


def ray_marcher(colors, densities, depths, white_back: bool):
    """``MipRayMarcher2.run_forward``."""
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
    if white_back:
        composite_rgb = composite_rgb + 1 - weight_total
    composite_rgb = composite_rgb * 2 - 1
    return composite_rgb, composite_depth, weights


def sample_pdf(bins, weights, n_importance, eps=1e-5, generator=None):
    N_rays, N_samples_ = weights.shape
    weights = weights + eps
    pdf = weights / torch.sum(weights, -1, keepdim=True)
    cdf = torch.cumsum(pdf, -1)
    cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf], -1)
    u = torch.rand(N_rays, n_importance, device=bins.device, generator=generator).contiguous()
    inds = torch.searchsorted(cdf, u, right=True)
    below = torch.clamp_min(inds - 1, 0)
    above = torch.clamp_max(inds, N_samples_)
    inds_sampled = torch.stack([below, above], -1).view(N_rays, 2 * n_importance)
    cdf_g = torch.gather(cdf, 1, inds_sampled).view(N_rays, n_importance, 2)
    bins_g = torch.gather(bins, 1, inds_sampled).view(N_rays, n_importance, 2)
    denom = cdf_g[..., 1] - cdf_g[..., 0]
    denom[denom < eps] = 1
    return bins_g[..., 0] + (u - cdf_g[..., 0]) / denom * (bins_g[..., 1] - bins_g[..., 0])


def sample_importance(z_vals, weights, n_importance, generator=None):
    with torch.no_grad():
        batch_size, num_rays, samples_per_ray, _ = z_vals.shape
        z_vals = z_vals.reshape(batch_size * num_rays, samples_per_ray)
        weights = weights.reshape(batch_size * num_rays, -1)
        weights = F.max_pool1d(weights.unsqueeze(1).float(), 2, 1, padding=1)
        weights = F.avg_pool1d(weights, 2, 1).squeeze()
        weights = weights + 0.01
        z_vals_mid = 0.5 * (z_vals[:, :-1] + z_vals[:, 1:])
        return sample_pdf(z_vals_mid, weights[:, 1:-1], n_importance, generator=generator).detach().reshape(
            batch_size, num_rays, n_importance, 1)


def unify_samples(depths1, colors1, densities1, depths2, colors2, densities2):
    all_depths = torch.cat([depths1, depths2], dim=-2)
    all_colors = torch.cat([colors1, colors2], dim=-2)
    all_densities = torch.cat([densities1, densities2], dim=-2)
    _, indices = torch.sort(all_depths, dim=-2)
    all_depths = torch.gather(all_depths, -2, indices)
    all_colors = torch.gather(all_colors, -2, indices.expand(-1, -1, -1, all_colors.shape[-1]))
    all_densities = torch.gather(all_densities, -2, indices.expand(-1, -1, -1, 1))
    return all_depths, all_colors, all_densities


def importance_renderer(sd: State, cfg, planes, ray_origins, ray_directions, generator=None):
    """``ImportanceRenderer.forward`` (numeric ray_start / ray_end, linear or disparity spacing)
    -> ``rgb [N, M, C]`` (``* 2 - 1``), ``depth [N, M, 1]``, ``weights.sum(2)``."""
    N, M, _ = ray_origins.shape
    D = cfg.depth_resolution
    start, end = cfg.ray_start, cfg.ray_end
    if cfg.disparity_space_sampling:
        depths_coarse = torch.linspace(0, 1, D, device=ray_origins.device).reshape(1, 1, D, 1).repeat(N, M, 1, 1)
        depths_coarse += torch.rand(depths_coarse.shape, device=ray_origins.device, generator=generator) / (D - 1)
        depths_coarse = 1. / (1. / start * (1. - depths_coarse) + 1. / end * depths_coarse)
    else:
        depths_coarse = torch.linspace(start, end, D, device=ray_origins.device).reshape(1, 1, D, 1).repeat(N, M, 1, 1)
        depths_coarse += torch.rand(depths_coarse.shape, device=ray_origins.device, generator=generator) \
            * ((end - start) / (D - 1))
    coords = (ray_origins.unsqueeze(-2) + depths_coarse * ray_directions.unsqueeze(-2)).reshape(N, -1, 3)
    out = run_model(sd, cfg, planes, coords)
    colors_coarse = out["rgb"].reshape(N, M, D, out["rgb"].shape[-1])
    densities_coarse = out["sigma"].reshape(N, M, D, 1)
    n_imp = cfg.depth_resolution_importance
    if n_imp > 0:
        _, _, weights = ray_marcher(colors_coarse, densities_coarse, depths_coarse, cfg.white_back)
        depths_fine = sample_importance(depths_coarse, weights, n_imp, generator)
        coords = (ray_origins.unsqueeze(-2) + depths_fine * ray_directions.unsqueeze(-2)).reshape(N, -1, 3)
        out = run_model(sd, cfg, planes, coords)
        colors_fine = out["rgb"].reshape(N, M, n_imp, out["rgb"].shape[-1])
        densities_fine = out["sigma"].reshape(N, M, n_imp, 1)
        depths, colors, densities = unify_samples(depths_coarse, colors_coarse, densities_coarse, depths_fine,
                                                  colors_fine, densities_fine)
        rgb, depth, weights = ray_marcher(colors, densities, depths, cfg.white_back)
    else:
        rgb, depth, weights = ray_marcher(colors_coarse, densities_coarse, depths_coarse, cfg.white_back)
    return rgb, depth, weights.sum(2)


def ray_sampler(cam2world_matrix, intrinsics, resolution):
    N, M = cam2world_matrix.shape[0], resolution ** 2
    dev = cam2world_matrix.device
    cam_locs_world = cam2world_matrix[:, :3, 3]
    fx, fy = intrinsics[:, 0, 0], intrinsics[:, 1, 1]
    cx, cy, sk = intrinsics[:, 0, 2], intrinsics[:, 1, 2], intrinsics[:, 0, 1]
    uv = torch.stack(torch.meshgrid(torch.arange(resolution, dtype=torch.float32, device=dev),
                                    torch.arange(resolution, dtype=torch.float32, device=dev), indexing="ij")) \
        * (1. / resolution) + (0.5 / resolution)
    uv = uv.flip(0).reshape(2, -1).transpose(1, 0)
    uv = uv.unsqueeze(0).repeat(N, 1, 1)
    x_cam = uv[:, :, 0].view(N, -1)
    y_cam = uv[:, :, 1].view(N, -1)
    z_cam = torch.ones((N, M), device=dev)
    x_lift = (x_cam - cx.unsqueeze(-1) + cy.unsqueeze(-1) * sk.unsqueeze(-1) / fy.unsqueeze(-1)
              - sk.unsqueeze(-1) * y_cam / fy.unsqueeze(-1)) / fx.unsqueeze(-1) * z_cam
    y_lift = (y_cam - cy.unsqueeze(-1)) / fy.unsqueeze(-1) * z_cam
    cam_rel_points = torch.stack((x_lift, y_lift, z_cam, torch.ones_like(z_cam)), dim=-1)
    world_rel_points = torch.bmm(cam2world_matrix, cam_rel_points.permute(0, 2, 1)).permute(0, 2, 1)[:, :, :3]
    ray_dirs = F.normalize(world_rel_points - cam_locs_world[:, None, :], dim=2)
    return cam_locs_world.unsqueeze(1).repeat(1, ray_dirs.shape[1], 1), ray_dirs


# ---------------------------------------------------------------------------------------
# triplane.py


def synthesis(sd: State, cfg, ws, c, neural_rendering_resolution: Optional[int] = None, noise_mode: str = "const",
              fused_modconv: bool = True, generator=None) -> Dict[str, torch.Tensor]:
    """``TriPlaneGenerator.synthesis`` -> ``{'image', 'image_raw', 'image_depth', 'feature_image', 'planes'}``."""
    res = neural_rendering_resolution or cfg.neural_rendering_resolution
    cam2world_matrix = c[:, :16].view(-1, 4, 4)
    intrinsics = c[:, 16:25].view(-1, 3, 3)
    ray_origins, ray_directions = ray_sampler(cam2world_matrix, intrinsics, res)
    N, M, _ = ray_origins.shape
    planes = backbone_synthesis(sd, cfg, ws, noise_mode, fused_modconv, generator)
    planes = planes.view(len(planes), 3, cfg.plane_channels, planes.shape[-2], planes.shape[-1])
    feature_samples, depth_samples, _ = importance_renderer(sd, cfg, planes, ray_origins, ray_directions, generator)
    feature_image = feature_samples.permute(0, 2, 1).reshape(N, feature_samples.shape[-1], res, res).contiguous()
    depth_image = depth_samples.permute(0, 2, 1).reshape(N, 1, res, res)
    rgb_image = feature_image[:, :3]
    sr_image = superresolution(sd, cfg, rgb_image, feature_image, ws, cfg.superresolution_noise_mode, fused_modconv,
                               generator)
    return {"image": sr_image, "image_raw": rgb_image, "image_depth": depth_image, "feature_image": feature_image,
            "planes": planes}
