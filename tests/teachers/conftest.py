"""Fixtures for the teacher tests (helpers live in teacher_fixtures.py)."""

from __future__ import annotations

import pytest
from teacher_fixtures import write_image_data, write_text_data


@pytest.fixture
def image_data(tmp_path):
    return write_image_data(tmp_path / "data.h5")


@pytest.fixture
def text_data(tmp_path):
    return write_text_data(tmp_path / "data.h5")


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one intra-op thread is fastest, and robust on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
