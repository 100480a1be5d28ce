"""Image metrics for view synthesis: PSNR and SSIM, as NeRF papers report them.

Both take images ``[H, W, C]`` or batches ``[B, H, W, C]`` (tensors or numpy arrays, float in
``[0, 1]`` or uint8) and return the mean over the batch as a float, or one value per image
with ``reduction="none"``.

SSIM is scikit-image's ``structural_similarity`` with the settings of Wang et al. (2004)
that the NeRF literature uses (mip-NeRF, TensoRF, ZeroRF): an 11x11 Gaussian window with
sigma 1.5, population covariances, K1 = 0.01, K2 = 0.03, data range 1, averaged over the
colour channels.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

from .data import to_float_images

Images = Union[torch.Tensor, np.ndarray]
REDUCTIONS = ("mean", "none")


def _pair(op: str, pred: Images, target: Images):
    pred = to_float_images(pred, name="pred", op=op)
    target = to_float_images(target, name="target", op=op)
    if pred.shape != target.shape:
        raise ValueError(f"{op}: pred shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}")
    if pred.dim() not in (3, 4):
        raise ValueError(f"{op}: images must be [H, W, C] or [B, H, W, C], got shape {tuple(pred.shape)}")
    if pred.dim() == 3:
        pred, target = pred[None], target[None]
    return pred.detach().cpu().double(), target.detach().cpu().double()


def _reduce(op: str, values: torch.Tensor, reduction: str):
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return float(values.mean()) if reduction == "mean" else values


def psnr(pred: Images, target: Images, *, reduction: str = "mean"):
    """Peak signal-to-noise ratio in dB, ``-10 log10(MSE)`` per image (peak 1).

    Averaging per-image PSNRs (not the PSNR of the pooled MSE) is the NeRF convention.
    Identical images give ``inf``."""
    op = "psnr"
    pred, target = _pair(op, pred, target)
    mse = ((pred - target) ** 2).flatten(1).mean(dim=1)
    return _reduce(op, -10.0 * torch.log10(mse), reduction)


def ssim(pred: Images, target: Images, *, reduction: str = "mean"):
    """Structural similarity (Gaussian window 11, sigma 1.5; see the module docstring)."""
    op = "ssim"
    pred, target = _pair(op, pred, target)
    if min(pred.shape[1:3]) < 11:
        raise ValueError(f"{op}: images must be at least 11x11 pixels for the 11x11 window, got {tuple(pred.shape[1:3])}")
    from skimage.metrics import structural_similarity

    values = [
        structural_similarity(
            p.numpy(), t.numpy(), channel_axis=-1, data_range=1.0,
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        )
        for p, t in zip(pred, target)
    ]
    return _reduce(op, torch.tensor(values, dtype=torch.float64), reduction)
