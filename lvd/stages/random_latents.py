"""random_latents: the control that asks "does the teacher's information matter?".

Reads a latents.h5 (format lvd.latents) and writes another with the same mode, num_states and
cluster sizes per position, but with the assignment carrying no information about the images:
z[:, i] is permuted across images independently at every position i (seeded). Everything
downstream (materialize_pc, latent_em, latent_top_em, finetune) then runs unchanged, so the
difference between this arm and LVD is the teacher's information alone. Attributes:
``control = "random_latents"``, ``seed``, ``source_fingerprint`` (of the teacher's latents).

    python -m lvd.stages.random_latents --latents k16/latents.h5 --seed 0 \
        --out k16/random_latents/s0/latents.h5
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from lvd import fingerprints, io
from lvd.stages import common

log = logging.getLogger("lvd.random_latents")
WRITER = "lvd.stages.random_latents"


@dataclass(frozen=True)
class Config:
    """No settings: the seed comes from the {seed} wildcard (--seed)."""


def permute_per_position(z: np.ndarray, seed: int) -> np.ndarray:
    """z [N, m] with every column permuted independently (column i by a generator of (seed, i))."""
    out = np.empty_like(z)
    for i in range(z.shape[1]):
        out[:, i] = z[np.random.default_rng([seed, i]).permutation(len(z)), i]
    return out


def run(latents: str, out: str, seed: int) -> dict:
    with io.open_artifact(latents, "lvd.latents") as f:
        z = io.require(f, "z", ndim=2, dtype_kind="iu")[()]
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()
                 if k in ("mode", "num_states", "num_positions", "dim", "num_clusters", "heads_per_cluster",
                          "initial_heads")}
        for key in ("mode", "num_states"):
            if key not in attrs:
                raise io.ArtifactError(f"{latents}: missing attribute {key!r}")
    zr = permute_per_position(z, seed)
    summary = {**attrs, "control": "random_latents", "seed": int(seed),
               "source_fingerprint": fingerprints.fingerprint(latents)}
    with io.create(out, "lvd.latents", WRITER, {"seed": int(seed)}) as g:
        g["z"] = zr
        K = int(attrs["num_states"])
        sizes = np.stack([np.bincount(zr[:, i], minlength=K) for i in range(zr.shape[1])])
        g["cluster_sizes"] = sizes if attrs["mode"] == "position" else sizes.sum(0, keepdims=True)
        for key, value in summary.items():
            g.attrs[key] = value
    log.info("wrote %s: %s permuted per position with seed %d", out, latents, seed)
    return summary


def main(argv=None) -> None:
    p = common.parser(__doc__)
    p.add_argument("--latents", required=True, help="the teacher's latents.h5 (format lvd.latents)")
    p.add_argument("--seed", type=int, required=True, help="seed of the permutations")
    p.add_argument("--out", required=True, help="latents.h5 to write (format lvd.latents)")
    args = p.parse_args(argv)
    common.setup(args, seed=args.seed)
    run(args.latents, args.out, args.seed)


if __name__ == "__main__":
    main()
