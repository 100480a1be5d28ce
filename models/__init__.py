"""The methods built on fastfields ops.

Every model follows one convention, :mod:`fastfields.models._pretrained`: a
:class:`~fastfields.models._pretrained.ModelConfig` dataclass with named presets,
``Model.from_preset(name)``, ``Model.from_pretrained(path)`` (a ``.safetensors`` file with the
config in its metadata, or a folder with ``config.json`` + ``model.safetensors``; strict, every
missing / unexpected / mis-shaped key listed in one ``CheckpointError``; official checkpoints
read as data only), ``model.save_pretrained(path)``, and inputs that may be tensors or numpy
arrays.

- ``lrm``: LRM / OpenLRM, a package with one module per part of the paper's figure
  (``config``, ``encoder`` with the ViTs, ``transformer``, ``synthesizer``, ``cameras``,
  ``preprocess``, ``checkpoint``, ``model``); ``vit`` re-exports its ViT encoders.
- ``zerorf`` and ``tensorf``: sparse-view VM fields, sharing ``field_vm``.

EG3D, SSDNeRF and DiffRF are to come."""
