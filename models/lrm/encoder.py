"""LRM's image encoder (``encoder`` in the paper's figure): lean ViTs, DINOv2 with registers
(OpenLRM v1.1) and DINO ViT-B/16 (the LRM paper, OpenLRM v1.0), with the parameter names of
the checkpoints they ship in, and :class:`ImageEncoder`, which builds the one a config names.
(``fastfields.models.vit`` re-exports the ViTs from here.)

- :class:`DINOv2`: Meta's ``DinoVisionTransformer`` as OpenLRM vendors it
  (``openlrm/models/encoders/dinov2``): names ``cls_token``, ``pos_embed [1, 1 + 37^2, D]``
  (a 518 px grid of 14 px patches), ``register_tokens``, ``patch_embed.proj``,
  ``blocks.{i}.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}``,
  ``norm``. OpenLRM removed ``mask_token``, so there is none. The output is
  ``cat(x_norm_clstoken, x_norm_patchtokens)``: the register tokens are dropped.
- :class:`HFViT`: Hugging Face's ``ViTModel(add_pooling_layer=False)`` (what OpenLRM v1.0
  loads as ``facebook/dino-vitb16``): names ``embeddings.{cls_token, position_embeddings,
  patch_embeddings.projection}``, ``encoder.layer.{i}.{layernorm_before, attention.attention.
  {query, key, value}, attention.output.dense, layernorm_after, intermediate.dense,
  output.dense}``, ``layernorm``. The output is every token, CLS first.

Both take images ``[N, 3, H, W]`` in ``[0, 1]`` as OpenLRM feeds them; :class:`HFViT` applies
the ImageNet normalisation that v1.0's ``ViTImageProcessor`` applied outside the model.
Attention runs through :func:`fastfields.attention` (``backend="torch"`` is SDPA).
"""

from __future__ import annotations

import math
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastfields.ops.attention import attention

from .config import LRMConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_image(name: str, image: torch.Tensor, patch_size: int) -> None:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{name}: image must be a tensor [N, 3, H, W], got {type(image).__name__}")
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"{name}: image must have shape [N, 3, H, W], got {tuple(image.shape)}")
    if image.shape[2] % patch_size or image.shape[3] % patch_size:
        raise ValueError(
            f"{name}: image height and width must be multiples of the patch size {patch_size}, "
            f"got {tuple(image.shape[2:])}"
        )


