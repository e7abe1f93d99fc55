"""One process of a data-parallel EM test (run by torchrun from tests/pc/test_distributed.py):
trains every case of dist_cases.py under the group and, on process 0, saves each case's tables
and lls to OUT/<case>.npz.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/pc/dist_worker.py all OUT
    ... dist_worker.py die OUT    # process 1 leaves at once: process 0 must fail, not hang
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dist_cases import CASES, make, train  # noqa: E402
from lvd.pc import distributed  # noqa: E402


def main(case: str, out: str) -> None:
    distributed.init_from_env()
    rank, size = distributed.world()
    if case == "die":
        if rank == 1:
            os._exit(0)                          # a worker lost without a word
        c, x = make("hclt")
        from lvd import pc
        pc.em_epoch(c, pc.Schedule(batch_size=7), 0, x)
        return
    for name in sorted(CASES):
        params, lls = train(name)
        if distributed.is_main():
            np.savez(os.path.join(out, f"{name}.npz"), lls=np.array(lls), world=size,
                     **{k.replace(".", "/"): v for k, v in params.items()})
    distributed.barrier("the end of the cases")    # leave together: a peer gone mid-teardown aborts gloo
    distributed.leave()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
