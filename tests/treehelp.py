"""Helpers shared by tests in several folders (tests/ is on sys.path: tests/conftest.py)."""

import numpy as np


def group_parents(parents: np.ndarray, var_map: np.ndarray, g: int) -> np.ndarray:
    """Group g's own tree as a parents array over the variables (root -1): what the super-tree
    embedded for it, read back from the slots (``var_map`` [G, V_S] of lvd.pc.varmap)."""
    vm = np.asarray(var_map[g])
    real = np.flatnonzero(vm >= 0)
    out = np.full(len(real), -1, dtype=np.int64)
    par = np.asarray(parents)[real]
    out[vm[real]] = np.where(par < 0, -1, vm[np.maximum(par, 0)])
    return out
