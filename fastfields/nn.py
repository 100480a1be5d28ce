"""Transformer modules of LRM's image-to-triplane decoder, built on the fused ops.

Parameter names and layouts are OpenLRM's (``openlrm/models/{modulate,block,transformer}.py``),
so an OpenLRM state dict loads with ``strict=True``:

- :class:`ModLN` (``norm1.norm``, ``norm1.mlp.1``): LayerNorm modulated by a per-sample
  shift and scale, ``Linear(SiLU(mod)).chunk(2) -> (shift, scale)``, through
  :func:`fastfields.ops.adaln_modulate.adaln_modulate`;
- :class:`Attention`: the parameters of ``nn.MultiheadAttention(batch_first=True)``
  (``in_proj_weight``, or ``q/k/v_proj_weight`` when the key / value width differs;
  ``in_proj_bias``; ``out_proj``), projections with ``F.linear`` and the attention core
  through :func:`fastfields.ops.attention.attention`;
- :class:`ModulatedTransformerBlock` (OpenLRM's ``ConditionModulationBlock``): pre-norm
  cross-attention to the image tokens, self-attention and a GELU MLP, each norm modulated
  by the camera embedding;
- :class:`TransformerDecoder`: the stack (``layers.{i}``) and its final LayerNorm (``norm``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops.adaln_modulate import adaln_modulate
from .ops.attention import attention
from .ops.render_triplane import FusedDecoder
from .reference.render_triplane import COLOR_ACTIVATIONS, color_activation


class ModLN(nn.Module):
    """adaLN: ``LayerNorm(x) * (1 + scale) + shift`` with ``shift, scale = Linear(SiLU(mod)).chunk(2)``.

    Args:
        inner_dim: D, the token width.
        mod_dim: width of the modulation vector (LRM: the camera embedding).
        eps: the LayerNorm epsilon.
        backend: backend of :func:`adaln_modulate` (``"auto"``, ``"torch"``, ``"triton"``, ``"cpu"``).

    Shapes: ``x [N, L, D]``, ``mod [N, mod_dim]`` -> ``[N, L, D]``.
    """

    def __init__(self, inner_dim: int, mod_dim: int, eps: float, backend: str = "auto"):
        super().__init__()
        self.norm = nn.LayerNorm(inner_dim, eps=eps)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(mod_dim, inner_dim * 2))
        self.backend = backend

    def forward(self, x: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        shift, scale = self.mlp(mod).chunk(2, dim=-1)
        return adaln_modulate(
            x, shift, scale, weight=self.norm.weight, bias=self.norm.bias, eps=self.norm.eps, backend=self.backend
        )


class Attention(nn.Module):
    """Multi-head attention with the parameters of ``nn.MultiheadAttention(batch_first=True)``.

    ``in_proj_weight [3D, D]`` when ``kdim == vdim == D``, else ``q_proj_weight [D, D]``,
    ``k_proj_weight [D, kdim]``, ``v_proj_weight [D, vdim]``; ``in_proj_bias [3D]`` and
    ``out_proj.bias`` only with ``bias=True``; the same initialisation. Unlike
    ``nn.MultiheadAttention`` it returns only the output (no attention weights), and takes
    no masks.

    Args:
        embed_dim: D; num_heads: H (D must divide by H).
        kdim, vdim: widths of the keys / values fed in (default D).
        bias: projection biases.
        dropout: attention dropout in training mode (then the core runs through SDPA, the
            only backend with dropout).
        backend: backend of :func:`attention` (``"auto"``, ``"torch"``, ``"triton"``).

    Shapes: ``query [N, Lq, D]``, ``key [N, Lk, kdim]``, ``value [N, Lk, vdim]`` -> ``[N, Lq, D]``.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        kdim: Optional[int] = None,
        vdim: Optional[int] = None,
        bias: bool = True,
        dropout: float = 0.0,
        backend: str = "auto",
    ):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"Attention: embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self.dropout = dropout
        self.backend = backend
        self.packed = self.kdim == embed_dim and self.vdim == embed_dim
        if self.packed:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        else:
            self.q_proj_weight = nn.Parameter(torch.empty(embed_dim, embed_dim))
            self.k_proj_weight = nn.Parameter(torch.empty(embed_dim, self.kdim))
            self.v_proj_weight = nn.Parameter(torch.empty(embed_dim, self.vdim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim)) if bias else None
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.MultiheadAttention``'s initialisation: Xavier-uniform projections, zero biases."""
        if self.packed:
            nn.init.xavier_uniform_(self.in_proj_weight)
        else:
            for weight in (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
                nn.init.xavier_uniform_(weight)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        N, L, _ = t.shape
        return t.view(N, L, self.num_heads, self.embed_dim // self.num_heads).transpose(1, 2)

    def _project(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
        biases = (None, None, None) if self.in_proj_bias is None else self.in_proj_bias.chunk(3)
        if self.packed and query is key and key is value:
            # Self-attention: one GEMM for q, k and v.
            return F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        weights = self.in_proj_weight.chunk(3) if self.packed else (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)
        return tuple(F.linear(t, w, b) for t, w, b in zip((query, key, value), weights, biases))

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        N, Lq, D = query.shape
        q, k, v = (self._split_heads(t) for t in self._project(query, key, value))
        if self.training and self.dropout > 0:
            heads = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout)
        else:
            heads = attention(q, k, v, backend=self.backend)
        return self.out_proj(heads.transpose(1, 2).reshape(N, Lq, D))


class ModulatedTransformerBlock(nn.Module):
    """OpenLRM's ``ConditionModulationBlock``: pre-norm cross-attention, self-attention, MLP.

    ::

        x = x + cross_attn(norm1(x, mod), cond, cond)
        h = norm2(x, mod); x = x + self_attn(h, h, h)
        x = x + mlp(norm3(x, mod))

    ``norm1..3`` are :class:`ModLN`; the attentions have no biases unless ``attn_bias``; the
    MLP is ``Linear(D, mlp_ratio D), GELU, Dropout, Linear(mlp_ratio D, D), Dropout``
    (``mlp.0``, ``mlp.3``).

    Args:
        inner_dim: D; cond_dim: width of the condition (image) tokens, may differ from D;
        mod_dim: width of the modulation vector; num_heads; eps: LayerNorm epsilon.
        attn_drop, attn_bias, mlp_ratio, mlp_drop: as OpenLRM.
        norm_backend, attn_backend: backends of :func:`adaln_modulate` and :func:`attention`.

    Shapes: ``x [N, L, D]``, ``cond [N, Lc, cond_dim]``, ``mod [N, mod_dim]`` -> ``[N, L, D]``.
    """

    def __init__(
        self,
        inner_dim: int,
        cond_dim: int,
        mod_dim: int,
        num_heads: int,
        eps: float,
        attn_drop: float = 0.0,
        attn_bias: bool = False,
        mlp_ratio: float = 4.0,
        mlp_drop: float = 0.0,
        norm_backend: str = "auto",
        attn_backend: str = "auto",
    ):
        super().__init__()
        self.norm1 = ModLN(inner_dim, mod_dim, eps, backend=norm_backend)
        self.cross_attn = Attention(
            inner_dim, num_heads, kdim=cond_dim, vdim=cond_dim, bias=attn_bias, dropout=attn_drop, backend=attn_backend
        )
        self.norm2 = ModLN(inner_dim, mod_dim, eps, backend=norm_backend)
        self.self_attn = Attention(inner_dim, num_heads, bias=attn_bias, dropout=attn_drop, backend=attn_backend)
        self.norm3 = ModLN(inner_dim, mod_dim, eps, backend=norm_backend)
        hidden = int(inner_dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(inner_dim, hidden),
            nn.GELU(),
            nn.Dropout(mlp_drop),
            nn.Linear(hidden, inner_dim),
            nn.Dropout(mlp_drop),
        )

    def forward(self, x: torch.Tensor, cond: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        x = x + self.cross_attn(self.norm1(x, mod), cond, cond)
        h = self.norm2(x, mod)
        x = x + self.self_attn(h, h, h)
        return x + self.mlp(self.norm3(x, mod))


class TransformerDecoder(nn.Module):
    """OpenLRM's ``TransformerDecoder`` with ``block_type="cond_mod"``: L modulated blocks, then LayerNorm.

    Args:
        block_type: ``"cond_mod"`` (LRM's cross-attention + adaLN block; the only type here).
        num_layers, num_heads, inner_dim, cond_dim, mod_dim, eps: as OpenLRM
            (small: 12, 8, 512, 384, 1024, 1e-6).
        norm_backend, attn_backend: backends of the blocks' norms and attentions.

    Shapes: ``x [N, L, D]``, ``cond [N, Lc, cond_dim]``, ``mod [N, mod_dim]`` -> ``[N, L, D]``.
    """

    def __init__(
        self,
        block_type: str,
        num_layers: int,
        num_heads: int,
        inner_dim: int,
        cond_dim: int,
        mod_dim: int,
        eps: float = 1e-6,
        norm_backend: str = "auto",
        attn_backend: str = "auto",
    ):
        super().__init__()
        if block_type != "cond_mod":
            raise ValueError(f"TransformerDecoder: block_type must be 'cond_mod' (LRM's modulated block), got {block_type!r}")
        self.block_type = block_type
        self.layers = nn.ModuleList(
            ModulatedTransformerBlock(
                inner_dim, cond_dim, mod_dim, num_heads, eps, norm_backend=norm_backend, attn_backend=attn_backend
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(inner_dim, eps=eps)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, cond, mod)
        return self.norm(x)


#: Hidden activations the fused renderer runs in-kernel (``nn.Softplus`` with beta 1, EG3D's).
DECODER_ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "softplus": nn.Softplus}


class TriplaneDecoder(nn.Module):
    """The small MLP that turns a point's triplane features into density and colour.

    ``net`` is ``Linear(in, hidden), act, [Linear(hidden, hidden), act] * (n_layers - 2),
    Linear(hidden, out)``; output channel 0 is the raw density (the compositing applies the
    density activation) and channels ``1:`` go through ``color_activation``. Biases start
    at zero, as OpenLRM's. Presets of the published decoders:

    - OpenLRM's ``OSGDecoder``: ``TriplaneDecoder(3 * C, 64, n_layers=4, out_features=4)``
      (ReLU; parameters ``net.{0,2,4,6}`` as OpenLRM's ``synthesizer.decoder.net``);
    - EG3D's ``OSGDecoder``: ``TriplaneDecoder(C, 64, n_layers=2, out_features=33,
      activation="softplus")`` (its ``FullyConnectedLayer`` weight gain
      ``lr_multiplier / sqrt(in)`` folds into the weights on load);
    - TripoSR's ``NeRFMLP``: ``TriplaneDecoder(120, 64, n_layers=10, out_features=4,
      activation="silu", color_activation="sigmoid")``.

    :func:`fastfields.render_triplane` runs this MLP inside its fused kernel.

    Shapes: ``features [..., in_features]`` -> ``[..., out_features]``.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int = 64,
        n_layers: int = 4,
        out_features: int = 4,
        activation: str = "relu",
        color_activation: str = "sigmoid_clamped",
    ):
        super().__init__()
        for name, value, low in (("in_features", in_features, 1), ("hidden_features", hidden_features, 1),
                                 ("n_layers", n_layers, 2), ("out_features", out_features, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"TriplaneDecoder: {name} must be an int >= {low}, got {value!r}")
        if activation not in DECODER_ACTIVATIONS:
            raise ValueError(f"TriplaneDecoder: activation must be one of {tuple(DECODER_ACTIVATIONS)}, got {activation!r}")
        if color_activation not in COLOR_ACTIVATIONS:
            raise ValueError(f"TriplaneDecoder: color_activation must be one of {COLOR_ACTIVATIONS}, got {color_activation!r}")
        self.activation = activation
        self.color_activation = color_activation
        widths = [in_features] + [hidden_features] * (n_layers - 1) + [out_features]
        layers = []
        for i in range(n_layers):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if i < n_layers - 1:
                layers.append(DECODER_ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)
        for layer in self.linears:
            nn.init.zeros_(layer.bias)

    @property
    def linears(self):
        """The Linear layers, first to last."""
        return [m for m in self.net if isinstance(m, nn.Linear)]

    @property
    def in_features(self) -> int:
        return self.linears[0].in_features

    @property
    def out_features(self) -> int:
        return self.linears[-1].out_features

    def fused(self) -> FusedDecoder:
        """This MLP as the fused renderer's kernels read it: the Linear weights ``[out, in]`` and
        biases, first to last (the parameters themselves, so gradients reach them), and the
        two activations. :func:`fastfields.render_triplane` calls it; the kernels then pack the
        layers once per pass (:meth:`FusedDecoder.pack`)."""
        linears = self.linears
        return FusedDecoder([layer.weight for layer in linears], [layer.bias for layer in linears], self.activation,
                            self.color_activation)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}, color_activation={self.color_activation!r}"

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.net(features)
        return torch.cat([out[..., :1], color_activation(out[..., 1:], self.color_activation)], dim=-1)
