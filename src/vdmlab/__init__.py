"""vdmlab: variational diffusion models with PyTorch Lightning and Hydra."""

__version__ = "0.1.0"

from vdmlab.resolvers import register_resolvers as _register_resolvers

_register_resolvers()  # ${vdmlab.logsnr_max:K} etc. in the dataset configs (docs/datasets.md)
