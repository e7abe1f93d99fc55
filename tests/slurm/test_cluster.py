"""Smoke tests of the test cluster itself: job steps, accounting, fake GPUs through gres."""

import socket

import pytest

pytestmark = pytest.mark.slurm


def test_batch_job_with_a_job_step_runs_and_is_accounted(slurm_cluster):
    job = slurm_cluster.sbatch("--wrap", "srun -n1 hostname")
    assert slurm_cluster.wait_job(job, timeout=60) == "COMPLETED"
    assert slurm_cluster.output(job).strip() == socket.gethostname()
    assert job in slurm_cluster.wait_accounted([job])  # accounting (slurmdbd) recorded it


@pytest.mark.parametrize("gpus, expected", [(1, 1), (2, 2)])
def test_gpu_jobs_see_cuda_visible_devices(slurm_cluster, gpus, expected):
    job = slurm_cluster.sbatch(f"--gpus={gpus}", "--wrap", "srun -n1 printenv CUDA_VISIBLE_DEVICES")
    assert slurm_cluster.wait_job(job, timeout=60) == "COMPLETED"
    seen = slurm_cluster.output(job).strip().split(",")
    assert len(seen) == expected and all(s in {"0", "1", "2", "3"} for s in seen)


def test_job_without_gpus_sees_none(slurm_cluster):
    job = slurm_cluster.sbatch("--wrap", "echo CVD=${CUDA_VISIBLE_DEVICES-unset}")
    assert slurm_cluster.wait_job(job, timeout=60) == "COMPLETED"
    assert slurm_cluster.output(job).strip() == "CVD=unset"
