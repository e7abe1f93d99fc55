"""The session-wide SLURM cluster for ``pytest -m slurm`` (see cluster.py).

Skipped, with the reason, when the machine cannot host it (not root, no apt-get, a SLURM
or MariaDB already running). Setup seconds (apt install, each daemon) are printed in the
terminal summary.
"""

import pytest

import cluster as _cluster

TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="session")
def slurm_cluster():
    try:
        installed = _cluster.ensure_packages()
    except _cluster.Unavailable as e:
        pytest.skip(str(e))
    c = _cluster.Cluster()
    try:
        c.start()
    except _cluster.Unavailable as e:
        c.stop()
        pytest.skip(str(e))
    except BaseException:
        logs = c.logs()
        c.stop()
        raise RuntimeError(f"the test cluster did not start; daemon logs:\n{logs}")
    TIMINGS.update(apt_install=round(installed, 2), **c.timings)
    yield c
    c.stop()


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        text = ", ".join(f"{k} {v:.1f} s" for k, v in TIMINGS.items())
        terminalreporter.write_line(f"SLURM test cluster setup: {text}")
