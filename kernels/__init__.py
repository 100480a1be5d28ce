"""Triton kernels (imported lazily: importing fastfields never imports triton)."""
