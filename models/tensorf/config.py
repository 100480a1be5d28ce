"""TensoRF-VM configuration: presets, the official grid-size helpers and the mapping from an
official checkpoint's ``kwargs``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch


from .._pretrained import CheckpointError, ModelConfig
from ..scene import DEFAULT_BOUND

MAT_MODE = ((0, 1), (0, 2), (1, 2))
VEC_MODE = (2, 1, 0)
SHADING_MODES = ("MLP_Fea", "MLP")  # MLP_PE, SH and RGB are not transcribed


def positional_encoding(x: torch.Tensor, freqs: int) -> torch.Tensor:
    """TensoRF's PE: ``[sin(x * 2^k) for every channel and k], then the cosines``."""
    bands = 2.0 ** torch.arange(freqs, device=x.device, dtype=x.dtype)
    scaled = (x[..., None] * bands).reshape(*x.shape[:-1], freqs * x.shape[-1])
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=-1)


def n_to_reso(n_voxels: int, aabb: torch.Tensor) -> List[int]:
    """TensoRF's ``N_to_reso``: grid size with ``n_voxels`` cubic voxels over ``aabb [2, 3]``."""
    size = aabb[1] - aabb[0]
    voxel = (size.prod() / n_voxels).pow(1 / 3)
    return (size / voxel).long().tolist()


def cal_n_samples(reso: Sequence[int], step_ratio: float) -> int:
    return int(np.linalg.norm(reso) / step_ratio)


@dataclass
class TensoRFConfig(ModelConfig):
    """``TensorVMSplit``'s constructor arguments (official names in brackets) and the training
    options of ``train.py`` / ``opt.py`` (defaults: ``configs/lego.txt``).

    ``aabb`` and ``grid_size`` describe the current field (they change when the box shrinks
    and the grid is upsampled; a checkpoint stores the final ones); None for ``aabb`` means
    ``[-bound, bound]^3`` with ``bound`` chosen by ``fit`` (Blender: 1.5). ``alpha_mask_shape``
    / ``alpha_mask_aabb`` describe the AlphaGridMask when there is one.
    """

    density_n_comp: Tuple[int, ...] = (16, 16, 16)  # n_lamb_sigma
    appearance_n_comp: Tuple[int, ...] = (48, 48, 48)  # n_lamb_sh
    app_dim: int = 27  # data_dim_color
    shading_mode: str = "MLP_Fea"
    pos_pe: int = 6
    view_pe: int = 2
    fea_pe: int = 2
    feature_c: int = 128
    density_shift: float = -10.0
    distance_scale: float = 25.0
    fea2dense_act: str = "softplus"
    alpha_mask_thres: float = 1e-4  # alpha_mask_thre
    ray_march_weight_thres: float = 1e-4  # rm_weight_mask_thre
    step_ratio: float = 0.5
    near_far: Tuple[float, float] = (2.0, 6.0)
    bound: Optional[float] = None
    aabb: Optional[Tuple[float, ...]] = None
    grid_size: Optional[Tuple[int, ...]] = None
    alpha_mask_shape: Optional[Tuple[int, ...]] = None
    alpha_mask_aabb: Optional[Tuple[float, ...]] = None
    n_samples_max: int = 1_000_000  # nSamples
    # training (train.py / opt.py)
    iters: int = 30000
    batch_size: int = 4096
    lr_init: float = 0.02
    lr_basis: float = 1e-3
    lr_decay_target_ratio: float = 0.1
    n_voxel_init: int = 2097156  # 128^3
    n_voxel_final: int = 27000000  # 300^3
    upsample_iters: Tuple[int, ...] = (2000, 3000, 4000, 5500, 7000)
    alpha_mask_iters: Tuple[int, ...] = (2000, 4000)
    schedule_scale: Optional[float] = None
    shrink: bool = True
    filter_rays: bool = True
    l1_weight_initial: float = 8e-5
    l1_weight_rest: float = 4e-5
    tv_weight_density: float = 0.0
    tv_weight_app: float = 0.0
    ortho_weight: float = 0.0
    render_chunk: int = 4096

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        if self.shading_mode not in SHADING_MODES:
            raise ValueError(f"{name}: shading_mode must be one of {SHADING_MODES}, got {self.shading_mode!r}")
        if self.fea2dense_act not in ("softplus", "relu"):
            raise ValueError(f"{name}: fea2dense_act must be 'softplus' or 'relu', got {self.fea2dense_act!r}")
        for key in ("density_n_comp", "appearance_n_comp"):
            value = getattr(self, key)
            if len(value) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
                raise ValueError(f"{name}: {key} must be three positive ints, got {value!r}")
        for key in ("app_dim", "feature_c", "iters", "batch_size", "n_voxel_init", "n_voxel_final", "render_chunk"):
            if getattr(self, key) < 1:
                raise ValueError(f"{name}: {key} must be >= 1, got {getattr(self, key)!r}")
        if self.grid_size is not None and (len(self.grid_size) != 3 or min(self.grid_size) < 2):
            raise ValueError(f"{name}: grid_size must be three ints >= 2, got {self.grid_size!r}")
        if self.aabb is not None and (len(self.aabb) != 6 or not all(self.aabb[i] < self.aabb[i + 3] for i in range(3))):
            raise ValueError(f"{name}: aabb must be (xmin, ymin, zmin, xmax, ymax, zmax) with min < max, got {self.aabb!r}")
        if self.bound is not None and not self.bound > 0:
            raise ValueError(f"{name}: bound must be None or > 0, got {self.bound!r}")
        if (self.alpha_mask_shape is None) != (self.alpha_mask_aabb is None):
            raise ValueError(f"{name}: alpha_mask_shape and alpha_mask_aabb go together")
        if not self.step_ratio > 0 or not self.lr_init > 0 or not self.lr_basis > 0:
            raise ValueError(f"{name}: step_ratio, lr_init and lr_basis must be > 0")

    def box(self) -> torch.Tensor:
        """The current ``aabb`` as ``[2, 3]``."""
        if self.aabb is not None:
            return torch.tensor(self.aabb, dtype=torch.float32).reshape(2, 3)
        b = DEFAULT_BOUND if self.bound is None else float(self.bound)
        return torch.tensor([[-b, -b, -b], [b, b, b]], dtype=torch.float32)


