"""Sharded latent EM at scale: with `--cores 4 --resources gpu=4` and four simulated GPUs, the
four latent_em shards of the tiny preset run side by side, each on its own claimed device."""

import h5py
import yaml
from workflow_helpers import copy_workflow, preset_args, snakemake


def test_four_shards_run_concurrently_on_four_devices(tmp_path, monkeypatch):
    monkeypatch.setenv("LVD_FAKE_GPUS", "4")
    monkeypatch.setenv("LVD_DEVICE_LOCK_DIR", str(tmp_path / "locks"))
    work = copy_workflow(tmp_path / "wf")
    (work / "shards.yaml").write_text(yaml.safe_dump({"latent_em": {"num_shards": 4},
                                                      "latents": {"num_states": [4]}}))
    shard_dir = work / "results" / "tiny" / "k4" / "lvd" / "s0" / "latent_em"
    targets = [str((shard_dir / f"shard{i}.h5").relative_to(work)) for i in range(4)]
    proc, _ = snakemake(work, "--cores", "4", "--resources", "gpu=4", *preset_args(work, "tiny"),
                        "shards.yaml", "--", *targets)
    log = proc.stdout + proc.stderr
    # Snakemake announces each job as it starts ("rule latent_em:") and reports "Finished
    # jobid: N (Rule: latent_em)": all four must have started before the first one finished.
    first_done = log.index("(Rule: latent_em)")
    assert log.count("rule latent_em:", 0, first_done) == 4, log[-3000:]
    devices = set()
    for i in range(4):
        with h5py.File(shard_dir / f"shard{i}.h5", "r") as f:
            devices.add(f.attrs["device"])
    assert devices == {f"fake-gpu:{i}" for i in range(4)}
