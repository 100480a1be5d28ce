"""The methods built on fastfields ops, one module each: ``lrm`` (LRM / OpenLRM, with the ViT
encoders in ``vit``), ``eg3d`` (a package: the triplane 3D GAN), ``zerorf`` and ``tensorf``
(sparse-view VM fields, sharing ``field_vm``). SSDNeRF and DiffRF are to come."""
