"""Kept for imports written before :mod:`fastfields._op`, where these helpers live now."""

from .._op import compiled_ops, grad_like

__all__ = ["compiled_ops", "grad_like"]
