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
        for arm in ("lvd", "random_latents"):
            assert not (k_dir / arm / "s0" / "latent_em").exists()
            shards = sorted((k_dir / arm / "s0" / "grow").iterdir())
            assert [p.name for p in shards] == [f"shard{i}.h5" for i in range(cfg["grow"]["num_shards"])]
            heads = []
            for p in shards:
                with h5py.File(p, "r") as f:
                    assert np.isfinite(f["history"][()]).all()
                    heads.append(f["num_heads"][()])
            assert (np.concatenate(heads) == H).all(), "every cluster grown to heads_per_cluster heads"


def test_tiny_pg_reports_growing_and_keeps_masks(tiny_pg):
    """The report side of LVD-PG: growing.png and its curves in metrics.json, the teacher gap in
    the verdict, and the masks of the pruned entries still in the fine-tuned circuit."""
    import json

    from lvd import pc
    for k in tiny_pg.config["latents"]["num_states"]:
        k_dir = tiny_pg.results / f"k{k}"
        assert (k_dir / "figures" / "growing.png").stat().st_size > 0
        m = json.loads((k_dir / "metrics.json").read_text())
        rounds = tiny_pg.config["latents"]["heads_per_cluster"] - tiny_pg.config["latents"]["initial_heads"] + 1
        assert set(m["growing_mean_ll"]) == {"lvd", "random_latents"}   # keyed by the arms' names
        assert all(len(v) == rounds and np.isfinite(v).all() for v in m["growing_mean_ll"].values())
        assert "teacher's bound" in m["verdict"] and np.isfinite(m["teacher_gap"])
        final = pc.load(k_dir / "lvd" / "s0" / "pc_final.h5")
        assert set(final.patch.masks) == {"edges", "root"}
        assert (final.patch.params["edges"][~final.patch.masks["edges"]] == 0).all()
