"""Fixtures shared by the test files."""

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: one thread per worker (and per process it starts), so that
    # N workers on N cores do not spin OpenMP threads against each other
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny models gain nothing from more (on a busy 2-core machine OpenMP spinning makes 2
    threads many times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
