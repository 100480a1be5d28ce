"""Triton kernels of the fused triplane renderer (``fastfields.render_triplane``).

One program owns a tile of BLOCK_R rays of one batch element, one ray per row of every
register tile, and walks their samples in order. Per sample it computes the point, reads
the four bilinear taps of each plane (channels-last rows, BLOCK_C channels at a time),
runs the decoder MLP with ``tl.dot`` on ``[BLOCK_R, *]`` tiles, applies the density and
colour activations and composites, carrying only the per-ray transmittance, the colour /
depth / opacity sums and, in eg3d mode, the previous sample (its interval needs both
ends). Per-sample features, activations and weights never reach memory.

The backward re-walks each tile (flash-attention style): it rebuilds the transmittance in
forward order, takes the weighted sum behind each interval as ``total - prefix`` (as the
composite kernels do), recomputes the sample's MLP and back-propagates through it. The
hidden activations are recomputed from the first layer's output instead of being kept
(a dynamic number of layers cannot live in registers): ``L (L + 1) / 2`` extra hidden
products per sample, one for OpenLRM's two hidden layers. Plane gradients are atomic adds
at the 4 taps x 3 planes. Weight gradients are atomic adds of per-sample tile products
(``K = BLOCK_R`` rays each) into one of NREP replicas, summed by the launcher: replicas
keep programs running side by side off each other's addresses, and the first layer
(up to 64 x 240) and a runtime number of hidden layers do not fit a register budget.

Semantics: ``fastfields/reference/render_triplane.py`` (``render_pass_reference``) with
the compositing of ``csrc/include/fastfields/composite.h``; the bilinear taps are
``F.grid_sample``'s (as ``_grid.py``). Integer codes are those of
``fastfields/_enums.py`` (Reduce, RenderMode, HiddenActivation, ColorActivation, ...).

Padding to tensor-core shapes: ``tl.dot`` needs every dimension >= 16, so the hidden
width is padded to HD_P (a power of two >= 16), the outputs to O_P and the channels are
read BLOCK_C (16, 32 or 64) at a time. The launchers pack the decoder once per call
(``_Packing``): transposed to [in, out] and zero-padded, so padded lanes stay exactly zero
through every layer (their activation derivatives multiply zeros) and every weight tile is
an unmasked load at compile-time strides; the weight gradients come back through padded
replicas the launcher sums and unpads.

Register budget (sm_90, OpenLRM: C = 80, hidden 64, two hidden layers): the channel count
and output count are compile-time constants and texel offsets int32, so address and mask
tiles stay small. Whatever is loop-invariant across the sample loop is hoisted and stays
live (or spills) for all of it: hence no masked runtime-stride weight tiles, and the
backward re-reads the rays per sample and runs eg3d's first step on zeros instead of
peeling it off the loop.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
import triton
import triton.language as tl

from .._enums import ColorActivation, HiddenActivation, Padding, Reduce, RenderMode
from .composite import _activate, _activate_grad

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

#: Precision of the MLP's tl.dot. The interpreter only does exact float32 ("ieee"). On GPU,
#: "tf32x3" (three TF32 tensor-core products, about float32 accuracy) keeps the decoder
#: within the tests' 1e-3 of the float32 reference where plain "tf32" (10-bit mantissa)
#: over 240 input features would not reliably.
DOT_PRECISION = "ieee" if _INTERPRET else "tf32x3"

# Option codes (fastfields/_enums.py) as the kernels read them.
REDUCE_CONCAT = tl.constexpr(int(Reduce.CONCAT))
REDUCE_MEAN = tl.constexpr(int(Reduce.MEAN))
MODE_NERF = tl.constexpr(int(RenderMode.NERF))
MODE_EG3D = tl.constexpr(int(RenderMode.EG3D))
HID_RELU = tl.constexpr(int(HiddenActivation.RELU))
HID_SILU = tl.constexpr(int(HiddenActivation.SILU))
COL_SIGMOID_CLAMPED = tl.constexpr(int(ColorActivation.SIGMOID_CLAMPED))
COL_SIGMOID = tl.constexpr(int(ColorActivation.SIGMOID))
COL_NONE = tl.constexpr(int(ColorActivation.NONE))
#: EG3D's MipRayMarcher2 transmittance eps (fastfields.reference.composite).
EG3D_EPS = tl.constexpr(1e-10)
#: OpenLRM / EG3D's clamped sigmoid: sigmoid(x) * (1 + 2 * SIGMOID_CLAMP) - SIGMOID_CLAMP.
SIGMOID_CLAMP = tl.constexpr(0.001)


# --------------------------------------------------------------------------- activations


@triton.jit
def _hidden_act(x, ACT: tl.constexpr):
    """Hidden activation: 0 relu, 1 silu, 2 softplus (beta 1, threshold 20, as torch)."""
    if ACT == HID_RELU:
        y = tl.where(x > 0.0, x, 0.0)
    elif ACT == HID_SILU:
        y = x * (1.0 / (1.0 + tl.exp(-x)))
    else:
        # composite._log1p written out (a nested jit call costs the interpreter dearly).
        z = tl.exp(tl.minimum(x, 20.0))
        u = 1.0 + z
        y = tl.where(x > 20.0, x, tl.where(u == 1.0, z, tl.log(u) * (z / (u - 1.0))))
    return y


@triton.jit
def _hidden_act_grad(x, ACT: tl.constexpr):
    if ACT == HID_RELU:
        d = tl.where(x > 0.0, 1.0, 0.0)
    elif ACT == HID_SILU:
        s = 1.0 / (1.0 + tl.exp(-x))
        d = s * (1.0 + x * (1.0 - s))
    else:
        d = tl.where(x > 20.0, 1.0, (1.0 / (1.0 + tl.exp(-x))))
    return d


@triton.jit
def _color_act(x, COLOR: tl.constexpr):
    """Colour activation: 0 sigmoid_clamped, 1 sigmoid, 2 none."""
    if COLOR == COL_SIGMOID_CLAMPED:
        y = (1.0 / (1.0 + tl.exp(-x))) * (1.0 + 2.0 * SIGMOID_CLAMP) - SIGMOID_CLAMP
    elif COLOR == COL_SIGMOID:
        y = 1.0 / (1.0 + tl.exp(-x))
    else:
        y = x
    return y


@triton.jit
def _color_act_grad(x, COLOR: tl.constexpr):
    if COLOR == COL_NONE:
        d = tl.full(x.shape, 1.0, tl.float32)
    else:
        s = 1.0 / (1.0 + tl.exp(-x))
        d = s * (1.0 - s)
        if COLOR == COL_SIGMOID_CLAMPED:
            d = d * (1.0 + 2.0 * SIGMOID_CLAMP)
    return d


# --------------------------------------------------------------------------- geometry and taps


@triton.jit
def _coords(ox, oy, oz, dx, dy, dz, t, scale, rows):
    """Plane coordinates of the samples at depth t; non-finite ones become 0 (and not ok).

    ``outside`` is OpenLRM's out-of-box test on the raw coordinates (inf counts as outside,
    NaN does not, as ``(coords.abs() > 1).any(-1)`` in the reference)."""
    x = (ox + t * dx) * scale
    y = (oy + t * dy) * scale
    z = (oz + t * dz) * scale
    outside = (tl.abs(x) > 1.0) | (tl.abs(y) > 1.0) | (tl.abs(z) > 1.0)
    # |nan| < inf and |inf| < inf are both false: one test catches every non-finite value.
    ok = rows & (tl.abs(x) < float("inf")) & (tl.abs(y) < float("inf")) & (tl.abs(z) < float("inf"))
    return tl.where(ok, x, 0.0), tl.where(ok, y, 0.0), tl.where(ok, z, 0.0), ok, outside


@triton.jit
def _plane_setup(u, v, W, H, ALIGN_CORNERS: tl.constexpr, BORDER: tl.constexpr):
    """Top-left texel, fractional weights and in-range masks of one plane's bilinear taps.

    _grid._bilinear_setup without the index gradients (no gradient flows to the points
    here), written out in one function: under the interpreter every nested jit call costs
    as much as a dozen tile operations, and this runs three times per sample."""
    if ALIGN_CORNERS:
        ix = (u + 1) / 2 * (W - 1)
        iy = (v + 1) / 2 * (H - 1)
    else:
        ix = ((u + 1) * W - 1) / 2
        iy = ((v + 1) * H - 1) / 2
    if BORDER:
        ix = tl.minimum(tl.maximum(ix, 0.0), W - 1)
        iy = tl.minimum(tl.maximum(iy, 0.0), H - 1)
    else:
        # Beyond [-2, size + 1] all four taps are outside either way; the clamp keeps the
        # float -> int conversion from overflowing on huge coordinates.
        ix = tl.minimum(tl.maximum(ix, -2.0), W + 1)
        iy = tl.minimum(tl.maximum(iy, -2.0), H + 1)
    x0f = tl.floor(ix)
    y0f = tl.floor(iy)
    # int32: the clamps above bound them, and 32-bit offsets halve the address registers.
    x0 = x0f.to(tl.int32)
    y0 = y0f.to(tl.int32)
    x0_in = (x0 >= 0) & (x0 < W)
    x1_in = (x0 + 1 >= 0) & (x0 + 1 < W)
    y0_in = (y0 >= 0) & (y0 < H)
    y1_in = (y0 + 1 >= 0) & (y0 + 1 < H)
    return x0, y0, ix - x0f, iy - y0f, x0_in, x1_in, y0_in, y1_in


@triton.jit
def _tap(plane_ptr, x0, y0, wx1, wy1, x0_in, x1_in, y0_in, y1_in, ok, offs_c, C: tl.constexpr, W,
         BLOCK_C: tl.constexpr):
    """Bilinear value [BLOCK_R, BLOCK_C] of one channel block of one channels-last plane."""
    # _grid._load_corners with the channels-last strides, written out: under the interpreter
    # every nested jit call costs as much as a dozen tile operations. int32 offsets from the
    # plane's base (the launcher checks H * W * C < 2^31) and a compile-time C (the right
    # neighbour is an immediate offset, and rows start 16-byte aligned when C allows it).
    top = plane_ptr + ((y0 * W + x0) * C)[:, None] + offs_c[None, :]
    if C % BLOCK_C == 0:
        c_ok = offs_c[None, :] >= 0  # no channel tail: folds away
    else:
        c_ok = offs_c[None, :] < C
    v00 = tl.load(top, mask=(ok & y0_in & x0_in)[:, None] & c_ok, other=0.0).to(tl.float32)
    v01 = tl.load(top + C, mask=(ok & y0_in & x1_in)[:, None] & c_ok, other=0.0).to(tl.float32)
    v10 = tl.load(top + W * C, mask=(ok & y1_in & x0_in)[:, None] & c_ok, other=0.0).to(tl.float32)
    v11 = tl.load(top + W * C + C, mask=(ok & y1_in & x1_in)[:, None] & c_ok, other=0.0).to(tl.float32)
    wx0 = 1 - wx1
    wy0 = 1 - wy1
    # grid_sample's corner-weight products, for bit-closeness to the reference.
    return ((wx0 * wy0)[:, None] * v00 + (wx1 * wy0)[:, None] * v01
            + (wx0 * wy1)[:, None] * v10 + (wx1 * wy1)[:, None] * v11)


@triton.jit
def _scatter(grad_ptr, g, x0, y0, wx1, wy1, x0_in, x1_in, y0_in, y1_in, ok, offs_c, C: tl.constexpr, W,
             BLOCK_C: tl.constexpr):
    """Add g [BLOCK_R, BLOCK_C] into one channels-last plane gradient through the 4 taps."""
    wx0 = 1 - wx1
    wy0 = 1 - wy1
    if C % BLOCK_C == 0:
        c_ok = offs_c[None, :] >= 0
    else:
        c_ok = offs_c[None, :] < C
    top = grad_ptr + ((y0 * W + x0) * C)[:, None] + offs_c[None, :]
    # Rays of a tile (and of neighbouring tiles) share texels, hence atomics.
    tl.atomic_add(top, g * (wx0 * wy0)[:, None], mask=(ok & y0_in & x0_in)[:, None] & c_ok)
    tl.atomic_add(top + C, g * (wx1 * wy0)[:, None], mask=(ok & y0_in & x1_in)[:, None] & c_ok)
    tl.atomic_add(top + W * C, g * (wx0 * wy1)[:, None], mask=(ok & y1_in & x0_in)[:, None] & c_ok)
    tl.atomic_add(top + W * C + C, g * (wx1 * wy1)[:, None], mask=(ok & y1_in & x1_in)[:, None] & c_ok)


# --------------------------------------------------------------------------- the decoder
#
# The launchers hand the kernels the decoder packed once per call (``_pack_decoder``): every
# matrix transposed to the [in, out] orientation tl.dot wants for its B operand and
# zero-padded to the padded widths, so each weight tile is an unmasked load at compile-time
# strides. With runtime strides and masks, the [64, 64] offset / mask tiles of the weight
# loads are loop-invariant, get hoisted out of the sample loop and pin about a hundred
# registers for its whole length (measured on sm_90: all 255 registers and spills).
#   w1t [NP, CP, HD_P]   first layer, plane k's channel c in row (k, c); NP = 3 concat, 1 sum /
#                        mean; CP = NCB * BLOCK_C (channel tail rows are zero)
#   b1 [HD_P]            hwt [L, HD_P, HD_P] / hb [L, HD_P]   hidden layers (W_i^T)
#   lwt [HD_P, O_P]      lb [O_P]                             last layer (W^T)


@triton.jit
def _three_plane_setup(x, y, z, W, H, AXIS_U0: tl.constexpr, AXIS_V0: tl.constexpr, AXIS_U1: tl.constexpr,
                       AXIS_V1: tl.constexpr, AXIS_U2: tl.constexpr, AXIS_V2: tl.constexpr,
                       ALIGN_CORNERS: tl.constexpr, BORDER: tl.constexpr):
    """:func:`_plane_setup` of the three planes, each reading its (u, v) pair of the point."""
    # Axes are compile-time constants: picking a coordinate costs nothing.
    u0 = x if AXIS_U0 == 0 else (y if AXIS_U0 == 1 else z)
    v0 = x if AXIS_V0 == 0 else (y if AXIS_V0 == 1 else z)
    u1 = x if AXIS_U1 == 0 else (y if AXIS_U1 == 1 else z)
    v1 = x if AXIS_V1 == 0 else (y if AXIS_V1 == 1 else z)
    u2 = x if AXIS_U2 == 0 else (y if AXIS_U2 == 1 else z)
    v2 = x if AXIS_V2 == 0 else (y if AXIS_V2 == 1 else z)
    a0, b0, wx0, wy0, xa0, xb0, ya0, yb0 = _plane_setup(u0, v0, W, H, ALIGN_CORNERS, BORDER)
    a1, b1, wx1, wy1, xa1, xb1, ya1, yb1 = _plane_setup(u1, v1, W, H, ALIGN_CORNERS, BORDER)
    a2, b2, wx2, wy2, xa2, xb2, ya2, yb2 = _plane_setup(u2, v2, W, H, ALIGN_CORNERS, BORDER)
    return (a0, b0, wx0, wy0, xa0, xb0, ya0, yb0, a1, b1, wx1, wy1, xa1, xb1, ya1, yb1,
            a2, b2, wx2, wy2, xa2, xb2, ya2, yb2)


@triton.jit
def _first_layer(planes_b, x, y, z, ok, w1t_ptr, b1_ptr, H, W,
                 AXIS_U0: tl.constexpr, AXIS_V0: tl.constexpr, AXIS_U1: tl.constexpr, AXIS_V1: tl.constexpr,
                 AXIS_U2: tl.constexpr, AXIS_V2: tl.constexpr, REDUCE: tl.constexpr, ALIGN_CORNERS: tl.constexpr,
                 BORDER: tl.constexpr, C: tl.constexpr, NCB: tl.constexpr, BLOCK_C: tl.constexpr,
                 HD_P: tl.constexpr, BLOCK_R: tl.constexpr, DOT: tl.constexpr):
    """Pre-activation of the first layer [BLOCK_R, HD_P]: the features are built one channel
    block at a time and multiplied straight away, so the F-wide feature row never exists."""
    plane_size = H * W * C
    plane0 = planes_b
    plane1 = plane0 + plane_size
    plane2 = plane1 + plane_size
    (a0, b0, wx0, wy0, xa0, xb0, ya0, yb0, a1, b1, wx1, wy1, xa1, xb1, ya1, yb1,
     a2, b2, wx2, wy2, xa2, xb2, ya2, yb2) = _three_plane_setup(
        x, y, z, W, H, AXIS_U0, AXIS_V0, AXIS_U1, AXIS_V1, AXIS_U2, AXIS_V2, ALIGN_CORNERS, BORDER)
    offs_h = tl.arange(0, HD_P)
    # Offsets of a [BLOCK_C, HD_P] block of w1t: compile-time strides, no mask.
    w_tile = tl.arange(0, BLOCK_C)[:, None] * HD_P + offs_h[None, :]
    acc = tl.zeros((BLOCK_R, HD_P), dtype=tl.float32) + tl.load(b1_ptr + offs_h)[None, :]
    # A loop, not unrolled: the backward kernel inlines this twice and compile time grows fast.
    for cb in range(NCB):
        offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
        w_blk = w1t_ptr + cb * (BLOCK_C * HD_P)
        f0 = _tap(plane0, a0, b0, wx0, wy0, xa0, xb0, ya0, yb0, ok, offs_c, C, W, BLOCK_C)
        f1 = _tap(plane1, a1, b1, wx1, wy1, xa1, xb1, ya1, yb1, ok, offs_c, C, W, BLOCK_C)
        f2 = _tap(plane2, a2, b2, wx2, wy2, xa2, xb2, ya2, yb2, ok, offs_c, C, W, BLOCK_C)
        if REDUCE == REDUCE_CONCAT:
            acc = tl.dot(f0, tl.load(w_blk + w_tile), acc, input_precision=DOT)
            acc = tl.dot(f1, tl.load(w_blk + NCB * BLOCK_C * HD_P + w_tile), acc, input_precision=DOT)
            acc = tl.dot(f2, tl.load(w_blk + 2 * NCB * BLOCK_C * HD_P + w_tile), acc, input_precision=DOT)
        else:
            f = f0 + f1 + f2
            if REDUCE == REDUCE_MEAN:
                f = f / 3.0
            acc = tl.dot(f, tl.load(w_blk + w_tile), acc, input_precision=DOT)
    return acc


@triton.jit
def _first_layer_backward(g_z1, planes_b, grad_b, x, y, z, ok, scatter_rows, w1t_ptr, ws_w1, H, W,
                          AXIS_U0: tl.constexpr, AXIS_V0: tl.constexpr, AXIS_U1: tl.constexpr,
                          AXIS_V1: tl.constexpr, AXIS_U2: tl.constexpr, AXIS_V2: tl.constexpr,
                          REDUCE: tl.constexpr, ALIGN_CORNERS: tl.constexpr, BORDER: tl.constexpr,
                          C: tl.constexpr, NCB: tl.constexpr, BLOCK_C: tl.constexpr, HD_P: tl.constexpr,
                          DOT: tl.constexpr):
    """dW1 += g_z1^T features (re-gathered per channel block, into ws_w1 [NP, HD_P, CP]) and
    the feature gradient g_z1 W1 scattered into the planes through the same taps."""
    plane_size = H * W * C
    plane0 = planes_b
    plane1 = plane0 + plane_size
    plane2 = plane1 + plane_size
    grad0 = grad_b
    grad1 = grad0 + plane_size
    grad2 = grad1 + plane_size
    (a0, b0, wx0, wy0, xa0, xb0, ya0, yb0, a1, b1, wx1, wy1, xa1, xb1, ya1, yb1,
     a2, b2, wx2, wy2, xa2, xb2, ya2, yb2) = _three_plane_setup(
        x, y, z, W, H, AXIS_U0, AXIS_V0, AXIS_U1, AXIS_V1, AXIS_U2, AXIS_V2, ALIGN_CORNERS, BORDER)
    # Only samples that can carry a gradient scatter (the rest would add exact zeros).
    hit = ok & scatter_rows
    offs_h = tl.arange(0, HD_P)
    offs_k = tl.arange(0, BLOCK_C)
    CP: tl.constexpr = NCB * BLOCK_C
    # [HD_P, BLOCK_C] blocks: W1 read out of w1t (transposed offsets), dW1 into ws_w1.
    w_tile = offs_h[:, None] + offs_k[None, :] * HD_P
    g_tile = offs_h[:, None] * CP + offs_k[None, :]
    g_z1_t = tl.trans(g_z1)
    for cb in range(NCB):
        offs_c = cb * BLOCK_C + offs_k
        w_blk = w1t_ptr + cb * (BLOCK_C * HD_P)
        g_blk = ws_w1 + cb * BLOCK_C
        f0 = _tap(plane0, a0, b0, wx0, wy0, xa0, xb0, ya0, yb0, ok, offs_c, C, W, BLOCK_C)
        f1 = _tap(plane1, a1, b1, wx1, wy1, xa1, xb1, ya1, yb1, ok, offs_c, C, W, BLOCK_C)
        f2 = _tap(plane2, a2, b2, wx2, wy2, xa2, xb2, ya2, yb2, ok, offs_c, C, W, BLOCK_C)
        if REDUCE == REDUCE_CONCAT:
            tl.atomic_add(g_blk + g_tile, tl.dot(g_z1_t, f0, input_precision=DOT))
            tl.atomic_add(g_blk + HD_P * CP + g_tile, tl.dot(g_z1_t, f1, input_precision=DOT))
            tl.atomic_add(g_blk + 2 * HD_P * CP + g_tile, tl.dot(g_z1_t, f2, input_precision=DOT))
            g0 = tl.dot(g_z1, tl.load(w_blk + w_tile), input_precision=DOT)
            g1 = tl.dot(g_z1, tl.load(w_blk + CP * HD_P + w_tile), input_precision=DOT)
            g2 = tl.dot(g_z1, tl.load(w_blk + 2 * CP * HD_P + w_tile), input_precision=DOT)
        else:
            f = f0 + f1 + f2
            if REDUCE == REDUCE_MEAN:
                f = f / 3.0
            tl.atomic_add(g_blk + g_tile, tl.dot(g_z1_t, f, input_precision=DOT))
            g0 = tl.dot(g_z1, tl.load(w_blk + w_tile), input_precision=DOT)
            if REDUCE == REDUCE_MEAN:
                g0 = g0 / 3.0
            g1 = g0
            g2 = g0
        _scatter(grad0, g0, a0, b0, wx0, wy0, xa0, xb0, ya0, yb0, hit, offs_c, C, W, BLOCK_C)
        _scatter(grad1, g1, a1, b1, wx1, wy1, xa1, xb1, ya1, yb1, hit, offs_c, C, W, BLOCK_C)
        _scatter(grad2, g2, a2, b2, wx2, wy2, xa2, xb2, ya2, yb2, hit, offs_c, C, W, BLOCK_C)


@triton.jit
def _hidden_forward(h, hwt_ptr, hb_ptr, n, ACT: tl.constexpr, HD_P: tl.constexpr, DOT: tl.constexpr):
    """The first n hidden layers on h [BLOCK_R, HD_P] (input of layer 0, already activated)."""
    offs_i = tl.arange(0, HD_P)
    w_tile = offs_i[:, None] * HD_P + offs_i[None, :]  # W_i^T [in, out]
    for i in range(n):
        w_t = tl.load(hwt_ptr + i * (HD_P * HD_P) + w_tile)
        bias = tl.load(hb_ptr + i * HD_P + offs_i)
        h = _hidden_act(tl.dot(h, w_t, input_precision=DOT) + bias[None, :], ACT)
    return h


@triton.jit
def _decode(planes_b, x, y, z, ok, w1t_ptr, b1_ptr, hwt_ptr, hb_ptr, lwt_ptr, lb_ptr, H, W, L,
            AXIS_U0: tl.constexpr, AXIS_V0: tl.constexpr, AXIS_U1: tl.constexpr, AXIS_V1: tl.constexpr,
            AXIS_U2: tl.constexpr, AXIS_V2: tl.constexpr, REDUCE: tl.constexpr, ALIGN_CORNERS: tl.constexpr,
            BORDER: tl.constexpr, ACT: tl.constexpr, C: tl.constexpr, NCB: tl.constexpr, BLOCK_C: tl.constexpr,
            HD_P: tl.constexpr, O_P: tl.constexpr, BLOCK_R: tl.constexpr, DOT: tl.constexpr):
    """The first layer's pre-activation [BLOCK_R, HD_P] and the raw outputs [BLOCK_R, O_P]."""
    z1 = _first_layer(planes_b, x, y, z, ok, w1t_ptr, b1_ptr, H, W,
                      AXIS_U0, AXIS_V0, AXIS_U1, AXIS_V1, AXIS_U2, AXIS_V2, REDUCE, ALIGN_CORNERS, BORDER,
                      C, NCB, BLOCK_C, HD_P, BLOCK_R, DOT)
    h = _hidden_forward(_hidden_act(z1, ACT), hwt_ptr, hb_ptr, L, ACT, HD_P, DOT)
    offs_h = tl.arange(0, HD_P)
    offs_o = tl.arange(0, O_P)
    w_t = tl.load(lwt_ptr + offs_h[:, None] * O_P + offs_o[None, :])
    bias = tl.load(lb_ptr + offs_o)
    return z1, tl.dot(h, w_t, input_precision=DOT) + bias[None, :]