PRESETS: Dict[str, TensoRFConfig] = {
    # configs/lego.txt (VM-192, 30k iterations, 4096 rays).
    "paper": TensoRFConfig(),
    # Two CPU cores, 4 views at 100^2: the official field, 600 iterations of 1024 rays (fewer
    # CPU seconds than the ZeroRF cpu preset), and the official stages at 0.075 of their
    # iterations (upsampling at 150, 225, 300, 412, 525; alpha masks at 150, 300). The default
    # iters / 30000 would put the first stage at iteration 20, before four sparse views have
    # grown any density (measured: the loss stays at the white image's 0.048 for the first 60
    # iterations), and the alpha mask taken then would empty the box.
    "cpu": TensoRFConfig(iters=600, batch_size=1024, schedule_scale=0.075),
    # Unit tests: 4 components, 16^3 -> 24^3.
    "tiny": TensoRFConfig(density_n_comp=(4, 4, 4), appearance_n_comp=(4, 4, 4), app_dim=6, feature_c=16,
                          n_voxel_init=16**3, n_voxel_final=24**3, iters=30, batch_size=128, step_ratio=1.0,
                          upsample_iters=(10, 20), alpha_mask_iters=(25, 28), schedule_scale=1.0, render_chunk=1024),
}


#: Official ``get_kwargs`` names -> our config fields.
OFFICIAL_KWARGS = {
    "density_n_comp": "density_n_comp", "appearance_n_comp": "appearance_n_comp", "app_dim": "app_dim",
    "density_shift": "density_shift", "alphaMask_thres": "alpha_mask_thres", "distance_scale": "distance_scale",
    "rayMarch_weight_thres": "ray_march_weight_thres", "fea2denseAct": "fea2dense_act", "near_far": "near_far",
    "step_ratio": "step_ratio", "shadingMode": "shading_mode", "pos_pe": "pos_pe", "view_pe": "view_pe",
    "fea_pe": "fea_pe", "featureC": "feature_c", "aabb": "aabb", "gridSize": "grid_size",
}


def config_from_official_kwargs(kwargs, what: str = "checkpoint") -> TensoRFConfig:
    """A :class:`TensoRFConfig` from an official checkpoint's ``kwargs``; unknown or missing
    keys are listed in a :class:`CheckpointError`."""
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"TensoRF: the {what}'s 'kwargs' must be a dict, got {type(kwargs).__name__}")
    unknown = sorted(set(kwargs) - set(OFFICIAL_KWARGS) - {"device"})
    missing = sorted(set(OFFICIAL_KWARGS) - set(kwargs) - {"aabb", "gridSize"} - {"pos_pe"})
    if unknown or missing or "aabb" not in kwargs or "gridSize" not in kwargs:
        missing = sorted(set(missing) | ({"aabb", "gridSize"} - set(kwargs)))
        raise CheckpointError(f"TensoRF: the {what}'s kwargs do not fit TensorVMSplit: unknown {unknown}, missing {missing}")
    values = {}
    for key, field in OFFICIAL_KWARGS.items():
        if key not in kwargs:
            continue
        value = kwargs[key]
        if isinstance(value, torch.Tensor):
            value = value.reshape(-1).tolist()
        if key in ("density_n_comp", "appearance_n_comp") and isinstance(value, int):
            value = [value] * 3
        values[field] = value
    try:
        return TensoRFConfig.from_dict(values)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"TensoRF: bad kwargs in the {what}: {e}") from None
