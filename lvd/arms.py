"""The arms of the comparison: one name each, in paths, metrics, config and code.

    ARMS                       -> ("lvd", "random_latents", "baseline", "hclt")
    CONTROLS                   -> every arm but lvd
    prefix(arm)                -> its metrics prefix: "" for lvd, "<arm>_" for a control
    LABELS[arm], MARKERS[arm], COLORS[arm]   -> how figures draw it (labels are for people)
    reject_old_dirs(run)       -> ValueError naming folders of a run made under an old name

An arm's name is its folder under ``results/{run}/k{K}/`` (``lvd/s{seed}/``,
``random_latents/s{seed}/``, ``baseline/s{seed}.h5``, ``hclt/s{seed}.h5``; the same below
``logs/{run}/`` and ``benchmarks/{run}/``), the prefix of its keys in metrics.json
(``random_latents_test_bpd``; LVD's own keys have none: ``test_bpd``), its key in evaluate's
``curves``, ``controls``, ``equal_time``, ``equal_passes`` and ``growing_mean_ll``, and, for the
controls, the name of the rule that makes them (``random_latents``, ``train_baseline``,
``train_hclt``) and of their config section (``baseline``, ``hclt``; random_latents has no
settings). ``RENAMED`` lists the names used before; they are refused, naming the new one.
"""

from __future__ import annotations

import glob
import os

ARMS = ("lvd", "random_latents", "baseline", "hclt")
CONTROLS = ARMS[1:]

# the figures' words for each arm (a legend may say more than the key does)
LABELS = {"lvd": "LVD", "random_latents": "random latents", "baseline": "baseline (random-init EM)",
          "hclt": "plain HCLT"}
MARKERS = {"lvd": "o", "random_latents": "v", "baseline": "s", "hclt": "^"}
COLORS = {"lvd": "C0", "random_latents": "C2", "baseline": "C1", "hclt": "C3"}

# an arm's older folder name -> its name now
RENAMED = {"random": "random_latents"}


def prefix(arm: str) -> str:
    """The prefix of arm ``arm``'s keys in metrics.json: "" for lvd, else "<arm>_"."""
    if arm not in ARMS:
        raise ValueError(f"no arm {arm!r}; the arms: {', '.join(ARMS)}")
    return "" if arm == "lvd" else f"{arm}_"


def old_dirs(run: str, root: str = ".") -> list[str]:
    """Folders ``{results,logs,benchmarks}/{run}/k*/<old name>/`` below ``root``, sorted."""
    found = []
    for top in ("results", "logs", "benchmarks"):
        for old in RENAMED:
            pattern = os.path.join(glob.escape(root), top, glob.escape(run), "k*", old)
            found += [p for p in glob.glob(pattern) if os.path.isdir(p)]
    return sorted(os.path.relpath(p, root) for p in found)


def reject_old_dirs(run: str, root: str = ".") -> None:
    """Raise ValueError when run ``run`` has folders under an arm's old name (``RENAMED``):
    the workflow would train that arm again beside them, and mixing the two is never meant."""
    found = old_dirs(run, root)
    if found:
        moves = "; ".join(f"mv {p} {os.path.join(os.path.dirname(p), RENAMED[os.path.basename(p)])}"
                          for p in found)
        raise ValueError(f"{', '.join(found)}: made under an arm's old name "
                         f"({', '.join(f'{o!r} is now {n!r}' for o, n in RENAMED.items())}); "
                         f"rename them ({moves}) or delete them to train that arm again")