@triton.jit
def _split_outputs(out, O: tl.constexpr, COLOR: tl.constexpr, O_P: tl.constexpr):
    """Raw density [BLOCK_R] (column 0) and activated colour [BLOCK_R, O_P] (columns 1..O-1,
    zero elsewhere, so colour sums can run over the whole padded tile)."""
    cols = tl.arange(0, O_P)
    raw = tl.sum(tl.where(cols[None, :] == 0, out, 0.0), axis=1)
    colour = tl.where(((cols >= 1) & (cols < O))[None, :], _color_act(out, COLOR), 0.0)
    return raw, colour


# --------------------------------------------------------------------------- forward


def _fwd_configs():
    if _INTERPRET:
        # The interpreter's cost is per operation, hardly per element: one wide tile.
        return [triton.Config({"BLOCK_R": 32}, num_warps=4)]
    # Few configs: the kernel is large, and each one is compiled on the first call. The last
    # one skips the software pipelining of the channel-block loop: its prefetch buffers and
    # their addresses are what spills the wide tiles (OpenLRM on sm_90: 0 bytes of spill at
    # 252 registers, against about 300 with the default stages).
    return ([triton.Config({"BLOCK_R": br}, num_warps=w) for br in (32, 64) for w in (4, 8)]
            + [triton.Config({"BLOCK_R": 64}, num_warps=8, num_stages=1)])


