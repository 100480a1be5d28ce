"""Real spherical harmonics of view directions, torch-ngp's ``SHEncoder`` basis.

torch-ngp (and SSDNeRF / ZeroRF, which build on it) number the bands by ``degree``: degree
``d`` gives the ``d**2`` functions of orders ``l < d``, so degree 3 is 9 values (l = 0, 1, 2)
and degree 4 is 16. The basis and its signs are those of Sloan's "Stupid SH tricks" (the
ones tiny-cuda-nn, torch-ngp and 3D Gaussian splatting hard-code): with ``(x, y, z)`` the unit
direction,

    l = 0:  0.28209479 (= 1 / (2 sqrt(pi)))
    l = 1:  -0.48860251 y,  0.48860251 z,  -0.48860251 x
    l = 2:  1.09254843 xy,  -1.09254843 yz,  0.94617470 z^2 - 0.31539157,
            -1.09254843 xz,  0.54627422 (x^2 - y^2)
    l = 3:  the seven cubic terms below.

Directions are used as given (torch-ngp does not normalise them either); pass unit vectors.
"""

from __future__ import annotations

import torch

SH_DEGREES = (1, 2, 3, 4)

# Constants named by their closed forms in the docstring above.
C0 = 0.28209479177387814  # 1 / (2 sqrt(pi))
C1 = 0.48860251190291987  # sqrt(3) / (2 sqrt(pi))
C2 = (1.0925484305920792, 0.94617469575755997, 0.31539156525251999, 0.54627421529603959)
C3 = (0.59004358992664352, 2.8906114426405538, 0.45704579946446572, 0.3731763325901154, 1.4453057213202769)


def sh_encode(directions: torch.Tensor, degree: int = 3) -> torch.Tensor:
    """Spherical-harmonics encoding of directions.

    Args:
        directions: ``[..., 3]`` float, unit length.
        degree: number of bands, 1 to 4 (torch-ngp's ``degree``; ZeroRF uses 3, SSDNeRF 4).

    Returns:
        ``[..., degree**2]`` in the directions' dtype, differentiable to them.
    """
    op = "sh_encode"
    if not isinstance(directions, torch.Tensor) or not directions.is_floating_point():
        raise TypeError(f"{op}: directions must be a float tensor [..., 3], got {type(directions).__name__}")
    if directions.dim() < 1 or directions.shape[-1] != 3:
        raise ValueError(f"{op}: directions must have shape [..., 3], got shape {tuple(directions.shape)}")
    if degree not in SH_DEGREES or isinstance(degree, bool):
        raise ValueError(f"{op}: degree must be one of {SH_DEGREES}, got {degree!r}")
    x, y, z = directions.unbind(-1)
    out = [torch.full_like(x, C0)]
    if degree > 1:
        out += [-C1 * y, C1 * z, -C1 * x]
    if degree > 2:
        xy, yz, xz, x2, y2, z2 = x * y, y * z, x * z, x * x, y * y, z * z
        out += [C2[0] * xy, -C2[0] * yz, C2[1] * z2 - C2[2], -C2[0] * xz, C2[3] * (x2 - y2)]
    if degree > 3:
        out += [
            C3[0] * y * (-3.0 * x2 + y2),
            C3[1] * xy * z,
            C3[2] * y * (1.0 - 5.0 * z2),
            C3[3] * z * (5.0 * z2 - 3.0),
            C3[2] * x * (1.0 - 5.0 * z2),
            C3[4] * z * (x2 - y2),
            C3[0] * x * (-x2 + 3.0 * y2),
        ]
    return torch.stack(out, dim=-1)
