"""train_hclt: the control users would pick instead of LVD, a plain HCLT over all pixels.

Reads data.h5 (train, valid) and the LVD circuit pc_init.h5 (for its parameter count only);
writes hclt.h5 (format lvd.pc, a tree circuit of kind "hclt"). The HCLT is a Chow-Liu tree
over every pixel with one hidden variable of ``num_latents`` states per pixel (lvd.pc.hclt),
randomly initialized with ``seed`` and trained by the same EM as the baseline: the same
number of passes over the training set (``epochs`` mini-batch epochs, then
``full_batch_epochs``), the same step sizes, batch size and pseudocount.

Budget and curve: as train_baseline (``budget``: passes, or time = LVD's training seconds of
the same seed, from ``--lvd-benchmarks``; the Chow-Liu tree counts in the time; ``curve_points``
snapshots in ``--snapshot-dir``).

Size: ``num_latents: 0`` (the default) picks the number of hidden states whose HCLT has the
parameter count nearest to the LVD circuit's (``matched_num_latents``); a positive value
fixes it. The output's attributes record ``num_params``, ``target_num_params`` and
``seconds`` (the wall time of the training, reported next to LVD's in metrics.json).

    python -m lvd.stages.train_hclt --config '{"epochs": 15}' --data data.h5 \
        --pc k16/pc_init.h5 --out k16/hclt/s0.h5
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import ClassVar

from lvd import pc
from lvd.stages import emstage, inputs

log = logging.getLogger("lvd.train_hclt")
WRITER = "lvd.stages.train_hclt"


@dataclass(frozen=True)
class Config(emstage.ControlConfig):
    """The baseline's EM settings (lvd.stages.emstage.ControlConfig; section ``hclt``: same keys,
    same budget) plus the size."""
    SECTION: ClassVar[str] = "hclt"
    num_latents: int = 0           # hidden states per pixel; 0 = the parameter count nearest LVD's
    leaf_latents: bool = False     # a Chow-Liu leaf gets a latent of its own (False: it emits from its
                                   # parent's, PyJuice's layout; pc.hclt's default, README: measured)

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.leaf_latents, bool):
            raise ValueError(f"hclt.leaf_latents is {self.leaf_latents!r}, expected true or false")
        if not isinstance(self.num_latents, int) or isinstance(self.num_latents, bool) or self.num_latents < 0:
            raise ValueError(f"hclt.num_latents is {self.num_latents!r}, expected an integer >= 0")


def hclt_num_params(num_vars: int, num_cats: int, K: int, num_edges: int | None = None) -> int:
    """Free parameters of an HCLT: leaves V (C - 1) K, edges E K (K - 1), root K - 1, with
    E = ``num_edges`` K x K blocks (default V - 1, a latent per variable)."""
    E = num_vars - 1 if num_edges is None else int(num_edges)
    return num_vars * (num_cats - 1) * K + E * K * (K - 1) + (K - 1)


def matched_num_latents(num_vars: int, num_cats: int, target: int, max_k: int = 4096,
                        num_edges: int | None = None) -> int:
    """The K >= 1 whose HCLT parameter count is nearest ``target`` (the smaller K on a tie)."""
    best, best_gap = 1, None
    for k in range(1, max_k + 1):
        n = hclt_num_params(num_vars, num_cats, k, num_edges)
        gap = abs(n - target)
        if best_gap is None or gap < best_gap:
            best, best_gap = k, gap
        if n > target:
            break
    return best


def hclt_blocks(parents, leaf_latents: bool) -> int:
    """K x K blocks of pc.hclt over the Chow-Liu tree ``parents``: every non-root node, or
    (leaf_latents False) the non-root nodes that are not leaves."""
    blocks = len(parents) - 1
    return blocks if leaf_latents else blocks - int(pc.structures.leaf_copies(parents).sum())


def run(cfg: Config, data: str, pc_path: str, out: str, ckpt_dir: str | None = None, device="cpu",
        snapshot_dir: str | None = None, lvd_seconds: float | None = None, started: float | None = None,
        clock=time.perf_counter) -> dict:
    """Build and train the HCLT; returns a summary (also stored as attributes). lvd_seconds,
    started: as train_baseline.run."""
    started = clock() if started is None else started
    info = inputs.data_info(data)
    if info.kind != "image":
        raise ValueError(f"{data}: train_hclt is the image control (attribute 'kind' is {info.kind!r}); "
                         f"for text the random-init HMM (train_baseline) is the plain model")
    b = emstage.control_budget(cfg, data, lvd_seconds, "train_hclt")
    target = int(pc.load(pc_path).num_params)
    x = inputs.load_split(data, "train")
    parents = pc.chow_liu_tree(x, info.num_cats, seed=cfg.seed)      # once: its blocks set the size
    K = cfg.num_latents or matched_num_latents(info.num_vars, info.num_cats, target,
                                               num_edges=hclt_blocks(parents, cfg.leaf_latents))
    c = pc.hclt(x, num_latents=K, num_cats=info.num_cats, seed=cfg.seed, device=device,
                leaf_latents=cfg.leaf_latents, parents=parents)
    log.info("HCLT over %d pixels, %d hidden states: %d params (LVD circuit: %d)", info.num_vars, K,
             c.num_params, target)
    return emstage.train_and_save(c, cfg, data, out, source=pc_path, stage="train_hclt", writer=WRITER,
                                  history=[], ckpt_dir=ckpt_dir, snapshot_dir=snapshot_dir,
                                  budget_seconds=b["seconds"], started=started, clock=clock,
                                  extra={"hclt_num_latents": K, "target_num_params": target, "budget": b["mode"],
                                         "lvd_seconds": b["seconds"] or 0.0})


def main(argv=None) -> None:
    emstage.stage_main(argv, __doc__, Config, run, "pc_init.h5: the LVD circuit whose size to match",
                       "hclt.h5 to write (format lvd.pc)", control=True)


if __name__ == "__main__":
    main()
