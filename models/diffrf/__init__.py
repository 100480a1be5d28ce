"""DiffRF (Müller et al., CVPR 2023): denoising diffusion over explicit voxel radiance fields.

Modules, as the paper's figure: :mod:`.field` (the 32^3 x 4 voxel radiance field, rendered
with ``ff.voxel_sample`` + ``ff.composite``; fitting ground-truth fields to posed views and
caching them), :mod:`.unet3d` (the ADM-style 3D U-Net denoiser), :mod:`.diffusion` (DDPM
schedule, ancestral / DDIM sampling, RePaint completion, rendering-guided synthesis),
:mod:`.model` (:class:`DiffRF`), :mod:`.train` (the loss ``L_RF + alpha_bar_t^2 L_RGB``,
EMA, AMP, DDP), :mod:`.metrics` (COV / MMD by Chamfer distance), :mod:`.synthetic`
(procedural test objects). No official code exists; see ``config.py`` for every choice.
"""

from .config import PRESETS, DiffRFConfig
from .diffusion import GaussianDiffusion, repaint_positions
from .field import FieldCache, fit_field, render_rays, render_views, voxelize_mesh
from .model import DiffRF
from .unet3d import UNet3D

__all__ = ["PRESETS", "DiffRF", "DiffRFConfig", "FieldCache", "GaussianDiffusion", "UNet3D", "fit_field",
           "render_rays", "render_views", "repaint_positions", "voxelize_mesh"]
