"""SSDNeRF's TriPlaneDecoder (``lib/models/decoders/triplane_decoder.py``), parameter names kept.

Per point, each of the three planes ``(x, y), (x, z), (y, z)`` of the scene code
``[3, C, H, W]`` is sampled bilinearly with border padding (``align_corners=False``); the
official code concatenates the samples CHANNEL-major (feature ``c * 3 + plane``). We sample
with ``fastfields.triplane_sample(..., reduce="concat", axes=XYZ_AXES)``, which is
plane-major (``plane * C + c``), and permute the columns of ``base_net.0.weight`` to match at
use: the stored weight stays in the official layout, so official weights give official outputs.

    h     = base_net(f)                        # Linear(3C, 64)
    sigma = trunc_exp(density_net(silu(h)))    # Linear(64, 1)
    rgb   = sigmoid(color_net(silu(h + dir_net(SH4(d))))) * 1.002 - 0.001

World coordinates are plane coordinates (SSDNeRF's bound is 1).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

import fastfields as ff
from fastfields.reference.composite import activate
from fastfields.rendering.sh import sh_encode


class TruncExp(nn.Module):
    """``exp`` forward with a bounded gradient (torch-ngp); no parameters (keeps the indices)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return activate(x, "trunc_exp")


class TriPlaneDecoder(nn.Module):
    """Point decoder of SSDNeRF.

    Args:
        in_channels: ``3C`` (18 in the paper).
        hidden: width (64).
        sh_degree: SH bands of the view direction (4 -> 16 values).
        sigmoid_saturation: colours span ``[-s, 1 + s]``.
        bound: the scene box ``[-bound, bound]^3`` (the ``aabb`` buffer).

    State dict: ``aabb``, ``base_net.0``, ``density_net.0``, ``dir_net.0``, ``color_net.0``.
    """

    def __init__(self, in_channels: int = 18, hidden: int = 64, sh_degree: int = 4,
                 sigmoid_saturation: float = 0.001, bound: float = 1.0) -> None:
        super().__init__()
        if in_channels % 3:
            raise ValueError(f"TriPlaneDecoder: in_channels must be 3 * C, got {in_channels}")
        self.in_channels = in_channels
        self.sh_degree = sh_degree
        self.sigmoid_saturation = sigmoid_saturation
        self.bound = bound
        self.register_buffer("aabb", torch.tensor([-bound, -bound, -bound, bound, bound, bound], dtype=torch.float32))
        self.base_net = nn.Sequential(nn.Linear(in_channels, hidden))
        self.density_net = nn.Sequential(nn.Linear(hidden, 1), TruncExp())
        self.dir_net = nn.Sequential(nn.Linear(sh_degree**2, hidden))
        self.color_net = nn.Sequential(nn.Linear(hidden, 3), nn.Sigmoid())
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """mmcv ``xavier_init(distribution='uniform')`` on every Linear, zero ``dir_net``'s last layer."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.dir_net[-1].weight)
        nn.init.zeros_(self.dir_net[-1].bias)

    def plane_major_weight(self) -> torch.Tensor:
        """``base_net.0.weight`` with its columns reordered from ``c * 3 + p`` to ``p * C + c``."""
        w = self.base_net[0].weight
        return w.view(w.shape[0], self.in_channels // 3, 3).transpose(1, 2).reshape(w.shape[0], self.in_channels)

    def features(self, code: torch.Tensor, xyz: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        """Plane-major triplane features ``[S, N, 3C]`` of points ``xyz [S, N, 3]`` in codes ``[S, 3, C, H, W]``."""
        return ff.triplane_sample(code, xyz, reduce="concat", padding="border", align_corners=False,
                                  axes=ff.XYZ_AXES, backend=backend)

    def decode(self, features: torch.Tensor, dirs: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``features [M, 3C]`` (plane-major) and unit ``dirs [M, 3]`` -> raw density ``[M]``
        (before trunc_exp) and colour ``[M, 3]`` (None without directions)."""
        base = F.linear(features, self.plane_major_weight(), self.base_net[0].bias)
        act = F.silu(base)
        sigma = self.density_net[0](act).squeeze(-1)
        if dirs is None:
            return sigma, None
        sh = sh_encode(dirs, self.sh_degree).to(base.dtype)
        rgb = self.color_net(F.silu(base + self.dir_net(sh)))
        if self.sigmoid_saturation > 0:
            rgb = rgb * (1 + self.sigmoid_saturation * 2) - self.sigmoid_saturation
        return sigma, rgb

    def point_decode(self, xyz: torch.Tensor, dirs: Optional[torch.Tensor], code: torch.Tensor,
                     backend: str = "auto") -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The official ``point_decode`` for ``xyz [S, N, 3]``, ``dirs [S, N, 3]`` or None, codes
        ``[S, 3, C, H, W]``: density ``[S*N]`` (after trunc_exp) and colour ``[S*N, 3]``."""
        feats = self.features(code, xyz, backend).reshape(-1, self.in_channels)
        sigma, rgb = self.decode(feats, None if dirs is None else dirs.reshape(-1, 3))
        return activate(sigma, "trunc_exp"), rgb

    @torch.no_grad()
    def density(self, code: torch.Tensor, xyz: torch.Tensor, backend: str = "auto", chunk: int = 1 << 18) -> torch.Tensor:
        """Density (after trunc_exp) ``[S, N]`` of points ``xyz [S, N, 3]`` (for grids and meshes)."""
        out = []
        for part in xyz.split(chunk, dim=1):
            out.append(self.point_decode(part, None, code, backend)[0].view(xyz.shape[0], -1))
        return torch.cat(out, dim=1)
