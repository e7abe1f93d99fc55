"""The whole LVD-PG DAG (latents.mode: clusters, tiny_pg preset) for real through Snakemake:
clusters-mode latents, grow_patch_pcs shards gathered by latent_top_em, finetune, the controls,
evaluate and summarize (about a minute on 2 cores)."""

import h5py
import numpy as np
import pytest
from test_end_to_end import IMAGE_KEYS, Run, check_finished_run


@pytest.fixture(scope="module")
def tiny_pg(tmp_path_factory):
    return Run(tmp_path_factory, "tiny_pg")


def test_tiny_pg_whole_dag(tiny_pg):
    check_finished_run(tiny_pg, IMAGE_KEYS)
    cfg = tiny_pg.config
    H = cfg["latents"]["heads_per_cluster"]
    for k in cfg["latents"]["num_states"]:
        k_dir = tiny_pg.results / f"k{k}"
        with h5py.File(k_dir / "latents.h5", "r") as f:
            assert f.attrs["mode"] == "clusters" and f.attrs["num_clusters"] == k // H
        for arm in ("lvd", "random"):
            assert not (k_dir / arm / "s0" / "latent_em").exists()
            shards = sorted((k_dir / arm / "s0" / "grow").iterdir())
            assert [p.name for p in shards] == [f"shard{i}.h5" for i in range(cfg["grow"]["num_shards"])]
            heads = []
            for p in shards:
                with h5py.File(p, "r") as f:
                    assert np.isfinite(f["history"][()]).all()
                    heads.append(f["num_heads"][()])
            assert (np.concatenate(heads) == H).all(), "every cluster grown to heads_per_cluster heads"
