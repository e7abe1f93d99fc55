"""Workflow stages: one module per Snakemake rule, each runnable as ``python -m lvd.stages.<name>``.

Every stage module has a frozen dataclass ``Config``, an importable ``run(cfg, ...)`` that
tests call directly, and ``main(argv)`` that parses arguments, sets up logging, seeds and
the device (see :mod:`lvd.stages.common`).
"""
