"""The five methods (LRM, EG3D, SSDNeRF, ZeroRF, DiffRF), built on fastfields ops. Empty for now."""
