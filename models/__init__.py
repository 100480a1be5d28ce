"""The methods built on fastfields ops, one module each: ``lrm`` (LRM / OpenLRM, with the ViT
encoders in ``vit``), ``zerorf`` and ``tensorf`` (sparse-view VM fields, sharing ``field_vm``).
EG3D, SSDNeRF and DiffRF are to come."""
