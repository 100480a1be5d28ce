"""The LRM module: image -> triplane (:meth:`LRM.forward_planes`), triplane -> views
(:meth:`LRM.render`), -> mesh (:meth:`LRM.extract_mesh`), and the rendering loss
(:meth:`LRM.training_step`). Its parts are the paper's figure, one module each:
:mod:`.encoder`, :mod:`.transformer`, :mod:`.synthesizer`; :mod:`.cameras` and
:mod:`.preprocess` build its inputs, :mod:`.checkpoint` reads and writes its weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastfields.rendering import rays_from_cameras

from .._pretrained import PretrainedModel, as_tensor, load_state_dict_strict
from .cameras import camera_feature, canonical_camera, turntable_cameras
from .checkpoint import read_checkpoint, save_pretrained
from .config import PRESETS, LRMConfig, config_name
from .encoder import ImageEncoder, set_attention_backend
from .synthesizer import Synthesizer, Upsampler, render_fused
from .transformer import CameraEmbedder, build_transformer, set_transformer_backend, triplane_tokens

PathLike = Union[str, Path]


def _float_input(value, name: str, device=None, *, image: bool = False) -> torch.Tensor:
    """A floating tensor from a tensor or numpy array (a tensor keeps its float dtype, other
    values become float32). Integer images are refused: LRM takes ``[0, 1]`` floats (see
    :func:`preprocess_image`), and ``uint8`` values would pass as 0..255."""
    tensor = as_tensor(value, name, dtype=None)
    if not tensor.is_floating_point():
        if image:
            raise TypeError(f"{name}: expected floats in [0, 1], got {tensor.dtype} values (preprocess_image "
                            f"turns files and uint8 arrays into LRM's input)")
        tensor = tensor.float()
    elif tensor.dtype == torch.float64 and not isinstance(value, torch.Tensor):
        tensor = tensor.float()  # numpy's default float64 -> float32, as torch would create it
    return tensor if device is None else tensor.to(device)


class LRM(PretrainedModel, nn.Module):
    """Large Reconstruction Model: image -> triplane -> rendered views and a mesh.

    Submodules (and state-dict prefixes) are OpenLRM v1.1's: ``encoder.model``,
    ``camera_embedder.mlp``, ``pos_embed``, ``transformer.layers.{i}`` / ``transformer.norm``,
    ``upsampler``, ``synthesizer.decoder.net``.

    Args:
        config: an :class:`LRMConfig` (see :data:`PRESETS`; default ``openlrm-small``'s).
        backend: ``"auto"`` (fused kernels where available: adaLN, attention, the renderer
            and triplane lookups) or ``"torch"`` (the unfused eager reference everywhere);
            any backend name the ops accept. :meth:`set_backend` switches it later.
        render_chunk: rays per chunk on the unfused render path (the fused path renders
            every ray at once in O(rays) memory).

    Inputs (images, cameras, rays, points) may be tensors or numpy arrays.
    """

    config_class = LRMConfig
    presets = PRESETS

    def __init__(self, config: Optional[LRMConfig] = None, *, backend: str = "auto", render_chunk: int = 8192):
        super().__init__()
        if isinstance(render_chunk, bool) or not isinstance(render_chunk, int) or render_chunk < 1:
            raise ValueError(f"LRM: render_chunk must be a positive int, got {render_chunk!r}")
        self.config = config = config or LRMConfig()
        if not isinstance(config, LRMConfig):
            raise TypeError(f"LRM: config must be an LRMConfig, got {type(config).__name__}")
        self.encoder = ImageEncoder(config, backend)
        self.camera_embedder = CameraEmbedder(config.camera_dim, config.camera_embed_dim)
        self.pos_embed = triplane_tokens(config)
        self.transformer = build_transformer(config, backend)
        self.upsampler = Upsampler(config.transformer_dim, config.triplane_dim, config.triplane_low_res)
        self.synthesizer = Synthesizer(config.triplane_dim)
        self.render_chunk = render_chunk
        self.backend = backend

    # -- construction -------------------------------------------------------------------

    @classmethod
    def read_pretrained(cls, path: PathLike) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
        """``(state_dict, config dict)`` of any checkpoint :meth:`from_pretrained` reads."""
        state, config, _ = read_checkpoint(path)
        return state, config.to_dict()

    @classmethod
    def from_pretrained(cls, path: PathLike, *, preset: Optional[str] = None, backend: str = "auto",
                        render_chunk: int = 8192, device: Union[str, torch.device, None] = "cpu",
                        dtype: Optional[torch.dtype] = None, overrides: Optional[Mapping[str, Any]] = None,
                        **config_overrides) -> "LRM":
        """Load an LRM checkpoint, strictly.

        ``path`` is our format (a ``.safetensors`` file with the config in its metadata, or a
        folder written by :meth:`save_pretrained`), an OpenLRM v1.1 folder (``model.safetensors``
        or ``pytorch_model.bin`` + ``config.json``) or its weights file, an OpenLRM v1.0
        ``model.pth``, or a bare state dict with ``preset`` naming its configuration (the
        full list: :mod:`fastfields.models.lrm.checkpoint`).

        Every missing, unexpected or mis-shaped key is reported in one
        :class:`CheckpointError`. ``overrides`` / ``config_overrides`` set :class:`LRMConfig`
        fields the checkpoint does not fix (``image_size``, ``render_size``, ...); ``dtype``
        casts the floating tensors (default float32). Nothing is downloaded.
        """
        state, config, kind = read_checkpoint(path, preset=preset, **{**dict(overrides or {}), **config_overrides})
        with torch.device("meta"):
            model = cls(config, backend=backend, render_chunk=render_chunk)
        state = model.convert_state_dict(state)
        load_state_dict_strict(model, state, what=f"checkpoint {str(path)!r} ({kind}, read as {config_name(config)})",
                               device=device or "cpu", dtype=dtype)
        return model

    def save_pretrained(self, path: PathLike) -> Path:
        """``*.safetensors``: our single file; anything else: an OpenLRM-loadable folder
        (see :func:`fastfields.models.lrm.save_pretrained`)."""
        return save_pretrained(self, path)

    def set_backend(self, backend: str) -> "LRM":
        """Run every op (encoder and transformer attention, adaLN, rendering) on ``backend``."""
        self.backend = backend
        set_attention_backend(self.encoder, backend)
        set_transformer_backend(self.transformer, backend)
        return self

    # -- image -> triplane --------------------------------------------------------------

    def source_camera(self, batch_size: int = 1, device=None) -> torch.Tensor:
        """The canonical source camera feature, ``[batch_size, camera_dim]``."""
        c2w, intrinsics = canonical_camera(self.config.source_distance, self.config.focal)
        feature = camera_feature(c2w, intrinsics, self.config.camera_feature)
        return feature.to(device or self.pos_embed.device).expand(batch_size, -1)

    def encode_image(self, image) -> torch.Tensor:
        """``[N, 3, S, S]`` in ``[0, 1]`` -> image tokens ``[N, Lc, encoder_feat_dim]``."""
        image = _float_input(image, "LRM.encode_image: image", self.pos_embed.device, image=True)
        return self.encoder(image.to(self.pos_embed.dtype))

    def embed_camera(self, camera, batch_size: int) -> torch.Tensor:
        """A raw camera feature ``[N, camera_dim]`` (None: the canonical one) -> ``[N, camera_embed_dim]``."""
        if camera is None:
            camera = self.source_camera(batch_size)
        camera = _float_input(camera, "LRM: source_camera")
        if camera.shape != (batch_size, self.config.camera_dim):
            raise ValueError(
                f"LRM: source_camera must be [N, {self.config.camera_dim}] ({self.config.camera_feature!r} camera "
                f"feature, see camera_feature()) with N = {batch_size}, got {tuple(camera.shape)}"
            )
        return self.camera_embedder(camera.to(self.pos_embed))

    def forward_transformer(self, tokens: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        """Learned triplane tokens attend to the image tokens: ``[N, 3 h w, D]``."""
        x = self.pos_embed.expand(tokens.shape[0], -1, -1)
        return self.transformer(x, tokens, mod)

    def upsample(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens ``[N, 3 h w, D]`` -> planes ``[N, 3, C, 2h, 2w]`` (each plane deconvolved alone)."""
        return self.upsampler(x)

    def forward_planes(self, image, source_camera=None) -> torch.Tensor:
        """``image [N, 3, S, S]`` in ``[0, 1]`` (S: ``config.image_size``; see
        :func:`preprocess_image`), ``source_camera [N, camera_dim]`` (None: canonical) ->
        ``planes [N, 3, C, H, W]``. Tensors or numpy arrays."""
        image = _float_input(image, "LRM.forward_planes: image", image=True)
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"LRM.forward_planes: image must be [N, 3, H, W] in [0, 1], got {tuple(image.shape)}")
        tokens = self.encode_image(image)
        mod = self.embed_camera(source_camera, image.shape[0])
        return self.upsample(self.forward_transformer(tokens, mod))

    forward = forward_planes

    # -- triplane -> images -------------------------------------------------------------

    def render_fused(self, backend: Optional[str] = None, device=None) -> bool:
        """Whether :meth:`render` runs the fused renderer with ``backend`` on ``device``."""
        return render_fused(backend or self.backend, device if device is not None else self.pos_embed.device)

    def render_rays(self, planes, rays_o, rays_d, *, background: Union[float, torch.Tensor] = 1.0,
                    n_samples: Optional[int] = None, n_importance: Optional[int] = None, perturb: bool = False,
                    generator: Optional[torch.Generator] = None, backend: Optional[str] = None,
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Volume-render rays ``[N, R, 3]`` through ``planes [N, 3, C, H, W]`` as OpenLRM does:
        ``rgb [N, R, 3]``, ``depth [N, R]``, ``opacity [N, R]``."""
        planes = _float_input(planes, "LRM.render_rays: planes")
        rays_o = _float_input(rays_o, "LRM.render_rays: rays_o", planes.device)
        rays_d = _float_input(rays_d, "LRM.render_rays: rays_d", planes.device)
        return self.synthesizer.render_rays(
            planes, rays_o, rays_d, background=background,
            n_samples=self.config.n_samples if n_samples is None else n_samples,
            n_importance=self.config.n_importance if n_importance is None else n_importance,
            perturb=perturb, generator=generator, backend=backend or self.backend, chunk=self.render_chunk,
        )

    def render(self, planes, c2w, intrinsics, height: int, width: int, *, convention: str = "opengl",
               **kwargs) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Render M views of each of N triplanes.

        Args:
            planes: ``[N, 3, C, H, W]``.
            c2w: ``[N, M, 4, 4]`` or ``[M, 4, 4]`` (the same views for every triplane),
                camera-to-world in ``convention`` (OpenLRM's poses: ``"opengl"``).
            intrinsics: ``[N, M, 4]`` or ``[M, 4]``: ``(fx, fy, cx, cy)`` as fractions of the
                image width / height.
            height, width: image size in pixels.
            kwargs: ``background`` (default 1.0, white), ``n_samples``, ``n_importance``,
                ``perturb``, ``generator``, ``backend`` as in :meth:`render_rays`.

        Tensors or numpy arrays. Returns ``rgb [N, M, H, W, 3]``, ``depth [N, M, H, W]``,
        ``opacity [N, M, H, W]``.
        """
        planes = _float_input(planes, "LRM.render: planes")
        c2w = _float_input(c2w, "LRM.render: c2w", planes.device)
        intrinsics = _float_input(intrinsics, "LRM.render: intrinsics", planes.device)
        N = planes.shape[0]
        if c2w.dim() == 3:
            c2w = c2w.expand(N, *c2w.shape)
        if intrinsics.dim() == 2:
            intrinsics = intrinsics.expand(N, *intrinsics.shape)
        if c2w.dim() != 4 or c2w.shape[0] != N or intrinsics.shape[:2] != c2w.shape[:2]:
            raise ValueError(
                f"LRM.render: c2w must be [N, M, 4, 4] or [M, 4, 4] and intrinsics [N, M, 4] or [M, 4] with "
                f"N = {N} (the planes'), got {tuple(c2w.shape)} and {tuple(intrinsics.shape)}"
            )
        M = c2w.shape[1]
        rays_o, rays_d = rays_from_cameras(
            c2w.reshape(N * M, *c2w.shape[2:]).float(), intrinsics.reshape(N * M, -1).float(), height, width,
            convention=convention, normalized_intrinsics=True,
        )
        # All views of one triplane are one batch entry: the planes are read once, not M times.
        rays_o, rays_d = rays_o.reshape(N, M * height * width, 3), rays_d.reshape(N, M * height * width, 3)
        kwargs.setdefault("background", 1.0)
        rgb, depth, opacity = self.render_rays(planes, rays_o, rays_d, **kwargs)
        return (rgb.view(N, M, height, width, -1), depth.view(N, M, height, width),
                opacity.view(N, M, height, width))

    def turntable(self, n_views: int, distance: Optional[float] = None,
                  height: float = 0.8) -> Tuple[torch.Tensor, torch.Tensor]:
        """OpenLRM's render orbit for this model: ``c2w [n, 4, 4]``, ``intrinsics [n, 4]``."""
        return turntable_cameras(n_views, self.config.source_distance if distance is None else distance, height,
                                 self.config.focal)

    # -- triplane -> points, mesh ---------------------------------------------------------

    def query_points(self, planes, xyz) -> Tuple[torch.Tensor, torch.Tensor]:
        """Density and colour at points ``xyz [N, P, 3]`` (world units, box ``[-1, 1]^3``):
        ``sigma [N, P]`` (``softplus(raw - 1)``, what OpenLRM's ``forward_points`` returns and
        its mesh threshold applies to) and ``rgb [N, P, 3]``."""
        planes = _float_input(planes, "LRM.query_points: planes")
        xyz = _float_input(xyz, "LRM.query_points: xyz", planes.device)
        return self.synthesizer.query_points(planes, xyz, self.backend)

    @torch.no_grad()
    def extract_mesh(self, planes, resolution: Optional[int] = None, threshold: Optional[float] = None,
                     *, chunk: int = 1 << 18) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Marching cubes on the density over ``[-1, 1]^3`` with vertex colours (OpenLRM's
        ``infer_mesh``): ``vertices [V, 3]`` float32, ``faces [F, 3]`` int64 and ``colors
        [V, 3]`` float32 in ``[0, 1]``. ``planes`` is one triplane ``[1, 3, C, H, W]``.
        Defaults: ``config.mesh_resolution`` and ``config.mesh_threshold``."""
        from fastfields.export import density_grid, marching_cubes

        planes = _float_input(planes, "LRM.extract_mesh: planes")
        if planes.dim() != 5 or planes.shape[0] != 1:
            raise ValueError(f"LRM.extract_mesh: planes must be one triplane [1, 3, C, H, W], got {tuple(planes.shape)}")
        resolution = self.config.mesh_resolution if resolution is None else resolution
        threshold = self.config.mesh_threshold if threshold is None else threshold
        grid = density_grid(lambda p: self.query_points(planes, p[None])[0][0], resolution, 1.0, chunk=chunk,
                            device=planes.device)
        vertices, faces = marching_cubes(grid, threshold, 1.0)
        colors = np.zeros((len(vertices), 3), dtype=np.float32)
        for start in range(0, len(vertices), chunk):
            points = torch.from_numpy(vertices[start : start + chunk]).to(planes.device, planes.dtype)
            colors[start : start + chunk] = self.query_points(planes, points[None])[1][0].float().clamp(0, 1).cpu().numpy()
        return vertices, faces, colors

    # -- training -----------------------------------------------------------------------

    def training_step(self, batch: Mapping[str, Any], *, n_rays: Optional[int] = None,
                      generator: Optional[torch.Generator] = None, perturb: bool = True) -> Dict[str, torch.Tensor]:
        """One rendering-loss step (OpenLRM's pixel MSE; no perceptual term): reconstruct the
        triplane from the input image, render the posed target views, compare.

        ``batch`` (tensors or numpy arrays):

        - ``image [N, 3, S, S]`` in ``[0, 1]``; optional ``source_camera [N, camera_dim]``
          (default: the canonical camera, OpenLRM's convention for the input view);
        - ``c2w [N, M, 4, 4]`` (OpenGL), ``intrinsics [N, M, 4]`` (normalised) and
          ``target [N, M, H, W, 3]`` in ``[0, 1]`` of M target views;
        - optional ``background`` (default 1.0): what the targets were composited on.

        ``n_rays`` renders that many random pixels per triplane instead of every pixel.
        Returns ``loss`` (differentiable), ``mse`` and ``psnr`` (detached).
        """
        for key in ("image", "c2w", "intrinsics", "target"):
            if key not in batch:
                raise KeyError(f"LRM.training_step: batch lacks {key!r} (needs image, c2w, intrinsics, target)")
        target = _float_input(batch["target"], "LRM.training_step: target", image=True)
        if target.dim() != 5 or target.shape[-1] != 3:
            raise ValueError(f"LRM.training_step: target must be [N, M, H, W, 3], got {tuple(target.shape)}")
        N, M, H, W, _ = target.shape
        planes = self.forward_planes(batch["image"], batch.get("source_camera"))
        c2w = _float_input(batch["c2w"], "LRM.training_step: c2w", planes.device)
        intrinsics = _float_input(batch["intrinsics"], "LRM.training_step: intrinsics", planes.device)
        if c2w.shape[:2] != (N, M) or intrinsics.shape[:2] != (N, M):
            raise ValueError(f"LRM.training_step: c2w / intrinsics must be [N={N}, M={M}, ...] like target, got "
                             f"{tuple(c2w.shape)} / {tuple(intrinsics.shape)}")
        rays_o, rays_d = rays_from_cameras(c2w.reshape(N * M, 4, 4).float(), intrinsics.reshape(N * M, 4).float(), H, W,
                                           convention="opengl", normalized_intrinsics=True)
        rays_o, rays_d = rays_o.reshape(N, M * H * W, 3), rays_d.reshape(N, M * H * W, 3)
        target = target.reshape(N, M * H * W, 3).to(planes)
        if n_rays is not None:
            index = torch.randint(0, M * H * W, (N, n_rays), generator=generator, device="cpu").to(planes.device)
            pick = lambda t: torch.gather(t, 1, index[..., None].expand(-1, -1, t.shape[-1]))  # noqa: E731
            rays_o, rays_d, target = pick(rays_o), pick(rays_d), pick(target)
        rgb, _, _ = self.render_rays(planes, rays_o, rays_d, background=float(batch.get("background", 1.0)),
                                     perturb=perturb, generator=generator)
        loss = F.mse_loss(rgb, target)
        mse = loss.detach()
        return {"loss": loss, "mse": mse, "psnr": -10 * torch.log10(mse.clamp_min(1e-10))}


__all__ = ["LRM"]
