"""lvd: latent variable distillation for probabilistic circuits."""

__version__ = "0.1.0"