def _prune_fwd_configs(configs, named_args, **kwargs):
    # A handful of [BLOCK_R, HD_P] / [BLOCK_R, O_P] tiles and the 4 x 3 corner tiles of a channel
    # block are live at once: at most 8K floats in the widest tile, and at least 16 per thread.
    width = max(kwargs["HD_P"], kwargs["O_P"], 3 * kwargs["BLOCK_C"])
    kept = [c for c in configs if c.kwargs["BLOCK_R"] * width <= 8192
            and c.num_warps * 32 * 16 <= c.kwargs["BLOCK_R"] * width]
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_R"])]


@triton.autotune(configs=_fwd_configs(), key=["C", "HD_P", "O", "L"],
                 prune_configs_by={"early_config_prune": _prune_fwd_configs})
@triton.jit
def _render_fwd_kernel(
    planes_ptr, rays_o_ptr, rays_d_ptr, t_ptr, deltas_ptr,
    w1t_ptr, b1_ptr, hwt_ptr, hb_ptr, lwt_ptr, lb_ptr,
    rgb_ptr, depth_ptr, opacity_ptr, weights_ptr,
    R, S, H, W, L,
    scale, density_bias, distance_scale, t_threshold,
    AXIS_U0: tl.constexpr, AXIS_V0: tl.constexpr, AXIS_U1: tl.constexpr, AXIS_V1: tl.constexpr,
    AXIS_U2: tl.constexpr, AXIS_V2: tl.constexpr, REDUCE: tl.constexpr, ALIGN_CORNERS: tl.constexpr,
    BORDER: tl.constexpr, ACT: tl.constexpr, COLOR: tl.constexpr, MODE: tl.constexpr, DENSITY: tl.constexpr,
    MASK_OUTSIDE: tl.constexpr, WEIGHTS: tl.constexpr, C: tl.constexpr, O: tl.constexpr, NCB: tl.constexpr,
    BLOCK_C: tl.constexpr, HD_P: tl.constexpr, O_P: tl.constexpr, DOT: tl.constexpr, BLOCK_R: tl.constexpr,
):
    # Batch folded into axis 0 (axis 1/2 of a CUDA grid top out at 65535).
    n_tiles = tl.cdiv(R, BLOCK_R)
    pid = tl.program_id(0)
    b = (pid // n_tiles).to(tl.int64)
    offs_r = (pid % n_tiles) * BLOCK_R + tl.arange(0, BLOCK_R)
    rows = offs_r < R
    ray = b * R + offs_r
    ox = tl.load(rays_o_ptr + ray * 3, mask=rows, other=0.0)
    oy = tl.load(rays_o_ptr + ray * 3 + 1, mask=rows, other=0.0)
    oz = tl.load(rays_o_ptr + ray * 3 + 2, mask=rows, other=0.0)
    dx = tl.load(rays_d_ptr + ray * 3, mask=rows, other=0.0)
    dy = tl.load(rays_d_ptr + ray * 3 + 1, mask=rows, other=0.0)
    dz = tl.load(rays_d_ptr + ray * 3 + 2, mask=rows, other=0.0)
    planes_b = planes_ptr + b * 3 * H * W * C
    samples = ray * S

    cols = tl.arange(0, O_P)
    acc = tl.zeros((BLOCK_R, O_P), dtype=tl.float32)
    trans = tl.full((BLOCK_R,), 1.0, tl.float32)
    depth = tl.zeros((BLOCK_R,), dtype=tl.float32)
    opacity = tl.zeros((BLOCK_R,), dtype=tl.float32)
    # eg3d: interval s - 1 averages samples s - 1 and s; the previous sample waits here.
    prev_raw = tl.zeros((BLOCK_R,), dtype=tl.float32)
    prev_empty = offs_r < 0
    prev_colour = tl.zeros((BLOCK_R, O_P), dtype=tl.float32)
    prev_t = tl.zeros((BLOCK_R,), dtype=tl.float32)
    if MODE == MODE_EG3D:
        eps = EG3D_EPS
        n_weights = S - 1
    else:
        eps = 0.0
        n_weights = S
    alive = rows
    n_alive = tl.sum(alive.to(tl.int32), axis=0)
    s = 0
    # Early ray termination: once every ray of the tile has T < t_threshold, the remaining
    # samples' MLP work is skipped (alive rays never come back: T does not increase).
    while (s < S) & (n_alive > 0):
        # Sample s ends interval s - MODE (eg3d's sample 0 ends none); as a per-row mask.
        has_interval = (tl.zeros((BLOCK_R,), dtype=tl.int32) + s) >= MODE
        t = tl.load(t_ptr + samples + s, mask=rows, other=0.0)
        x, y, z, ok, outside = _coords(ox, oy, oz, dx, dy, dz, t, scale, rows)
        _, out = _decode(planes_b, x, y, z, ok, w1t_ptr, b1_ptr, hwt_ptr, hb_ptr, lwt_ptr, lb_ptr, H, W, L,
                         AXIS_U0, AXIS_V0, AXIS_U1, AXIS_V1, AXIS_U2, AXIS_V2, REDUCE, ALIGN_CORNERS, BORDER, ACT,
                         C, NCB, BLOCK_C, HD_P, O_P, BLOCK_R, DOT)
        raw, colour = _split_outputs(out, O, COLOR, O_P)
        if MASK_OUTSIDE:
            empty = outside
        else:
            empty = offs_r < 0  # no sample is empty
        raw = tl.where(empty, 0.0, raw)
        if MODE == MODE_EG3D:
            live = alive & has_interval
            raw_j = (prev_raw + raw) * 0.5
            empty_j = prev_empty | empty
            colour_j = (prev_colour + colour) * 0.5
            delta = t - prev_t
            depth_j = (prev_t + t) * 0.5
            prev_raw = raw
            prev_empty = empty
            prev_colour = colour
            prev_t = t
        else:
            live = alive
            raw_j = raw
            empty_j = empty
            colour_j = colour
            delta = tl.load(deltas_ptr + samples + s, mask=rows, other=0.0)
            depth_j = t
        sigma = tl.where(empty_j, 0.0, _activate(raw_j + density_bias, DENSITY))
        alpha = 1.0 - tl.exp(-(sigma * (delta * distance_scale)))
        w = tl.where(live, trans * alpha, 0.0)
        acc += w[:, None] * colour_j
        depth += w * depth_j
        opacity += w
        trans = tl.where(live, trans * ((1.0 - alpha) + eps), trans)
        if WEIGHTS:
            # Never-reached intervals of stopped tiles keep the launcher's zeros.
            tl.store(weights_ptr + ray * n_weights + (s - MODE), w, mask=rows & has_interval)
        alive = alive & ~(trans < t_threshold)
        n_alive = tl.sum(alive.to(tl.int32), axis=0)
        s += 1

    out_cols = (cols >= 1) & (cols < O)
    tl.store(rgb_ptr + (ray * (O - 1))[:, None] + (cols - 1)[None, :], acc,
             mask=rows[:, None] & out_cols[None, :])
    tl.store(depth_ptr + ray, depth, mask=rows)
    tl.store(opacity_ptr + ray, opacity, mask=rows)


# --------------------------------------------------------------------------- backward


@triton.jit
def _sample_backward(g_raw, colour_w, g_rgb, z1, out, x, y, z, ok, scatter_rows,
                     planes_b, grad_b, w1t_ptr, hwt_ptr, hb_ptr, lwt_ptr,
                     ws_w1, ws_hw, ws_hb, g_first_b, g_last_w, g_last_b, H, W, L,
                     AXIS_U0: tl.constexpr, AXIS_V0: tl.constexpr, AXIS_U1: tl.constexpr,
                     AXIS_V1: tl.constexpr, AXIS_U2: tl.constexpr, AXIS_V2: tl.constexpr,
                     REDUCE: tl.constexpr, ALIGN_CORNERS: tl.constexpr, BORDER: tl.constexpr,
                     ACT: tl.constexpr, COLOR: tl.constexpr, C: tl.constexpr, NCB: tl.constexpr,
                     BLOCK_C: tl.constexpr, HD_P: tl.constexpr, O_P: tl.constexpr, DOT: tl.constexpr):
    """Back-propagate one sample's output gradient (raw: g_raw, colour: colour_w * g_rgb)
    through the colour activation and the MLP; returns the register-held gradients. Weights
    are the packed ones (see the decoder section); ws_hw [L, HD_P, HD_P] takes dW_i [out, in]."""
    cols = tl.arange(0, O_P)
    g_colour = colour_w[:, None] * g_rgb * _color_act_grad(out, COLOR)
    g_out = tl.where(cols[None, :] == 0, g_raw[:, None], g_colour)
    g_out = tl.where(scatter_rows[:, None], g_out, 0.0)

    offs_h = tl.arange(0, HD_P)
    h0 = _hidden_act(z1, ACT)
    h_top = _hidden_forward(h0, hwt_ptr, hb_ptr, L, ACT, HD_P, DOT)
    g_last_w += tl.dot(tl.trans(g_out), h_top, input_precision=DOT)
    g_last_b += tl.sum(g_out, axis=0)
    # W [O_P, HD_P] read out of lwt [HD_P, O_P].
    last_w = tl.load(lwt_ptr + cols[:, None] + offs_h[None, :] * O_P)
    g_h = tl.dot(g_out, last_w, input_precision=DOT)
    hh_tile = offs_h[:, None] * HD_P + offs_h[None, :]
    for step in range(L):
        i = L - 1 - step
        # Recompute layer i's input and pre-activation from h0 (nothing per layer is kept).
        h_in = _hidden_forward(h0, hwt_ptr, hb_ptr, i, ACT, HD_P, DOT)
        w_t = tl.load(hwt_ptr + i * (HD_P * HD_P) + hh_tile)  # W_i^T [in, out]
        bias = tl.load(hb_ptr + i * HD_P + offs_h)
        g_z = g_h * _hidden_act_grad(tl.dot(h_in, w_t, input_precision=DOT) + bias[None, :], ACT)
        tl.atomic_add(ws_hw + i * (HD_P * HD_P) + hh_tile, tl.dot(tl.trans(g_z), h_in, input_precision=DOT))
        tl.atomic_add(ws_hb + i * HD_P + offs_h, tl.sum(g_z, axis=0))
        g_h = tl.dot(g_z, tl.trans(w_t), input_precision=DOT)
    g_z1 = g_h * _hidden_act_grad(z1, ACT)
    g_first_b += tl.sum(g_z1, axis=0)
    _first_layer_backward(g_z1, planes_b, grad_b, x, y, z, ok, scatter_rows, w1t_ptr, ws_w1, H, W,
                          AXIS_U0, AXIS_V0, AXIS_U1, AXIS_V1, AXIS_U2, AXIS_V2, REDUCE, ALIGN_CORNERS, BORDER,
                          C, NCB, BLOCK_C, HD_P, DOT)
    return g_first_b, g_last_w, g_last_b


def _bwd_block_r(args):
    # The per-sample weight-gradient products reduce over the tile's rays: wide tiles mean
    # fewer atomic flushes. Small tiles keep the interpreter quick.
    return 32 if _INTERPRET or max(args["HD_P"], args["O_P"]) > 64 else 64


# Heuristics, not autotune: benchmarking would re-run the atomics into the same buffers.
@triton.heuristics({"BLOCK_R": _bwd_block_r})
@triton.jit
def _render_bwd_kernel(
    grad_rgb_ptr, grad_depth_ptr, grad_opacity_ptr, total_ptr,
    planes_ptr, rays_o_ptr, rays_d_ptr, t_ptr, deltas_ptr,
    w1t_ptr, b1_ptr, hwt_ptr, hb_ptr, lwt_ptr, lb_ptr,
    grad_planes_ptr, ws_w1_ptr, ws_b1_ptr, ws_hw_ptr, ws_hb_ptr, ws_lw_ptr, ws_lb_ptr,
    R, S, H, W, L, NREP,
    scale, density_bias, distance_scale,
    AXIS_U0: tl.constexpr, AXIS_V0: tl.constexpr, AXIS_U1: tl.constexpr, AXIS_V1: tl.constexpr,
    AXIS_U2: tl.constexpr, AXIS_V2: tl.constexpr, REDUCE: tl.constexpr, ALIGN_CORNERS: tl.constexpr,
    BORDER: tl.constexpr, ACT: tl.constexpr, COLOR: tl.constexpr, MODE: tl.constexpr, DENSITY: tl.constexpr,
    MASK_OUTSIDE: tl.constexpr, C: tl.constexpr, O: tl.constexpr, NCB: tl.constexpr, BLOCK_C: tl.constexpr,
    HD_P: tl.constexpr, O_P: tl.constexpr, DOT: tl.constexpr, BLOCK_R: tl.constexpr,
):
    n_tiles = tl.cdiv(R, BLOCK_R)
    pid = tl.program_id(0)
    b = (pid // n_tiles).to(tl.int64)
    offs_r = (pid % n_tiles) * BLOCK_R + tl.arange(0, BLOCK_R)
    rows = offs_r < R
    ray = b * R + offs_r
    planes_b = planes_ptr + b * 3 * H * W * C
    grad_b = grad_planes_ptr + b * 3 * H * W * C
    samples = ray * S

    # This program's weight-gradient replica (packed layouts, see the launcher).
    rep = (pid % NREP).to(tl.int64)
    NP: tl.constexpr = 3 if REDUCE == REDUCE_CONCAT else 1
    ws_w1 = ws_w1_ptr + rep * (NP * HD_P * NCB * BLOCK_C)
    ws_hw = ws_hw_ptr + rep * L * (HD_P * HD_P)
    ws_hb = ws_hb_ptr + rep * L * HD_P

    cols = tl.arange(0, O_P)
    out_cols = (cols >= 1) & (cols < O)
    # Column c of the colour tile is output channel c; column 0 (density) has no rgb gradient.
    g_rgb = tl.load(grad_rgb_ptr + (ray * (O - 1))[:, None] + (cols - 1)[None, :],
                    mask=rows[:, None] & out_cols[None, :], other=0.0)
    g_depth = tl.load(grad_depth_ptr + ray, mask=rows, other=0.0)
    g_opacity = tl.load(grad_opacity_ptr + ray, mask=rows, other=0.0)
    total = tl.load(total_ptr + ray, mask=rows, other=0.0)

    g_first_b = tl.zeros((HD_P,), dtype=tl.float32)
    g_last_w = tl.zeros((O_P, HD_P), dtype=tl.float32)
    g_last_b = tl.zeros((O_P,), dtype=tl.float32)
    trans = tl.full((BLOCK_R,), 1.0, tl.float32)
    prefix = tl.zeros((BLOCK_R,), dtype=tl.float32)

    if MODE == MODE_EG3D:
        eps = EG3D_EPS
        # Sample k is an end of intervals k - 1 and k: it is back-propagated one step late,
        # once both halves of its gradient are known. Step 0 has no previous sample (its
        # back-propagation runs on zeros, fully masked) and step S no sample of its own: one
        # inlined decode and MLP backward serve every step, where peeling sample 0 off the
        # walk would inline a second decode whose values stay live across the loop.
        prev_t = tl.zeros((BLOCK_R,), dtype=tl.float32)
        prev_x = tl.zeros((BLOCK_R,), dtype=tl.float32)
        prev_y = prev_x
        prev_z = prev_x
        prev_ok = offs_r < 0
        prev_empty = prev_ok
        prev_raw = prev_x
        prev_z1 = tl.zeros((BLOCK_R, HD_P), dtype=tl.float32)
        prev_out = tl.zeros((BLOCK_R, O_P), dtype=tl.float32)
        prev_colour = prev_out
        carry_raw = prev_x
        carry_w = prev_x
        stop = S + 1
    else:
        eps = 0.0
        stop = S

    for s in range(0, stop):
        step = tl.zeros((BLOCK_R,), dtype=tl.int32) + s
        current = rows & (step < S)
        if MODE == MODE_EG3D:
            interval = current & (step >= 1)  # interval s - 1 ends at sample s
            has_prev = rows & (step >= 1)
        else:
            interval = current
        t = tl.load(t_ptr + samples + s, mask=current, other=0.0)
        # The rays are re-read per sample (cache hits) under a mask the compiler cannot hoist:
        # kept across the loop they stay live, and in every layout their users need.
        ox = tl.load(rays_o_ptr + ray * 3, mask=current, other=0.0)
        oy = tl.load(rays_o_ptr + ray * 3 + 1, mask=current, other=0.0)
        oz = tl.load(rays_o_ptr + ray * 3 + 2, mask=current, other=0.0)
        dx = tl.load(rays_d_ptr + ray * 3, mask=current, other=0.0)
        dy = tl.load(rays_d_ptr + ray * 3 + 1, mask=current, other=0.0)
        dz = tl.load(rays_d_ptr + ray * 3 + 2, mask=current, other=0.0)
        x, y, z, ok, outside = _coords(ox, oy, oz, dx, dy, dz, t, scale, current)
        z1, out = _decode(planes_b, x, y, z, ok, w1t_ptr, b1_ptr, hwt_ptr, hb_ptr, lwt_ptr, lb_ptr, H, W, L,
                          AXIS_U0, AXIS_V0, AXIS_U1, AXIS_V1, AXIS_U2, AXIS_V2, REDUCE, ALIGN_CORNERS, BORDER, ACT,
                          C, NCB, BLOCK_C, HD_P, O_P, BLOCK_R, DOT)
        raw, colour = _split_outputs(out, O, COLOR, O_P)
        if MASK_OUTSIDE:
            empty = outside
        else:
            empty = offs_r < 0  # no sample is empty
        raw = tl.where(empty, 0.0, raw)
        if MODE == MODE_EG3D:
            raw_j = (prev_raw + raw) * 0.5
            empty_j = prev_empty | empty
            colour_j = (prev_colour + colour) * 0.5
            delta = t - prev_t
            depth_j = (prev_t + t) * 0.5
        else:
            raw_j = raw
            empty_j = empty
            colour_j = colour
            delta = tl.load(deltas_ptr + samples + s, mask=current, other=0.0)
            depth_j = t

        # The composite backward of this interval (composite.h's walk).
        x_j = raw_j + density_bias
        sigma = tl.where(empty_j, 0.0, _activate(x_j, DENSITY))
        d_sigma = tl.where(empty_j, 0.0, _activate_grad(x_j, DENSITY))
        length = delta * distance_scale
        decay = tl.exp(-(sigma * length))
        alpha = 1.0 - decay
        factor = (1.0 - alpha) + eps
        w = tl.where(interval, trans * alpha, 0.0)
        v = tl.sum(g_rgb * colour_j, axis=1) + g_depth * depth_j + g_opacity
        prefix += w * v
        nxt = trans * factor
        # Once T is exactly 0 every later weight is 0: the suffix is 0, not rounding noise.
        suffix = tl.where(nxt > 0.0, total - prefix, 0.0)
        if MODE == MODE_EG3D:
            ratio = decay / factor
        else:
            ratio = 1.0  # d T_later / d tau = -T_later exactly when eps = 0
        d_tau = trans * decay * v - ratio * suffix
        g_raw_j = tl.where(interval, d_tau * length * d_sigma, 0.0)
        trans = tl.where(interval, nxt, trans)

        if MODE == MODE_EG3D:
            g_first_b, g_last_w, g_last_b = _sample_backward(
                carry_raw + 0.5 * g_raw_j, carry_w + 0.5 * w, g_rgb, prev_z1, prev_out, prev_x, prev_y, prev_z,
                prev_ok, has_prev & ~prev_empty, planes_b, grad_b, w1t_ptr, hwt_ptr, hb_ptr, lwt_ptr,
                ws_w1, ws_hw, ws_hb, g_first_b, g_last_w, g_last_b, H, W, L,
                AXIS_U0, AXIS_V0, AXIS_U1, AXIS_V1, AXIS_U2, AXIS_V2, REDUCE, ALIGN_CORNERS, BORDER, ACT, COLOR,
                C, NCB, BLOCK_C, HD_P, O_P, DOT)
            carry_raw = 0.5 * g_raw_j
            carry_w = 0.5 * w
            prev_raw = raw
            prev_empty = empty
            prev_colour = colour
            prev_t = t
            prev_z1 = z1
            prev_out = out
            prev_x = x
            prev_y = y
            prev_z = z
            prev_ok = ok
        else:
            g_first_b, g_last_w, g_last_b = _sample_backward(
                g_raw_j, w, g_rgb, z1, out, x, y, z, ok, rows & ~empty, planes_b, grad_b, w1t_ptr, hwt_ptr,
                hb_ptr, lwt_ptr, ws_w1, ws_hw, ws_hb, g_first_b, g_last_w, g_last_b, H, W, L,
                AXIS_U0, AXIS_V0, AXIS_U1, AXIS_V1, AXIS_U2, AXIS_V2, REDUCE, ALIGN_CORNERS,
                BORDER, ACT, COLOR, C, NCB, BLOCK_C, HD_P, O_P, DOT)

    offs_h = tl.arange(0, HD_P)
    tl.atomic_add(ws_b1_ptr + rep * HD_P + offs_h, g_first_b)
    tl.atomic_add(ws_lw_ptr + rep * (O_P * HD_P) + cols[:, None] * HD_P + offs_h[None, :], g_last_w)
    tl.atomic_add(ws_lb_ptr + rep * O_P + cols, g_last_b)


# --------------------------------------------------------------------------- launchers


def _pow2_at_least_16(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _block_c(C: int) -> int:
    """Channel block (16, 32 or 64) wasting the fewest padded channels; the larger on ties.
    C = 80 (OpenLRM) reads 5 blocks of 16, C = 32 (EG3D) one block of 32."""
    return min((64, 32, 16), key=lambda bc: (triton.cdiv(C, bc) * bc, -bc))


def _n_replicas(device: torch.device, n_programs: int) -> int:
    # About two programs run per SM at a time: with that many replicas concurrent programs
    # rarely add into the same addresses. One replica under the interpreter (sequential).
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(n_programs, 2 * sms))


def _check(planes_cl, rays_o, rays_d, t, deltas, first_w, first_b, hidden_w, hidden_b, last_w, last_b, axes, reduce,
           mode):
    if planes_cl.dim() != 5 or planes_cl.shape[1] != 3:
        raise ValueError(f"render_triplane: planes_cl must be [B, 3, H, W, C], got {tuple(planes_cl.shape)}")
    if planes_cl.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"render_triplane: planes_cl must be float32, float16 or bfloat16, got {planes_cl.dtype}")
    B, _, H, W, C = planes_cl.shape
    R, S = t.shape[1], t.shape[2]
    for name, x, shape in (("rays_o", rays_o, (B, R, 3)), ("rays_d", rays_d, (B, R, 3)), ("t", t, (B, R, S))):
        if tuple(x.shape) != shape or x.dtype != torch.float32:
            raise ValueError(f"render_triplane: {name} must be float32 {shape}, got {x.dtype} {tuple(x.shape)}")
    if mode == MODE_NERF and (deltas is None or tuple(deltas.shape) != (B, R, S)):
        raise ValueError(f"render_triplane: mode nerf needs deltas [B, R, S] = {(B, R, S)}")
    HD = first_w.shape[0]
    F = 3 * C if reduce == REDUCE_CONCAT else C
    L = hidden_w.shape[0]
    O = last_w.shape[0]
    expected = (("first_w", first_w, (HD, F)), ("first_b", first_b, (HD,)), ("hidden_w", hidden_w, (L, HD, HD)),
                ("hidden_b", hidden_b, (L, HD)), ("last_w", last_w, (O, HD)), ("last_b", last_b, (O,)))
    for name, p, shape in expected:
        if tuple(p.shape) != shape or p.dtype != torch.float32:
            raise ValueError(f"render_triplane: {name} must be float32 {shape}, got {p.dtype} {tuple(p.shape)}")
    if O < 2:
        raise ValueError(f"render_triplane: the decoder must output density + colour (O >= 2), got O = {O}")
    if len(axes) != 6 or any(int(a) not in (0, 1, 2) for a in axes):
        raise ValueError(f"render_triplane: axes must be 6 ints in {{0, 1, 2}}, got {list(axes)}")
    # Texel offsets within a plane are int32 (tap indices reach one texel beyond each side).
    if (H + 2) * (W + 2) * C >= 2 ** 31:
        raise ValueError(f"render_triplane: one plane of H x W x C = {H} x {W} x {C} is too large for the "
                         "kernels' 32-bit texel offsets (at most about 2^31 values per plane)")
    return B, R, S, C, H, W, HD, O, L


class _Packing:
    """Padded sizes of the packed decoder (see the kernels' decoder section)."""

    def __init__(self, C: int, HD: int, O: int, L: int, reduce: int):
        self.C, self.HD, self.O, self.L = C, HD, O, L
        self.n_planes = 3 if reduce == REDUCE_CONCAT else 1
        self.block_c = _block_c(C)
        self.ncb = triton.cdiv(C, self.block_c)
        self.cp = self.ncb * self.block_c
        self.hd_p = _pow2_at_least_16(HD)
        self.o_p = _pow2_at_least_16(O)

    def pack(self, first_w, first_b, hidden_w, hidden_b, last_w, last_b):
        """The decoder transposed to [in, out] and zero-padded: w1t [NP, CP, HD_P], b1 [HD_P],
        hwt [max(L, 1), HD_P, HD_P], hb [max(L, 1), HD_P], lwt [HD_P, O_P], lb [O_P] (a few KB:
        rebuilt per call, so the kernels always see the current parameters)."""
        NP, C, HD, O, L, CP, HD_P, O_P = self.n_planes, self.C, self.HD, self.O, self.L, self.cp, self.hd_p, self.o_p
        new = lambda *shape: first_w.new_zeros(shape)
        w1t, b1, hwt, hb, lwt, lb = new(NP, CP, HD_P), new(HD_P), new(max(L, 1), HD_P, HD_P), new(max(L, 1), HD_P), \
            new(HD_P, O_P), new(O_P)
        w1t[:, :C, :HD] = first_w.t().reshape(NP, C, HD)
        b1[:HD] = first_b
        hwt[:L, :HD, :HD] = hidden_w.transpose(1, 2)
        hb[:L, :HD] = hidden_b
        lwt[:HD, :O] = last_w.t()
        lb[:O] = last_b
        return w1t, b1, hwt, hb, lwt, lb

    def workspaces(self, n_rep: int, device):
        """Zeroed weight-gradient replicas in the layouts the backward adds into:
        dW1 [NP, HD_P, CP], db1 [HD_P], dW_i [L, HD_P, HD_P] ([out, in]), db_i [L, HD_P],
        dW_last [O_P, HD_P], db_last [O_P], each with a leading [n_rep]."""
        shapes = ((self.n_planes, self.hd_p, self.cp), (self.hd_p,), (max(self.L, 1), self.hd_p, self.hd_p),
                  (max(self.L, 1), self.hd_p), (self.o_p, self.hd_p), (self.o_p,))
        return [torch.zeros((n_rep,) + shape, device=device, dtype=torch.float32) for shape in shapes]

    def unpack_grads(self, ws):
        """Sum the replicas and undo the padding / transposition: the gradients in the
        shapes of (first_w, first_b, hidden_w, hidden_b, last_w, last_b)."""
        NP, C, HD, O, L = self.n_planes, self.C, self.HD, self.O, self.L
        w1, b1, hw, hb, lw, lb = (w.sum(0) for w in ws)
        g_first_w = w1[:, :HD, :C].permute(1, 0, 2).reshape(HD, NP * C)
        return (g_first_w.contiguous(), b1[:HD].contiguous(), hw[:L, :HD, :HD].contiguous(),
                hb[:L, :HD].contiguous(), lw[:O, :HD].contiguous(), lb[:O].contiguous())


def _axes_kwargs(axes: Sequence[int]) -> dict:
    names = ("AXIS_U0", "AXIS_V0", "AXIS_U1", "AXIS_V1", "AXIS_U2", "AXIS_V2")
    return dict(zip(names, (int(a) for a in axes)))


def _contiguous(*tensors):
    return [None if x is None else x.contiguous() for x in tensors]


def render_triplane_fwd(planes_cl, rays_o, rays_d, t, deltas, first_w, first_b, hidden_w, hidden_b, last_w, last_b,
                        axes, reduce: int, align_corners: bool, padding: int, scale: float, activation: int,
                        color_act: int, mode: int, density_activation: int, density_bias: float,
                        distance_scale: float, mask_outside: bool, t_threshold: float, return_weights: bool):
    """One fused rendering pass.

    Args: planes_cl ``[B, 3, H, W, C]`` (float32 / float16 / bfloat16), rays_o / rays_d
    ``[B, R, 3]``, t ``[B, R, S]``, deltas ``[B, R, S]`` (nerf) or None (eg3d), the decoder
    (first_w ``[Hd, F]``, first_b ``[Hd]``, hidden_w ``[L, Hd, Hd]``, hidden_b ``[L, Hd]``,
    last_w ``[O, Hd]``, last_b ``[O]``) and the option codes of
    ``fastfields.ops.render_triplane._kernel_options`` (codes of :mod:`fastfields._enums`).

    Returns ``rgb [B, R, O - 1]``, ``depth [B, R]``, ``opacity [B, R]`` and the weights
    ``[B, R, S']`` (``S' = S`` nerf, ``S - 1`` eg3d) or an empty ``[0]``, all float32.
    """
    planes_cl, rays_o, rays_d, t, deltas, first_w, first_b, hidden_w, hidden_b, last_w, last_b = _contiguous(
        planes_cl, rays_o, rays_d, t, deltas, first_w, first_b, hidden_w, hidden_b, last_w, last_b)
    B, R, S, C, H, W, HD, O, L = _check(planes_cl, rays_o, rays_d, t, deltas, first_w, first_b, hidden_w, hidden_b,
                                        last_w, last_b, axes, reduce, mode)
    device = planes_cl.device
    width = max(S - 1, 0) if mode == MODE_EG3D else S
    rgb = torch.zeros((B, R, O - 1), device=device, dtype=torch.float32)
    depth = torch.zeros((B, R), device=device, dtype=torch.float32)
    opacity = torch.zeros((B, R), device=device, dtype=torch.float32)
    weights = torch.zeros((B, R, width) if return_weights else (0,), device=device, dtype=torch.float32)
    if B * R == 0 or S == 0:
        return rgb, depth, opacity, weights
    pk = _Packing(C, HD, O, L, reduce)
    grid = lambda meta: (B * triton.cdiv(R, meta["BLOCK_R"]),)
    _render_fwd_kernel[grid](
        planes_cl, rays_o, rays_d, t, t if deltas is None else deltas,
        *pk.pack(first_w, first_b, hidden_w, hidden_b, last_w, last_b),
        rgb, depth, opacity, weights if return_weights else rgb,
        R, S, H, W, L,
        float(scale), float(density_bias), float(distance_scale), float(t_threshold),
        **_axes_kwargs(axes), REDUCE=int(reduce), ALIGN_CORNERS=bool(align_corners), BORDER=int(padding) == Padding.BORDER,
        ACT=int(activation), COLOR=int(color_act), MODE=int(mode), DENSITY=int(density_activation),
        MASK_OUTSIDE=bool(mask_outside), WEIGHTS=bool(return_weights), C=C, O=O, NCB=pk.ncb,
        BLOCK_C=pk.block_c, HD_P=pk.hd_p, O_P=pk.o_p, DOT=DOT_PRECISION,
    )
    return rgb, depth, opacity, weights


def render_triplane_bwd(grad_rgb, grad_depth, grad_opacity, total, planes_cl, rays_o, rays_d, t, deltas,
                        first_w, first_b, hidden_w, hidden_b, last_w, last_b, axes, reduce: int,
                        align_corners: bool, padding: int, scale: float, activation: int, color_act: int, mode: int,
                        density_activation: int, density_bias: float, distance_scale: float, mask_outside: bool,
                        t_threshold: float, return_weights: bool):
    """Gradients of one pass by recomputation.

    Takes the upstream ``grad_rgb [B, R, O - 1]``, ``grad_depth [B, R]``,
    ``grad_opacity [B, R]``, the per-ray ``total = sum_j w_j v_j`` (from the saved outputs)
    and exactly the forward's arguments (t_threshold must be 0, return_weights False).
    Returns ``(grad_planes_cl [B, 3, H, W, C], g_first_w, g_first_b, g_hidden_w, g_hidden_b,
    g_last_w, g_last_b)``, all float32.
    """
    if t_threshold != 0.0 or return_weights:
        raise ValueError("render_triplane_bwd: t_threshold must be 0 and return_weights False (training pass)")
    (planes_cl, rays_o, rays_d, t, deltas, first_w, first_b, hidden_w, hidden_b, last_w, last_b,
     grad_rgb, grad_depth, grad_opacity, total) = _contiguous(
        planes_cl, rays_o, rays_d, t, deltas, first_w, first_b, hidden_w, hidden_b, last_w, last_b,
        grad_rgb, grad_depth, grad_opacity, total)
    B, R, S, C, H, W, HD, O, L = _check(planes_cl, rays_o, rays_d, t, deltas, first_w, first_b, hidden_w, hidden_b,
                                        last_w, last_b, axes, reduce, mode)
    for name, g, shape in (("grad_rgb", grad_rgb, (B, R, O - 1)), ("grad_depth", grad_depth, (B, R)),
                           ("grad_opacity", grad_opacity, (B, R)), ("total", total, (B, R))):
        if tuple(g.shape) != shape or g.dtype != torch.float32:
            raise ValueError(f"render_triplane_bwd: {name} must be float32 {shape}, got {g.dtype} {tuple(g.shape)}")
    device = planes_cl.device
    grad_planes = torch.zeros(planes_cl.shape, device=device, dtype=torch.float32)
    pk = _Packing(C, HD, O, L, reduce)
    block_r = _bwd_block_r({"HD_P": pk.hd_p, "O_P": pk.o_p})
    n_programs = B * triton.cdiv(R, block_r)
    n_rep = _n_replicas(device, n_programs) if n_programs > 0 else 1
    ws = pk.workspaces(n_rep, device)
    if n_programs > 0 and S > 0:
        _render_bwd_kernel[(n_programs,)](
            grad_rgb, grad_depth, grad_opacity, total,
            planes_cl, rays_o, rays_d, t, t if deltas is None else deltas,
            *pk.pack(first_w, first_b, hidden_w, hidden_b, last_w, last_b),
            grad_planes, *ws,
            R, S, H, W, L, n_rep,
            float(scale), float(density_bias), float(distance_scale),
            **_axes_kwargs(axes), REDUCE=int(reduce), ALIGN_CORNERS=bool(align_corners), BORDER=int(padding) == Padding.BORDER,
            ACT=int(activation), COLOR=int(color_act), MODE=int(mode), DENSITY=int(density_activation),
            MASK_OUTSIDE=bool(mask_outside), C=C, O=O, NCB=pk.ncb, BLOCK_C=pk.block_c, HD_P=pk.hd_p, O_P=pk.o_p,
            DOT=DOT_PRECISION, num_warps=4 if _INTERPRET else 8,
        )
    return (grad_planes,) + pk.unpack_grads(ws)
