"""The sharded stages' shared rules (not a stage): which groups a shard holds and each group's
seed.

latent_em and grow_patch_pcs each write one lvd.pc_shard file per job (lvd.shardio.write_shard, the
layout described there); latent_top_em reads them with lvd.shardio.read_shard and gathers them.
Shard i of S holds groups i, i+S, i+2S, ... (``shard_groups``), and group g's randomness derives
from (seed, g) alone (``group_seed``), so the gathered result does not depend on the number of
shards. The three stages share these here rather than import one another: a stage
never imports a sibling stage (tests/test_stage_imports.py).
"""

from __future__ import annotations

from lvd.pc.schedule import derived_seed


def shard_groups(num_groups: int, shard: int, num_shards: int) -> list[int]:
    """The parameter groups (or clusters) shard ``shard`` of ``num_shards`` holds."""
    return list(range(shard, num_groups, num_shards))


def group_seed(seed: int, g: int) -> int:
    """Group g's shuffling seed: derived from (seed, g) alone, whatever the sharding."""
    return derived_seed(seed, g)
