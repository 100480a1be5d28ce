"""TensoRF-VM (Chen et al., ECCV 2022), ``TensorVMSplit`` as ``apchenstu/TensoRF`` trains it: the
baseline the ZeroRF paper compares with.

The field (``models/tensoRF.py``, ``models/tensorBase.py``):

- separate density and appearance factors: per axis pair k (``matMode`` [[0,1],[0,2],[1,2]],
  planes XY, XZ, YZ; ``vecMode`` [2,1,0], lines Z, Y, X) a plane ``[1, R_k, N_{m1}, N_{m0}]``
  and a line ``[1, R_k, N_{vec}, 1]``, R = ``n_lamb_sigma`` (16) for density and ``n_lamb_sh``
  (48) for appearance, initialised ``0.1 * randn``; sampled with ``align_corners=True``, zero
  padding, at ``normalize_coord(xyz) = (xyz - aabb_min) * 2 / (aabb_max - aabb_min) - 1``;
  all through the fused ``fastfields.tensorf_vm_sample`` (``reduce="sum"`` for the density,
  ``"concat"`` for the appearance);
- density ``softplus(feature + density_shift)`` (-10), alpha ``1 - exp(-sigma * dist *
  distance_scale)`` (25); appearance ``basis_mat`` (144 -> 27, no bias) and the ``MLP_Fea``
  shader ``[f, d, PE(f, fea_pe), PE(d, view_pe)] -> 128 -> 128 -> 3``, ReLU, sigmoid;
- rays sampled uniformly from the box entry (clamped to ``near_far``) with step ``mean(aabb
  size / (gridSize - 1)) * step_ratio`` (0.5), one jitter per ray while training, the last
  interval of each ray empty; samples outside the box or the alpha mask are empty; colour is
  decoded only where the weight exceeds ``rayMarch_weight_thres`` (1e-4); white background.

Training (``train.py`` with ``configs/lego.txt``): Adam (0.9, 0.99), lr 0.02 for the factors and
1e-3 for ``basis_mat`` and the shader, decayed by ``0.1^(1/iters)`` per iteration and reset at
each upsampling; coarse-to-fine ``128^3 -> 300^3`` voxels (log-linear steps) at iterations
2000, 3000, 4000, 5500, 7000; ``AlphaGridMask`` updates at 2000 (then the box shrinks to the
mask and the L1 weight drops from 8e-5 to 4e-5) and 4000 (then rays that miss the mask are
dropped); L1 on the density factors; optional TV / orthogonality terms (0 in lego.txt). The
iterations of the schedule scale with ``schedule_scale`` (default ``iters / 30000``) so that a
short run passes through the same stages.

Modules: ``config`` (presets, grid-size helpers, official ``kwargs``) and ``model`` (the field,
its shader, training and rendering).

Checkpoints: :meth:`TensoRF.from_official` reads an official ``.th`` (``{'kwargs',
'state_dict', 'alphaMask.*'}``) with the restricted unpickler and loads it strictly (parameter
names are the official ones); ``save_pretrained`` / ``from_pretrained`` use our safetensors format.

    >>> from fastfields.models.tensorf import TensoRF
    >>> model = TensoRF.fit(images, c2w, focal, config="cpu")      # doctest: +SKIP
    >>> frames = model.render(c2w_test, 100, 100, focal)             # doctest: +SKIP
"""

from .config import (
    PRESETS,
    MAT_MODE,
    OFFICIAL_KWARGS,
    SHADING_MODES,
    VEC_MODE,
    TensoRFConfig,
    cal_n_samples,
    config_from_official_kwargs,
    n_to_reso,
    positional_encoding,
)
from .model import MLPRenderFea, TensoRF

__all__ = [
    "MAT_MODE", "OFFICIAL_KWARGS", "PRESETS", "SHADING_MODES", "VEC_MODE", "MLPRenderFea", "TensoRF", "TensoRFConfig",
    "cal_n_samples", "config_from_official_kwargs", "n_to_reso", "positional_encoding",
]
