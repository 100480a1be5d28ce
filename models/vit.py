"""The ViT image encoders of LRM, now in :mod:`fastfields.models.lrm.encoder`; this module
keeps the old import path (``from fastfields.models.vit import DINOv2, HFViT``) working."""

from .lrm.encoder import IMAGENET_MEAN, IMAGENET_STD, DINOv2, HFViT, set_attention_backend

__all__ = ["DINOv2", "HFViT", "IMAGENET_MEAN", "IMAGENET_STD", "set_attention_backend"]
