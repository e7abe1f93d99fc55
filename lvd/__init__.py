"""lvd: latent variable distillation for probabilistic circuits."""

import os as _os

# OpenMP threads that busy-wait between parallel regions collapse when the machine is shared
# (several Snakemake jobs, or other users): measured here, a 2-thread EM step went from 0.24 s
# to 1.06 s and FAISS k-means 11x slower. Passive waiting costs little on an idle machine.
# Must be set before torch or faiss load OpenMP, hence here; an explicit setting wins. A process
# that imports torch before lvd keeps libgomp's default (brief spinning): scripts/ import lvd first.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
