"""Fixtures for tests/cuda: compilers, and the `gpu` marker's skip rule."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CUDA_DIR = Path(__file__).resolve().parents[2] / "cuda"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped where none exists)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    gpu_items = [item for item in items if "gpu" in item.keywords and here in item.path.parents]
    if not gpu_items:
        return
    try:
        import torch

        if torch.cuda.is_available():
            return
    except ImportError:
        pass
    skip = pytest.mark.skip(reason="needs a CUDA device: torch.cuda.is_available() is False")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def cuda_dir() -> Path:
    return CUDA_DIR


@pytest.fixture(scope="session")
def nvcc() -> str:
    path = shutil.which("nvcc") or next((p for p in ("/usr/local/cuda/bin/nvcc",) if Path(p).exists()), None)
    if path is None:
        pytest.skip("nvcc not found on PATH or in /usr/local/cuda/bin: cannot compile the CUDA kernel")
    return path


@pytest.fixture(scope="session")
def gxx() -> str:
    path = shutil.which("g++") or shutil.which("c++")
    if path is None:
        pytest.skip("no host C++ compiler (g++/c++) to build the kv_index.h harness")
    return path
