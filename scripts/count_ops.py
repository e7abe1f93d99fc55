"""Device operations of one EM step on the torch path (what CUDA runs), counted on the CPU.

    python scripts/count_ops.py                                  # HCLT 784 x 256, K = 128, batch 512
    python scripts/count_ops.py --num-latents 32 --by-name       # with the count of each operator

On a GPU every operator call that is not a view is at least one kernel launch, so at moderate K
a step whose calls outnumber its arithmetic is bound by launches. This builds the HCLT of
``python -m lvd.bench em`` (random data, the same sizes), runs one warm-up step and then one
EM step (flows and update, as lvd.pc.em's epochs do) in kernel mode ``torch`` under torch's
profiler, and prints one JSON line: the operator calls that are not views (the outermost ``aten::``
calls of the profiler's tree, views, reshapes and other metadata operations left out), the
tree's depth and the count per level.
"""

from __future__ import annotations

from lvd.runtime import configure_process  # noqa: I001  (first: before torch loads libgomp)

configure_process()

import argparse
import collections
import json

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from lvd import pc
from lvd.pc import kernels

# operators that only make a new view or read metadata: no device work
VIEWS = {"aten::view", "aten::reshape", "aten::_reshape_alias", "aten::as_strided", "aten::slice", "aten::select",
         "aten::transpose", "aten::t", "aten::permute", "aten::expand", "aten::unsqueeze", "aten::squeeze",
         "aten::alias", "aten::detach", "aten::detach_", "aten::lift_fresh", "aten::view_as", "aten::unflatten",
         "aten::flatten", "aten::_unsafe_view", "aten::numpy_T", "aten::expand_as", "aten::unbind", "aten::split",
         "aten::chunk", "aten::narrow", "aten::resolve_conj", "aten::resolve_neg", "aten::result_type",
         "aten::is_nonzero", "aten::item", "aten::_local_scalar_dense", "aten::size", "aten::stride",
         "aten::contiguous", "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty",
         "aten::new_empty_strided", "aten::_has_compatible_shallow_copy_type", "aten::set_", "aten::is_same_size"}


def count(circuit, x: torch.Tensor) -> collections.Counter:
    """Top-level non-view aten calls of one EM step (flows + update) on the torch path."""
    with kernels.forced("torch"):
        f, _ = pc.flows(circuit, {"x": x}, sparse=True)            # warm-up: caches, index tensors
        pc.update(circuit, f, 0.1, 0.1)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            f, _ = pc.flows(circuit, {"x": x}, sparse=True)
            pc.update(circuit, f, 0.1, 0.1)
    out = collections.Counter()
    for ev in prof.events():
        if not ev.name.startswith("aten::") or ev.name in VIEWS:
            continue
        p = ev.cpu_parent                             # counted once: the outermost aten call of a chain
        while p is not None and not p.name.startswith("aten::"):
            p = p.cpu_parent
        if p is None:
            out[ev.name] += 1
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-vars", type=int, default=784)
    ap.add_argument("--num-cats", type=int, default=256)
    ap.add_argument("--num-latents", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--by-name", action="store_true", help="also print the count of each operator")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    data = rng.integers(0, args.num_cats, size=(max(args.batch_size, 2000), args.num_vars))
    c = pc.hclt(data, num_latents=args.num_latents, num_cats=args.num_cats, seed=0)
    ops = count(c, torch.from_numpy(data[:args.batch_size]))
    total = sum(ops.values())
    res = {"num_vars": args.num_vars, "num_cats": args.num_cats, "num_latents": args.num_latents,
           "batch_size": args.batch_size, "depth": c.structure.depth, "ops": total,
           "ops_per_level": round(total / c.structure.depth, 1)}
    if args.by_name:
        res["by_name"] = dict(ops.most_common())
    print(json.dumps(res))


if __name__ == "__main__":
    main()
