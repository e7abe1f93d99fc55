"""Count initialization of a circuit from observed latents (not a stage).

materialize_pc initializes the top from the teacher's latents z; latent_top_em initializes it
again from LVD-PG's grown assignment, with the settings pc_init.h5 records (``init_top``). Both
use these helpers rather than one stage importing the other (tests/test_stage_imports.py).
"""

from __future__ import annotations

import logging

import torch

from lvd import io, pc

log = logging.getLogger("lvd.topinit")
COUNT_CHUNK = 65536  # rows of z counted at a time (text: millions of windows)
HCLT_TOP_LEAF_SMOOTHING = 0.01  # p(Z_i = k | H_i = k) = 1 - 0.01 + 0.01 / K at the start


def chunked_count_init(tc, z, x=None, pseudocount: float = 0.1, chunk: int = COUNT_CHUNK) -> None:
    """pc.count_init in chunks of rows (the same result: counts add up)."""
    total = None
    for i in range(0, len(z), chunk):
        c = pc.counts(tc, z[i:i + chunk], None if x is None else x[i:i + chunk])
        total = c if total is None else {k: total[k] + c[k] for k in total}
    pc.update(tc, {k: v.to(tc.device) for k, v in total.items()}, 1.0, pseudocount)


# materialize_pc's settings of the HCLT top's fit on z, with the values used before they were
# settings (a pc_init.h5 written without them was fitted with these)
TOP_INIT_DEFAULTS = {"top_init_batch_size": 512, "top_init_step_size": 0.1, "top_init_step_size_end": 0.01}


def top_init_schedule(settings: dict) -> dict:
    """The mini-batch EM settings of the HCLT top's fit on z (``epochs``, ``batch_size``,
    ``step_size``, ``step_size_end``) from materialize_pc's settings (its Config as a dict, or
    the config stored in pc_init.h5; the keys it lacks take TOP_INIT_DEFAULTS)."""
    return {"epochs": settings["top_init_epochs"],
            **{k.removeprefix("top_init_"): settings.get(k, v) for k, v in TOP_INIT_DEFAULTS.items()}}


def init_hclt_top(top, z, pseudocount: float, schedule: dict, seed: int) -> None:
    """Fit the HCLT top on the teacher's z as observed data (its leaf variables).

    With as many hidden states as Z states (top_num_latents 0 or K) the top starts as the tree
    top: root and edges counted from z (H_i = z_i), leaves p(Z_i | H_i) the identity smoothed by
    HCLT_TOP_LEAF_SMOOTHING, so it starts next to the tree top (digits, K = 16, measured
    in this stage's log: the counted tree's train ll on z -29.02 nats, the HCLT top
    from it -29.16 with smoothing 0.02, -29.10 after the EM epochs below; from a random start the
    same epochs reached only -40.39, and that LVD run ended at 2.235 test bpd against the tree
    top's 2.062). With fewer hidden states it starts random. Then ``schedule["epochs"]``
    mini-batch EM epochs on z (``top_init_schedule``: pc.top_init_epochs, pc.top_init_batch_size,
    pc.top_init_step_size -> pc.top_init_step_size_end; by default 3 epochs of 512 rows at
    0.1 -> 0.01) and one full-batch epoch; latent_top_em then trains it on the patch likelihoods
    (soft evidence on its leaves)."""
    zt = torch.as_tensor(z)
    K = top.num_cats
    if top.num_latents == K:
        tree = pc.TreeCircuit(top.structure, K, 0, kind="top", device=top.device)
        chunked_count_init(tree, z, pseudocount=pseudocount)
        eps = HCLT_TOP_LEAF_SMOOTHING
        eye = (1 - eps) * torch.eye(K, device=top.device) + eps / K          # [C = K, M = K]
        top.params.update(edges=tree.params["edges"].clone(), root=tree.params["root"].clone(),
                          leaves=eye.expand_as(top.params["leaves"]).contiguous())
        with torch.no_grad():
            log.info("HCLT top from the counted tree: train ll on z %.4f (the tree's %.4f)",
                     float(top.log_likelihood(x=zt).mean()), float(tree.log_likelihood(z=zt).mean()))
    if schedule["epochs"]:
        hist = pc.em(top, zt, epochs=schedule["epochs"], batch_size=schedule["batch_size"],
                     step_size=schedule["step_size"], step_size_end=schedule["step_size_end"],
                     pseudocount=pseudocount, seed=seed)
        log.info("HCLT top on z: %d mini-batch epochs, train ll %s", schedule["epochs"],
                 ", ".join(f"{h:.4f}" for h in hist))
    hist = pc.em(top, zt, epochs=1, full_batch=True, step_size=1.0, pseudocount=pseudocount)
    log.info("HCLT top on z: full-batch epoch, train ll %.4f", hist[0])


def init_top(c: pc.LVDCircuit, z, pc_path: str) -> None:
    """Count-initialize the top of ``c`` again from ``z``, as materialize_pc did from the
    teacher's latents, with the settings it recorded in ``pc_path`` (pc_init.h5's config:
    pseudocount, and for an HCLT top top_init_epochs, seed and the fit's other settings,
    ``top_init_schedule``)."""
    stored = pc.load_attrs(pc_path).get("config", {})
    need = ("pseudocount",) + (("top_init_epochs", "seed") if c.top_kind == "hclt" else ())
    missing = [k for k in need if not isinstance(stored, dict) or k not in stored]
    if missing:
        raise io.ArtifactError(f"{pc_path}: its config lacks {missing} (written by an older materialize_pc; "
                               f"rerun it)")
    if c.top_kind == "hclt":
        init_hclt_top(c.top, z, stored["pseudocount"], top_init_schedule(stored), stored["seed"])
    else:
        chunked_count_init(c.top, z, pseudocount=stored["pseudocount"])
