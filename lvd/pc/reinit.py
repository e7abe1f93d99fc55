"""Re-initialization: a circuit's structure and sizes with fresh random parameters.

    fresh = pc.random_like(circuit, seed)     # TreeCircuit or LVDCircuit; patch tree: seed, top: seed + 1
"""

from __future__ import annotations

from lvd.pc.circuit import TreeCircuit
from lvd.pc.lvdcircuit import LVDCircuit


def _fresh(tc: TreeCircuit, seed: int) -> TreeCircuit:
    return TreeCircuit(tc.structure, tc.num_latents, tc.num_cats, num_groups=tc.num_groups,
                       num_heads=tc.num_heads, kind=tc.kind, seed=seed, device=tc.device, meta=tc.meta,
                       var_map=tc.var_map)


def random_like(circuit, seed: int):
    """The same structure and sizes as ``circuit`` with random (seeded) parameters: a tree
    circuit with ``seed``; an LVD circuit's patch tree with ``seed`` and its top tree with
    ``seed + 1``."""
    if isinstance(circuit, LVDCircuit):
        return LVDCircuit(_fresh(circuit.patch, seed), _fresh(circuit.top, seed + 1),
                          circuit.image_shape, circuit.patch_size, circuit.mode)
    return _fresh(circuit, seed)