def _heads_attention(qkv: torch.Tensor, num_heads: int, backend: str) -> torch.Tensor:
    """``qkv [N, L, 3, D]`` -> multi-head attention output ``[N, L, D]``."""
    N, L, _, D = qkv.shape
    q, k, v = qkv.view(N, L, 3, num_heads, D // num_heads).permute(2, 0, 3, 1, 4).unbind(0)
    return attention(q, k, v, backend=backend).transpose(1, 2).reshape(N, L, D)


# ---------------------------------------------------------------------------------------
# DINOv2 (Oquab et al. 2023) with registers (Darcet et al. 2024)


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens: ``[N, 3, H, W]`` -> ``[N, (H/p)(W/p), D]``."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class SelfAttention(nn.Module):
    """DINOv2's ``Attention``: one ``qkv`` projection, ``proj`` back (both with biases)."""

    def __init__(self, dim: int, num_heads: int, backend: str = "auto"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"SelfAttention: dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.backend = backend
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, L, D = x.shape
        return self.proj(_heads_attention(self.qkv(x).view(N, L, 3, D), self.num_heads, self.backend))


class LayerScale(nn.Module):
    """Per-channel residual branch scale ``gamma`` (DINOv2 initialises it to 1.0)."""

    def __init__(self, dim: int, init_value: float = 1.0):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm block with layer scale: ``x + ls1(attn(norm1(x)))``, ``x + ls2(mlp(norm2(x)))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6, backend: str = "auto"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, num_heads, backend=backend)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DINOv2(nn.Module):
    """DINOv2 ViT (``dinov2_vit{s,b}14_reg`` as OpenLRM builds it), OpenLRM's parameter names.

    Args:
        embed_dim, depth, num_heads: ViT-S/14: 384, 12, 6; ViT-B/14: 768, 12, 12.
        patch_size: 14.
        img_size: the resolution the position embeddings are stored for (518: a 37 x 37
            grid); other input sizes interpolate them.
        num_register_tokens: 4 for the ``_reg`` models, 0 for the plain ones.
        interpolate_antialias, interpolate_offset: how the position embeddings are resized
            (``_reg`` models: antialiased bicubic, offset 0.0; plain ones: no antialias, 0.1).
        eps: LayerNorm epsilon (1e-6).
        backend: backend of :func:`fastfields.attention`.

    Shapes: ``image [N, 3, H, W]`` in ``[0, 1]`` (H, W multiples of the patch size) ->
    ``[N, 1 + (H/p)(W/p), D]``: the normalised CLS token, then the patch tokens.
    """

    def __init__(
        self,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        *,
        patch_size: int = 14,
        img_size: int = 518,
        num_register_tokens: int = 4,
        mlp_ratio: float = 4.0,
        interpolate_antialias: bool = True,
        interpolate_offset: float = 0.0,
        eps: float = 1e-6,
        backend: str = "auto",
    ):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"DINOv2: img_size ({img_size}) must be a multiple of patch_size ({patch_size})")
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.interpolate_antialias = interpolate_antialias
        self.interpolate_offset = interpolate_offset
        grid = img_size // patch_size
        self.cls_token = nn.Parameter(torch.empty(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.empty(1, 1 + grid * grid, embed_dim))
        self.register_tokens = nn.Parameter(torch.empty(1, num_register_tokens, embed_dim)) if num_register_tokens else None
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, eps, backend) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DINOv2's initialisation (``init_weights``): truncated-normal position embeddings and
        Linear weights (std 0.02), near-zero CLS / register tokens, zero Linear biases."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def interpolate_pos_encoding(self, height: int, width: int) -> torch.Tensor:
        """Position embeddings for a ``height x width`` pixel input, ``[1, 1 + h w, D]``.

        As DINOv2's ``interpolate_pos_encoding``: bicubic resize of the stored grid by the
        scale factor ``(h + offset) / grid`` (not to a target size: the scale factor, not the
        size ratio, sets where the taps fall), antialiased for the register models, in
        float32."""
        stored = self.pos_embed.shape[1] - 1
        h, w = height // self.patch_size, width // self.patch_size
        if h * w == stored and h == w:
            return self.pos_embed
        grid = int(math.sqrt(stored))
        pos = self.pos_embed.float()
        patch = pos[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        scale = ((h + self.interpolate_offset) / grid, (w + self.interpolate_offset) / grid)
        patch = F.interpolate(patch, scale_factor=scale, mode="bicubic", antialias=self.interpolate_antialias)
        if patch.shape[-2:] != (h, w):  # the scale factor rounded down a pixel
            raise RuntimeError(f"DINOv2: position embeddings resized to {tuple(patch.shape[-2:])}, expected {(h, w)}")
        patch = patch.permute(0, 2, 3, 1).reshape(1, h * w, -1)
        return torch.cat([pos[:, :1], patch], dim=1).to(self.pos_embed.dtype)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        _check_image("DINOv2", image, self.patch_size)
        N, _, H, W = image.shape
        x = self.patch_embed(image)
        x = torch.cat([self.cls_token.expand(N, -1, -1), x], dim=1)
        x = x + self.interpolate_pos_encoding(H, W).to(x.dtype)
        if self.register_tokens is not None:
            x = torch.cat([x[:, :1], self.register_tokens.repeat(N, 1, 1), x[:, 1:]], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        # OpenLRM's Dinov2Wrapper: CLS + patch tokens; the registers only served the blocks.
        return torch.cat([x[:, :1], x[:, 1 + self.num_register_tokens :]], dim=1)


# ---------------------------------------------------------------------------------------
# DINO ViT with Hugging Face ViTModel names (OpenLRM v1.0, the LRM paper)


class _HFEmbeddings(nn.Module):
    def __init__(self, embed_dim: int, patch_size: int, img_size: int):
        super().__init__()
        grid = img_size // patch_size
        self.cls_token = nn.Parameter(torch.empty(1, 1, embed_dim))
        self.position_embeddings = nn.Parameter(torch.empty(1, 1 + grid * grid, embed_dim))
        self.patch_embeddings = nn.Module()
        self.patch_embeddings.projection = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)


class _HFSelfAttention(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)


class _HFAttention(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.attention = _HFSelfAttention(dim)
        self.output = nn.Module()
        self.output.dense = nn.Linear(dim, dim)


class _HFLayer(nn.Module):
    """HF ``ViTLayer``: pre-norm attention and GELU MLP, no layer scale."""

    def __init__(self, dim: int, num_heads: int, hidden: int, eps: float, backend: str):
        super().__init__()
        self.num_heads = num_heads
        self.backend = backend
        self.attention = _HFAttention(dim)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(dim, hidden)
        self.output = nn.Module()
        self.output.dense = nn.Linear(hidden, dim)
        self.layernorm_before = nn.LayerNorm(dim, eps=eps)
        self.layernorm_after = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, L, D = x.shape
        h = self.layernorm_before(x)
        sa = self.attention.attention
        # One GEMM for q, k and v: the three projections' weights concatenated.
        weight = torch.cat([sa.query.weight, sa.key.weight, sa.value.weight])
        bias = torch.cat([sa.query.bias, sa.key.bias, sa.value.bias])
        heads = _heads_attention(F.linear(h, weight, bias).view(N, L, 3, D), self.num_heads, self.backend)
        x = x + self.attention.output.dense(heads)
        return x + self.output.dense(F.gelu(self.intermediate.dense(self.layernorm_after(x))))


class HFViT(nn.Module):
    """DINO ViT (``facebook/dino-vitb16``) with the names of HF's ``ViTModel(add_pooling_layer=False)``.

    Args:
        embed_dim, depth, num_heads, patch_size: ViT-B/16: 768, 12, 12, 16.
        img_size: the resolution the position embeddings are stored for (224: 14 x 14).
        mlp_ratio: 4.
        eps: LayerNorm epsilon (``facebook/dino-vitb16``'s config: 1e-12).
        normalize: apply the ImageNet mean / std normalisation of DINO's image processor.
        backend: backend of :func:`fastfields.attention`.

    Position embeddings are resized for other input sizes as HF's
    ``interpolate_pos_encoding=True`` (bicubic to the target grid, no antialias).

    Shapes: ``image [N, 3, H, W]`` in ``[0, 1]`` -> ``[N, 1 + (H/p)(W/p), D]`` (HF's
    ``last_hidden_state``: CLS first, after the final LayerNorm).
    """

    def __init__(
        self,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        *,
        patch_size: int = 16,
        img_size: int = 224,
        mlp_ratio: float = 4.0,
        eps: float = 1e-12,
        normalize: bool = True,
        backend: str = "auto",
    ):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"HFViT: embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.normalize = normalize
        self.embeddings = _HFEmbeddings(embed_dim, patch_size, img_size)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(
            _HFLayer(embed_dim, num_heads, int(embed_dim * mlp_ratio), eps, backend) for _ in range(depth)
        )
        self.layernorm = nn.LayerNorm(embed_dim, eps=eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """HF ViT's ``_init_weights``: truncated-normal (std 0.02) weights and embeddings, zero biases."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.embeddings.position_embeddings, std=0.02)
        nn.init.trunc_normal_(self.embeddings.cls_token, std=0.02)

    def interpolate_pos_encoding(self, height: int, width: int) -> torch.Tensor:
        stored = self.embeddings.position_embeddings
        n = stored.shape[1] - 1
        h, w = height // self.patch_size, width // self.patch_size
        if h * w == n and h == w:
            return stored
        grid = int(math.sqrt(n))
        patch = stored[:, 1:].float().reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, size=(h, w), mode="bicubic", align_corners=False)
        patch = patch.permute(0, 2, 3, 1).reshape(1, h * w, -1).to(stored.dtype)
        return torch.cat([stored[:, :1], patch], dim=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        _check_image("HFViT", image, self.patch_size)
        N, _, H, W = image.shape
        if self.normalize:
            # Constants, not buffers: the model then has no buffers and a checkpoint can be
            # assigned onto a meta-device model as it is.
            mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
            image = (image - mean) / std
        x = self.embeddings.patch_embeddings.projection(image).flatten(2).transpose(1, 2)
        x = torch.cat([self.embeddings.cls_token.expand(N, -1, -1), x], dim=1)
        x = x + self.interpolate_pos_encoding(H, W).to(x.dtype)
        for layer in self.encoder.layer:
            x = layer(x)
        return self.layernorm(x)


def set_attention_backend(module: nn.Module, backend: str) -> None:
    """Point every encoder attention under ``module`` at ``backend``."""
    for m in module.modules():
        if isinstance(m, (SelfAttention, _HFLayer)):
            m.backend = backend


class ImageEncoder(nn.Module):
    """Holds the ViT as ``model`` (OpenLRM's ``Dinov2Wrapper`` / ``DinoWrapper``: the
    checkpoints name it ``encoder.model.*``). ``image [N, 3, S, S]`` in ``[0, 1]`` -> tokens
    ``[N, Lc, encoder_feat_dim]`` (CLS first; DINOv2's register tokens dropped)."""

    def __init__(self, config: LRMConfig, backend: str = "auto"):
        super().__init__()
        if config.encoder_type == "dinov2":
            registers = config.encoder_registers
            self.model = DINOv2(
                config.encoder_feat_dim, config.encoder_layers, config.encoder_heads,
                patch_size=config.encoder_patch_size, img_size=config.encoder_img_size, num_register_tokens=registers,
                interpolate_antialias=registers > 0, interpolate_offset=0.0 if registers > 0 else 0.1, backend=backend,
            )
        else:
            self.model = HFViT(
                config.encoder_feat_dim, config.encoder_layers, config.encoder_heads,
                patch_size=config.encoder_patch_size, img_size=config.encoder_img_size, backend=backend,
            )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)


__all__ = ["DINOv2", "HFViT", "IMAGENET_MEAN", "IMAGENET_STD", "ImageEncoder", "set_attention_backend"]
