"""On a CUDA device: the kernel and the torch path on CUDA tensors agree with the CPU torch
path, into device and pinned chunks, on a side stream. Skipped without a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kvbucket.cuda import build, gather
from kvbucket.cuda.gather import gather_blocks, scatter_blocks

pytestmark = pytest.mark.gpu

LAYOUTS = ("kv_first", "blocks_first", "cpu", "bhnc")
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@pytest.fixture(scope="module")
def extension(tmp_path_factory):
    return build.build(Path(tmp_path_factory.mktemp("kvbucket_cuda")))


@pytest.fixture(params=["kernel", "torch"])
def path(request, monkeypatch) -> str:
    ext = request.getfixturevalue("extension") if request.param == "kernel" else None
    monkeypatch.setattr(gather, "_extension", lambda: ext)
    return request.param


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cross_layer", [False, True])
@pytest.mark.parametrize("pinned", [False, True])
def test_gather_scatter_match_the_cpu_path(kv, path, layout, dtype, cross_layer, pinned) -> None:
    dims = (12, 16, 4, 64)
    ids = [7, 0, 11, 3]
    cpu = kv.make_caches(layout, 3, dims, dtype, cross_layer, seed=1)
    dev = kv.make_caches(layout, 3, dims, dtype, cross_layer, seed=1, device="cuda")
    expected = gather_blocks(cpu, ids, layout)
    targets = kv.make_caches(layout, 3, dims, dtype, cross_layer, seed=2, device="cuda")
    target_ids = torch.tensor([1, 2, 4, 5], device="cuda")
    torch.cuda.synchronize()  # the side stream below must see the caches the default stream filled
    stream = torch.cuda.Stream()
    out = torch.empty(expected.shape, dtype=dtype, pin_memory=True) if pinned else None
    chunk = gather_blocks(dev, ids, layout, out=out, stream=stream)
    stream.synchronize()
    assert torch.equal(kv.bits(chunk.cpu()), kv.bits(expected))

    scatter_blocks(chunk, targets, target_ids, layout, stream=stream)
    stream.synchronize()
    assert torch.equal(kv.bits(gather_blocks(targets, [1, 2, 4, 5], layout).cpu()), kv.bits(expected))
    fresh = kv.make_caches(layout, 3, dims, dtype, cross_layer, seed=2)
    others = [0, 3, 6, 7, 8, 9, 10, 11]
    got = gather_blocks(targets, others, layout).cpu()
    assert torch.equal(kv.bits(got), kv.bits(gather_blocks(fresh, others, layout)))


def test_many_layers_one_launch_at_model_scale(kv, path) -> None:
    """32 layers x 16 blocks of 16 tokens, 8 heads x 128, bf16: a 32 MiB chunk."""
    dims = (64, 16, 8, 128)
    ids = list(range(63, 15, -3))
    dev = kv.make_caches("kv_first", 32, dims, torch.bfloat16, False, seed=3, device="cuda")
    chunk = gather_blocks(dev, ids, "kv_first", out=torch.empty((32, 2, 256, 8, 128), dtype=torch.bfloat16,
                                                                 pin_memory=True))
    torch.cuda.current_stream().synchronize()
    cpu = [t.cpu() for t in dev]
    assert torch.equal(kv.bits(chunk), kv.bits(gather_blocks(cpu, ids, "kv_first")))


def test_odd_head_size_falls_back_to_narrow_words(kv, path) -> None:
    """head_size 3 in fp16 = 6-byte rows: the kernel must pick 2-byte words."""
    dev = kv.make_caches("blocks_first", 2, (5, 4, 3, 3), torch.float16, False, seed=4, device="cuda")
    chunk = gather_blocks(dev, [4, 1], "blocks_first")
    cpu = [t.cpu() for t in dev]
    assert torch.equal(kv.bits(chunk.cpu()), kv.bits(gather_blocks(cpu, [4, 1], "blocks_first")))
