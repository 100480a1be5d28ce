"""SSDNeRF (Chen et al., ICCV 2023): single-stage diffusion NeRF with a triplane latent.

    from fastfields.models.ssdnerf import SSDNeRF
    model = SSDNeRF.from_preset("cars_uncond")          # state dict = the official one
    model = SSDNeRF.from_pretrained("ssdnerf_cars_uncond.safetensors")   # after convert.py

Modules follow the paper's figure: :mod:`.decoder` (TriPlaneDecoder), :mod:`.renderer`
(occupancy-grid marching + packed compositing), :mod:`.unet` (the ADM-style denoiser),
:mod:`.diffusion` (v-prediction Gaussian diffusion, DDIM, guidance), :mod:`.model`,
:mod:`.train` (single-stage training), :mod:`.reconstruct` (sampling, guided reconstruction,
fine-tuning), :mod:`.convert` (official ``.pth`` -> safetensors).
"""

from .config import PRESETS, SSDNeRFConfig
from .decoder import TriPlaneDecoder
from .diffusion import GaussianDiffusion
from .model import SSDNeRF
from .unet import DenoisingUnet

__all__ = ["DenoisingUnet", "GaussianDiffusion", "PRESETS", "SSDNeRF", "SSDNeRFConfig", "TriPlaneDecoder"]
