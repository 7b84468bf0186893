"""The fit's device settings: a GPU fit runs with deterministic kernels, a CPU fit as it is."""

import os

import pytest
import torch

from bids_mcsr.inr.device import CUBLAS_DETERMINISTIC, reproducible


@pytest.fixture
def restore_determinism():
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_a_gpu_fit_runs_deterministic_kernels_and_restores_the_setting(monkeypatch, restore_determinism):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.use_deterministic_algorithms(False)
    with reproducible(torch.device("cuda")):  # sets flags only: no GPU needed
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()  # an op without one warns, never fails
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_DETERMINISTIC
    assert not torch.are_deterministic_algorithms_enabled()
    with pytest.raises(KeyError), reproducible(torch.device("cuda")):
        raise KeyError("a failing fit")
    assert not torch.are_deterministic_algorithms_enabled()


def test_a_users_cublas_setting_and_a_cpu_fit_are_left_alone(monkeypatch, restore_determinism):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    with reproducible(torch.device("cuda")):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    torch.use_deterministic_algorithms(False)
    with reproducible(torch.device("cpu")):
        assert not torch.are_deterministic_algorithms_enabled()
