"""The probabilistic-circuit engine (latent trees: HCLT, HMM, LVD image circuits).

Public API::

    from lvd import pc
    c = pc.hclt(data, num_latents=K, num_cats=C, seed=0)
    h = pc.hmm(seq_len=T, num_latents=H, vocab_size=V, homogeneous=True, seed=0)
    m = pc.lvd_circuit(...)                      # see lvd.pc.lvdcircuit
    lls = c.log_likelihood(x, missing=None)
    xs = c.sample(n, x=None, missing=None, seed=None)
    hist = pc.em(c, data, epochs=1, batch_size=512, step_size=0.1, pseudocount=0.1, full_batch=False)
    sched = pc.Schedule(epochs=5, full_batch_epochs=1, batch_size=256, step_size=0.1, step_size_end=0.01)
    sched = pc.Schedule(phases=[pc.Phase(10, 0.1, 0.01), pc.Phase(10, 0.01, 0.001), pc.Phase.full(1)],
                        batch_size=256)          # phases in order (lvd.pc.schedule)
    mean_ll = pc.em_epoch(c, sched, epoch, data)  # one epoch of a schedule
    hist = pc.em(c, data, schedule=sched)        # a whole schedule
    fresh = pc.random_like(c, seed=1)            # same structure, random parameters
    pc.save(c, path); c = pc.load(path)
"""

from lvd.pc.circuit import TreeCircuit, latent_evidence
from lvd.pc.counting import count_init, counts
from lvd.pc.em import em, em_epoch, flows, mean_log_likelihood, update
from lvd.pc.groups import em_groups
from lvd.pc import grow, patchtrees  # noqa: F401  (LVD-PG: progressive growing, per-cluster patch trees)
from lvd.pc.lvdcircuit import LVDCircuit, lvd_circuit
from lvd.pc.reinit import random_like
from lvd.pc.schedule import Phase, Schedule
from lvd.pc.serialize import load, load_attrs, save
from lvd.pc.structures import chow_liu_tree, hclt, hmm, mutual_information, tree_structure
from lvd.pc.tree import TreeStructure
from lvd.pc.treell import tree_lls

__all__ = [
    "LVDCircuit", "TreeCircuit", "TreeStructure", "load", "load_attrs", "lvd_circuit", "save", "chow_liu_tree", "count_init", "counts", "em", "em_epoch", "em_groups", "flows",
    "hclt", "hmm", "latent_evidence", "mean_log_likelihood", "mutual_information",
    "Phase", "random_like", "Schedule", "tree_lls", "tree_structure", "update",
]
