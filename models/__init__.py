"""The methods built on fastfields ops, one module each: ``lrm`` (LRM / OpenLRM, with the ViT
encoders in ``vit``), ``zerorf`` and ``tensorf`` (sparse-view VM fields, sharing ``field_vm``),
``diffrf`` (a package: voxel radiance-field diffusion). EG3D and SSDNeRF are to come."""
