"""lvd: latent variable distillation for probabilistic circuits.

Importing lvd (or any library module of it) does not change the process: the entry points
(the stages, ``python -m lvd.bench``, scripts/) call ``lvd.runtime.configure_process()``.
"""

__version__ = "0.1.0"
