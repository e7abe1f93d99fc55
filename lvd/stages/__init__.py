"""Workflow stages: one module per Snakemake rule, each runnable as ``python -m lvd.stages.<name>``.

Every stage module has a frozen dataclass ``Config``, an importable ``run(cfg, ...)`` that
tests call directly, and ``main(argv)`` that parses arguments, sets up logging, seeds and
the device (see :mod:`lvd.stages.common`). Five modules are not stages: ``common`` (what
every ``main`` shares), ``inputs`` (checked readers of the stage artifacts), ``emstage``
(what the EM stages on x alone share: finetune, train_baseline, train_hclt), ``shards``
(which groups a shard of latent EM or growing holds) and ``topinit`` (the top circuit counted
from the latents). No stage imports another (tests/test_stage_imports.py).

The stages are command-line entry points: this package configures the process it starts in
(``lvd.runtime.configure_process``: OpenMP's passive waiting, glibc's malloc thresholds,
denormals flushed to zero)
before any stage imports torch. The library outside lvd.stages changes nothing on import.
"""

from lvd.runtime import configure_process as _configure

_configure()
