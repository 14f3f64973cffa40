"""Fixtures for tests/cuda: compilers, KV cache makers, and the `gpu` marker's skip rule."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

CUDA_DIR = Path(__file__).resolve().parents[2] / "cuda"
LAYOUTS = ("kv_first", "blocks_first", "cpu", "bhnc")


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


@pytest.fixture(scope="session")
def kv() -> SimpleNamespace:
    """Cache makers shared by the test modules: kv.make_caches(...), kv.bits(t), kv.LAYOUTS."""
    return SimpleNamespace(make_caches=make_caches, random_tensor=random_tensor, bits=bits, LAYOUTS=LAYOUTS)


def _bits_dtype(elem: int):
    import torch

    return {1: torch.int8, 2: torch.int16, 4: torch.int32}[elem]


def bits(t):
    """The raw bits of a tensor, so NaN patterns compare equal."""
    return t.view(_bits_dtype(t.element_size()))


def random_tensor(shape, dtype, gen):
    """Random bit patterns of any dtype (NaNs included: compare with bits())."""
    import torch

    elem = torch.tensor([], dtype=dtype).element_size()
    lim = 2 ** (8 * elem - 1)
    return torch.randint(-lim, lim, shape, generator=gen, dtype=_bits_dtype(elem)).view(dtype)


def make_caches(layout: str, layers: int, dims, dtype, cross_layer: bool, seed: int, device: str = "cpu"):
    """Per-layer caches of random bits for `layout`, dims = (num_blocks, block_size, heads, head_size).

    cross_layer=True: views into one allocation with the layer axis inside the block (vLLM's
    BL* layouts), so block strides are not dense. bhnc without it is vLLM's default LBNHC.
    """
    import torch

    nb, n, h, d = dims
    gen = torch.Generator().manual_seed(seed)
    if cross_layer:
        shape, select = {
            "kv_first": ((2, nb, layers, n, h, d), lambda x, i: x[:, :, i]),
            "blocks_first": ((nb, layers, 2, n, h, d), lambda x, i: x[:, i]),
            "cpu": ((nb, layers, h, n, 2 * d), lambda x, i: x[:, i]),
            "bhnc": ((nb, layers, n, h, 2 * d), lambda x, i: x[:, i].transpose(1, 2)),  # BLNHC
        }[layout]
        full = random_tensor(shape, dtype, gen).to(device)
        return [select(full, i) for i in range(layers)]
    shape, view = {
        "kv_first": ((2, nb, n, h, d), lambda x: x),
        "blocks_first": ((nb, 2, n, h, d), lambda x: x),
        "cpu": ((nb, h, n, 2 * d), lambda x: x),
        "bhnc": ((nb, n, h, 2 * d), lambda x: x.transpose(1, 2)),  # LBNHC
    }[layout]
    return [view(random_tensor(shape, dtype, gen).to(device)) for _ in range(layers)]
