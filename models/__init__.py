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
- ``eg3d``: EG3D, the triplane 3D GAN, a package likewise (``config``, ``mapping``,
  ``synthesis``, ``renderer``, ``superresolution``, ``generator``, ``discriminator``, ``loss``,
  ``train``, ``convert``).
- ``zerorf`` and ``tensorf``: sparse-view VM fields, sharing ``field_vm``.
- ``diffrf``: DiffRF, a package (``config``, ``field``, ``unet3d``, ``diffusion``, ``model``,
  ``train``, ``metrics``, ``synthetic``): diffusion over 32^3 voxel radiance fields.
- ``ssdnerf``: SSDNeRF, a package (``config``, ``decoder``, ``renderer``, ``unet``,
  ``diffusion``, ``model``, ``train``, ``reconstruct``, ``convert``, ``scenes``): a triplane
  diffusion prior trained in a single stage with the per-scene codes."""
