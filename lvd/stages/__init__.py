"""Workflow stages: one module per Snakemake rule, each runnable as ``python -m lvd.stages.<name>``.

Every stage module has a frozen dataclass ``Config``, an importable ``run(cfg, ...)`` that
tests call directly, and ``main(argv)`` that parses arguments, sets up logging, seeds and
the device (see :mod:`lvd.stages.common`). Three modules are not stages: ``common`` (what
every ``main`` shares), ``inputs`` (checked readers of the stage artifacts) and ``emstage``
(what the EM stages on x alone share: finetune, train_baseline, train_hclt).
"""
