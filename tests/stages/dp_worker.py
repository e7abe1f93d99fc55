"""One process of a data-parallel stage test (tests/stages/test_dataparallel.py), run by torchrun:

    python -m torch.distributed.run --standalone --nproc-per-node 2 dp_worker.py finetune --data ...

calls the stage's ``main`` with the remaining arguments. With DP_KILL_AT=<e>, process 1 kills
itself (SIGKILL) as epoch e (0-based) starts: a worker lost in the middle of training. With
DP_CHUNK_BYTES=<b>, latent_top_em's patch pass works in chunks of that many bytes (several
chunks on tiny data, so that the processes split them).
"""

import os
import signal
import sys

from lvd import pc
from lvd.stages import finetune, latent_top_em, train_baseline, train_hclt

STAGES = {"finetune": finetune, "train_baseline": train_baseline, "train_hclt": train_hclt,
          "latent_top_em": latent_top_em}


def main() -> None:
    stage, argv = sys.argv[1], sys.argv[2:]
    kill_at = os.environ.get("DP_KILL_AT")
    if kill_at is not None and os.environ.get("RANK") == "1":
        real = pc.em_epoch

        def em_epoch(circuit, sched, epoch, *args, **kwargs):
            if epoch == int(kill_at):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(circuit, sched, epoch, *args, **kwargs)

        pc.em_epoch = em_epoch
    if os.environ.get("DP_CHUNK_BYTES"):
        latent_top_em.CHUNK_BYTES = int(os.environ["DP_CHUNK_BYTES"])
    STAGES[stage].main(argv)


if __name__ == "__main__":
    main()
