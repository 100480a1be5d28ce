"""Where to sample along rays: stratified depths, importance (inverse-CDF) samples, and
EG3D's weight smoothing and sample merge for its two-pass renderer.

EG3D's importance pass, written with these functions (``t`` the coarse depths
``[R, S]``, ``w`` the ``S - 1`` interval weights its MipRayMarcher2 returns)::

    t_mid = 0.5 * (t[:, :-1] + t[:, 1:])
    t_fine = sample_pdf(t_mid[:, :-1], smooth_weights(w)[:, 1:-1], n_importance, deterministic=False)
    t_all, order = merge_samples(t, t_fine)

(EG3D's ``sample_pdf`` receives all ``S - 1`` midpoints but only ``S - 3`` weights, so
its last midpoint is never used; ``t_mid[:, :-1]`` states that explicitly.)
"""

from __future__ import annotations

from numbers import Real
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

from .._checks import check_bool, check_choice, check_same_device
from .._enums import Spacing
from .cameras import check_float_tensor

SPACINGS = Spacing.names()  # ("linear", "disparity")


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def _check_count(op: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{op}: {name} must be a positive int, got {value!r}")
    return value


def _check_generator(op: str, generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{op}: generator must be a torch.Generator or None, got {type(generator).__name__}")


def stratified_samples(
    t_near: Union[torch.Tensor, float],
    t_far: Union[torch.Tensor, float],
    n_samples: int,
    *,
    perturb: bool = False,
    generator: Optional[torch.Generator] = None,
    spacing: str = "linear",
) -> torch.Tensor:
    """``n_samples`` depths per ray between ``t_near`` and ``t_far``, as EG3D samples them.

    Unperturbed, the samples are evenly spaced and include both ends (EG3D's and
    NeRF's ``linspace(t_near, t_far, S)``): sample ``i`` sits at fraction
    ``s_i = i / (S - 1)`` of the way. With ``spacing="disparity"`` the fractions are
    taken in inverse depth, ``t = 1 / ((1 - s) / t_near + s / t_far)``.

    ``perturb=True`` is EG3D's jitter: each sample independently moves forward by a
    uniform fraction of one spacing, ``s_i = (i + u_i) / (S - 1)``, ``u_i ~ U[0, 1)``
    (EG3D jitters every sample, also at inference). Samples stay in order, and the
    last one lies past ``t_far`` by up to one spacing, as in EG3D; compositing the
    ``S - 1`` intervals between consecutive samples (EG3D's MipRayMarcher2) covers
    ``[t_near, t_far]`` on average.

    Args:
        t_near, t_far: tensors of broadcastable shapes ``[...]`` (one of them may be a
            float); ``t_far >= t_near``. ``spacing="disparity"`` needs positive bounds,
            and with ``perturb`` also ``t_far <= n_samples * t_near`` (otherwise the
            jittered last sample would pass infinite depth).
        n_samples: ``S >= 1`` (a single sample sits at ``t_near``, jittered over the
            whole interval).
        perturb: jitter as above.
        generator: for the jitter.
        spacing: ``"linear"`` (in depth) or ``"disparity"`` (in inverse depth).

    Returns:
        ``t [..., S]``, ascending along the last dim; float32 (float64 if a bound is).
    """
    op = "stratified_samples"
    tensors = [(name, v) for name, v in (("t_near", t_near), ("t_far", t_far)) if isinstance(v, torch.Tensor)]
    if not tensors:
        raise TypeError(f"{op}: t_near or t_far must be a tensor [...] (the other may be a float), got two numbers")
    for name, value in (("t_near", t_near), ("t_far", t_far)):
        if isinstance(value, torch.Tensor):
            check_float_tensor(op, name, value, "[...]")
        elif isinstance(value, bool) or not isinstance(value, Real):
            raise TypeError(f"{op}: {name} must be a tensor or a float, got {type(value).__name__}")
    check_same_device(op, tensors)
    _check_count(op, "n_samples", n_samples)
    check_bool(op, "perturb", perturb)
    _check_generator(op, generator)
    check_choice(op, "spacing", spacing, SPACINGS)

    ref = tensors[0][1]
    dtype = max((_compute_dtype(v) for _, v in tensors), key=lambda d: d.itemsize)
    near = torch.as_tensor(t_near, dtype=dtype, device=ref.device)
    far = torch.as_tensor(t_far, dtype=dtype, device=ref.device)
    try:
        near, far = torch.broadcast_tensors(near, far)
    except RuntimeError:
        raise ValueError(f"{op}: t_near of shape {tuple(near.shape)} and t_far of shape {tuple(far.shape)} do not broadcast") from None
    if spacing == "disparity":
        if not bool(((near > 0) & (far > 0)).all()):
            raise ValueError(f"{op}: spacing='disparity' needs t_near > 0 and t_far > 0")
        if perturb and n_samples > 1 and not bool((far <= n_samples * near).all()):
            raise ValueError(
                f"{op}: spacing='disparity' with perturb needs t_far <= n_samples * t_near (the jitter moves the last "
                "sample up to one spacing past t_far in inverse depth, which would pass infinite depth); use perturb=False "
                "or more samples"
            )

    steps = torch.arange(n_samples, dtype=dtype, device=ref.device).expand(*near.shape, n_samples)
    if perturb:
        steps = steps + torch.rand(steps.shape, generator=generator, dtype=dtype, device=ref.device)
    s = steps / max(n_samples - 1, 1)
    near, far = near.unsqueeze(-1), far.unsqueeze(-1)
    if spacing == "linear":
        return near + s * (far - near)
    return 1.0 / ((1.0 - s) / near + s / far)


def sample_pdf(
    bins: torch.Tensor,
    weights: torch.Tensor,
    n_samples: int,
    *,
    deterministic: bool = True,
    eps: float = 1e-5,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Inverse-CDF samples from the piecewise-constant density ``weights`` on ``bins``
    (NeRF's and EG3D's ``sample_pdf``).

    Bin ``k`` spans ``[bins[..., k], bins[..., k + 1]]`` and is drawn with probability
    ``(weights[..., k] + eps) / sum(weights + eps)``, uniformly inside. Each sample is
    the inverse CDF at ``u``: ``u = linspace(0, 1, n_samples)`` when ``deterministic``
    (so the first and last samples are the ends of ``bins``), else sorted
    ``U[0, 1)`` draws. Bins whose probability is below ``eps`` are never entered.

    Not differentiable: ``bins`` and ``weights`` are detached, as EG3D samples under
    ``no_grad``.

    Args:
        bins: ``[..., S + 1]`` bin edges, ascending.
        weights: ``[..., S]`` non-negative weights (need not sum to one).
        n_samples: samples per ray.
        deterministic: evenly spaced ``u`` instead of random (EG3D draws random ones).
        eps: added to every weight, and the smallest CDF step that is interpolated.
        generator: for the random ``u``.

    Returns:
        ``t [..., n_samples]``, ascending, in the dtype of ``bins`` (computed in float32
        or float64).
    """
    op = "sample_pdf"
    check_float_tensor(op, "bins", bins, "[..., S + 1]")
    check_float_tensor(op, "weights", weights, "[..., S]")
    if weights.dim() < 1 or weights.shape[-1] < 1:
        raise ValueError(f"{op}: weights must have shape [..., S] with S >= 1, got shape {tuple(weights.shape)}")
    if bins.shape[:-1] != weights.shape[:-1] or bins.shape[-1] != weights.shape[-1] + 1:
        raise ValueError(
            f"{op}: bins must have shape [..., S + 1] for weights of shape [..., S], got bins {tuple(bins.shape)} "
            f"and weights {tuple(weights.shape)}"
        )
    check_same_device(op, [("bins", bins), ("weights", weights)])
    _check_count(op, "n_samples", n_samples)
    check_bool(op, "deterministic", deterministic)
    if isinstance(eps, bool) or not isinstance(eps, Real) or eps <= 0:
        raise ValueError(f"{op}: eps must be a positive float, got {eps!r}")
    _check_generator(op, generator)

    dtype = _compute_dtype(bins)
    n_bins = weights.shape[-1]
    edges = bins.detach().to(dtype).reshape(-1, n_bins + 1)
    w = weights.detach().to(dtype).reshape(-1, n_bins) + eps
    n_rays = w.shape[0]
    cdf = torch.cumsum(w / w.sum(dim=-1, keepdim=True), dim=-1)
    cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf], dim=-1)  # [R, S + 1], 0 .. 1

    if deterministic:
        u = torch.linspace(0.0, 1.0, n_samples, dtype=dtype, device=bins.device).expand(n_rays, n_samples)
    else:
        u = torch.rand(n_rays, n_samples, generator=generator, dtype=dtype, device=bins.device).sort(dim=-1).values
    u = u.contiguous()
    above = torch.searchsorted(cdf, u, right=True)
    below = (above - 1).clamp_min(0)
    above = above.clamp_max(n_bins)
    cdf_below, cdf_above = cdf.gather(1, below), cdf.gather(1, above)
    edge_below, edge_above = edges.gather(1, below), edges.gather(1, above)
    step = cdf_above - cdf_below
    step = torch.where(step < eps, torch.ones_like(step), step)  # a bin never drawn: any fraction will do
    t = edge_below + (u - cdf_below) / step * (edge_above - edge_below)
    return t.reshape(*weights.shape[:-1], n_samples).to(bins.dtype)


def smooth_weights(weights: torch.Tensor, *, padding: float = 0.01) -> torch.Tensor:
    """EG3D's (and mip-NeRF's) blur of the coarse weights before importance sampling.

    ``max_pool1d(kernel 2, stride 1, pad 1)`` then ``avg_pool1d(kernel 2, stride 1)``,
    plus ``padding``: ``out_i = (max(w_{i-1}, w_i) + max(w_i, w_{i+1})) / 2 + padding``,
    with the missing neighbours of the two end weights ignored. The padding keeps
    some samples in empty space.

    Args:
        weights: ``[..., S]``.
        padding: added to every smoothed weight (EG3D: 0.01).

    Returns:
        ``[..., S]`` in the dtype of ``weights`` (computed in float32 or float64).
    """
    op = "smooth_weights"
    check_float_tensor(op, "weights", weights, "[..., S]")
    if weights.dim() < 1 or weights.shape[-1] < 1:
        raise ValueError(f"{op}: weights must have shape [..., S] with S >= 1, got shape {tuple(weights.shape)}")
    if isinstance(padding, bool) or not isinstance(padding, Real):
        raise TypeError(f"{op}: padding must be a float, got {padding!r}")
    n = weights.shape[-1]
    w = weights.to(_compute_dtype(weights)).reshape(-1, 1, n)
    w = F.max_pool1d(w, kernel_size=2, stride=1, padding=1)  # [.., 1, S + 1]
    w = F.avg_pool1d(w, kernel_size=2, stride=1)  # [.., 1, S]
    return (w + padding).reshape(weights.shape).to(weights.dtype)


def merge_samples(t_coarse: torch.Tensor, t_fine: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Coarse and fine depths of each ray in one ascending list (EG3D's ``unify_samples``).

    Args:
        t_coarse: ``[..., S1]``.
        t_fine: ``[..., S2]``, same leading shape and dtype.

    Returns:
        ``t [..., S1 + S2]`` ascending, and ``order [..., S1 + S2]`` (int64) with
        ``t = cat([t_coarse, t_fine], -1).gather(-1, order)``; ties keep coarse
        samples first. Gather per-sample features the same way::

            feats = torch.cat([f_coarse, f_fine], dim=-2)  # [..., S1 + S2, C]
            feats = feats.gather(-2, order.unsqueeze(-1).expand_as(feats))
    """
    op = "merge_samples"
    check_float_tensor(op, "t_coarse", t_coarse, "[..., S1]")
    check_float_tensor(op, "t_fine", t_fine, "[..., S2]")
    if t_coarse.dim() < 1 or t_fine.shape[:-1] != t_coarse.shape[:-1] or t_fine.dim() != t_coarse.dim():
        raise ValueError(
            f"{op}: t_fine must have the leading shape of t_coarse, got t_coarse {tuple(t_coarse.shape)} "
            f"and t_fine {tuple(t_fine.shape)}"
        )
    if t_fine.dtype != t_coarse.dtype:
        raise TypeError(f"{op}: t_fine must have the dtype of t_coarse ({t_coarse.dtype}), got {t_fine.dtype}")
    check_same_device(op, [("t_coarse", t_coarse), ("t_fine", t_fine)])
    t, order = torch.sort(torch.cat([t_coarse, t_fine], dim=-1), dim=-1, stable=True)
    return t, order
