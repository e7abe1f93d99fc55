"""Write the committed lvd.pc_shard fixture (tests/stages/data/pc_shard_v1/).

Two tiny runs on the first 40 digits, each up to its shards: latent_em (position mode, 2 x 2
states, 2 shards) and grow_patch_pcs (clusters mode, 2 clusters of 3 heads grown from 2,
2 shards), with the pc_init.h5 and latents.h5 they were trained from (their fingerprints are in
the shards; the ``host`` attribute, which the fingerprints do not cover, is blanked).
tests/stages/test_shard_format.py gathers them and compares the gathered circuit with a digest
recorded when the files were written: format version 1 stays readable, and gathering it gives
the same circuit.

    python tests/stages/make_shard_fixture.py tests/stages/data/pc_shard_v1

The data.h5 and embeddings.h5 the runs need are written to a temporary directory and dropped.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import h5py
import torch

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent.parent)]
import pc_fixtures as fx  # noqa: E402
from lvd.stages import assign_latents, grow_patch_pcs, inputs, latent_em, materialize_pc  # noqa: E402
from test_grow_stage import write_embeddings  # noqa: E402

N_TRAIN = 40


def write(out: Path) -> None:
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = fx.write_digits(Path(tmp) / "data.h5", n_train=N_TRAIN, n_valid=10, n_test=10)
        # latent_em: position mode
        x = inputs.load_split(data, "train")
        z = fx.kmeans_latents(x.reshape(-1, 8, 8, 1), 2, 2)
        d = out / "latent_em"
        d.mkdir(exist_ok=True)
        lat = fx.write_latents(d / "latents.h5", z, 2)
        materialize_pc.run(materialize_pc.Config(num_latents=2), data, lat, d / "pc_init.h5")
        for s in range(2):
            latent_em.run(latent_em.Config(epochs=1, batch_size=64), data, lat, d / "pc_init.h5", s, 2,
                          d / f"shard{s}.h5")
        # grow_patch_pcs: clusters mode
        emb = write_embeddings(Path(tmp) / "embeddings.h5", data)
        d = out / "grow"
        d.mkdir(exist_ok=True)
        lat = d / "latents.h5"
        assign_latents.run(assign_latents.Config(mode="clusters", num_states=6, heads_per_cluster=3,
                                                 initial_heads=2, niter=5), str(emb), str(lat))
        materialize_pc.run(materialize_pc.Config(num_latents=2), str(data), str(lat), str(d / "pc_init.h5"))
        gcfg = grow_patch_pcs.Config(epochs=1, batch_size=64, prune_threshold=1e-3)
        for s in range(2):
            grow_patch_pcs.run(gcfg, str(data), str(lat), str(emb), str(d / "pc_init.h5"), s, 2,
                               str(d / f"shard{s}.h5"))
    for path in out.glob("*/*.h5"):   # where they were written is no part of the fixture
        with h5py.File(path, "a") as f:
            f.attrs["host"] = ""


if __name__ == "__main__":
    write(Path(sys.argv[1]))
