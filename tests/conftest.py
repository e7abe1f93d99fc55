"""Fixtures shared by every test directory."""

import os

import pytest

from lvd import devices


def forget_device_claim() -> None:
    """Drop this process's GPU claim and device choice (lvd.devices keeps them for the life of
    the process, as a job needs; a test process runs many "jobs")."""
    if devices._claim is not None:
        os.close(devices._claim[1])  # closing the only descriptor drops the flock
    devices._claim = None
    devices._selected = devices._label = None


@pytest.fixture
def fresh_devices():
    """lvd.devices with no claim and no device chosen, before and after the test."""
    forget_device_claim()
    yield
    forget_device_claim()
