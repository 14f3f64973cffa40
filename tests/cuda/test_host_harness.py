"""kv_index.h executed on the CPU (host_harness.cpp, the kernel's loops without a GPU)
against cuda/kv_index.py and the torch path: the header and its mirror must agree."""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kvbucket.cuda import gather_blocks
from kvbucket.cuda.kv_index import LayoutMismatch, PagedLayout, describe, word_bytes

HERE = Path(__file__).resolve().parent
LAYOUTS = ("kv_first", "blocks_first", "cpu", "bhnc")
I64 = ctypes.POINTER(ctypes.c_int64)


@pytest.fixture(scope="module")
def harness(gxx: str, cuda_dir: Path, tmp_path_factory) -> ctypes.CDLL:
    lib = tmp_path_factory.mktemp("harness") / "kv_harness.so"
    flags = ["-std=c++17", "-O1", "-fno-strict-aliasing", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC"]
    cmd = [gxx, *flags, f"-I{cuda_dir}", str(HERE / "host_harness.cpp"), "-o", str(lib)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    dll = ctypes.CDLL(str(lib))
    dll.kvh_describe.restype = ctypes.c_int32
    dll.kvh_copy.restype = ctypes.c_int32
    return dll


def int64s(values) -> ctypes.Array:
    return (ctypes.c_int64 * len(values))(*values)


def header_describe(dll, layout: str, t: torch.Tensor):
    out = int64s([0] * 8)
    status = dll.kvh_describe(ctypes.c_int32(PagedLayout.parse(layout)), ctypes.c_int32(t.dim()),
                              int64s(t.shape), int64s(t.stride()), out)
    return status, tuple(out)


def header_copy(dll, layout: str, caches, chunk, ids: list[int], *, to_chunk: bool, word: int = 0) -> int:
    """Runs the header's gather/scatter; returns the copy word it used."""
    first = caches[0]
    ptrs = (ctypes.c_void_p * len(caches))(*(t.data_ptr() for t in caches))
    used = ctypes.c_int32(0)
    status = dll.kvh_copy(
        ctypes.c_int32(PagedLayout.parse(layout)), ctypes.c_int32(first.dim()), int64s(first.shape),
        int64s(first.stride()), ctypes.c_int64(first.element_size()), ctypes.c_int64(len(caches)), ptrs,
        ctypes.c_void_p(chunk.data_ptr()), int64s(ids), ctypes.c_int64(len(ids)),
        ctypes.c_int32(int(to_chunk)), ctypes.c_int32(word), ctypes.byref(used),
    )
    assert status == 0, f"kvh_copy status {status}"
    return used.value


def caches_for(kv, layout: str, layers: int, nb: int, n: int, h: int, d: int, dtype, offset: int, seed: int):
    """Caches carved out of one buffer at `offset` elements (misaligns the base for small words)."""
    per = {"kv_first": (2, nb, n, h, d), "blocks_first": (nb, 2, n, h, d), "cpu": (nb, h, n, 2 * d),
           "bhnc": (nb, n, h, 2 * d)}[layout]
    numel = torch.Size(per).numel()
    flat = kv.random_tensor((offset + layers * numel,), dtype, torch.Generator().manual_seed(seed))
    caches = [flat[offset + i * numel : offset + (i + 1) * numel].view(per) for i in range(layers)]
    return [c.transpose(1, 2) for c in caches] if layout == "bhnc" else caches


@pytest.mark.parametrize("layout", LAYOUTS)
def test_describe_agrees_with_the_mirror(harness, kv, layout) -> None:
    cache = caches_for(kv, layout, 1, 3, 4, 2, 8, torch.float16, 0, 0)[0]
    status, values = header_describe(harness, layout, cache)
    strides, dims = describe(PagedLayout.parse(layout), tuple(cache.shape), cache.stride())
    assert status == 0
    assert values == (strides.kv, strides.block, strides.token, strides.head,
                      dims.num_blocks, dims.block_size, dims.num_heads, dims.head_size)


@pytest.mark.parametrize(
    ("layout", "tensor"),
    [
        ("kv_first", torch.zeros(3, 3, 4, 2, 8)),  # K/V axis is not 2
        ("blocks_first", torch.zeros(3, 2, 4, 8)),  # rank
        ("cpu", torch.zeros(3, 2, 4, 7)),  # odd K|V axis
        ("cpu", torch.zeros(3, 4, 2, 16).transpose(1, 2)),  # pages not dense
        ("bhnc", torch.zeros(3, 2, 16, 4).transpose(2, 3)),  # last axis not contiguous
    ],
)
def test_describe_refuses_the_same_tensors(harness, layout, tensor) -> None:
    status, _ = header_describe(harness, layout, tensor)
    assert status != 0
    with pytest.raises(LayoutMismatch):
        describe(PagedLayout.parse(layout), tuple(tensor.shape), tensor.stride())


@settings(max_examples=80, deadline=None)
@given(
    layout=st.sampled_from(LAYOUTS),
    layers=st.integers(1, 3),
    nb=st.integers(1, 5),
    n=st.integers(1, 4),
    h=st.integers(1, 3),
    d=st.sampled_from([1, 2, 3, 4, 8, 16]),
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.uint8]),
    offset=st.integers(0, 3),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_header_copy_matches_the_torch_path(
    harness, kv, layout, layers, nb, n, h, d, dtype, offset, seed, data
) -> None:
    caches = caches_for(kv, layout, layers, nb, n, h, d, dtype, offset, seed)
    ids = data.draw(st.lists(st.integers(0, nb - 1), unique=True, max_size=nb), label="ids")
    expected = gather_blocks(caches, ids, layout)

    chunk = torch.empty_like(expected)
    best = header_copy(harness, layout, caches, chunk, ids, to_chunk=True)
    assert torch.equal(kv.bits(chunk), kv.bits(expected))
    first = caches[0]
    strides, dims = describe(PagedLayout.parse(layout), tuple(first.shape), first.stride())
    elem = first.element_size()
    mask = d * elem | chunk.data_ptr()
    for value in (strides.kv, strides.block, strides.token, strides.head):
        mask |= value * elem
    for c in caches:
        mask |= c.data_ptr()
    assert best == word_bytes(mask)

    word = data.draw(st.sampled_from([w for w in (1, 2, 4, 8, 16) if w <= best]), label="word")
    targets = caches_for(kv, layout, layers, nb, n, h, d, dtype, offset, seed + 1)
    header_copy(harness, layout, targets, chunk, ids, to_chunk=False, word=word)
    assert torch.equal(kv.bits(gather_blocks(targets, ids, layout)), kv.bits(expected))
    others = [b for b in range(nb) if b not in ids]
    fresh = caches_for(kv, layout, layers, nb, n, h, d, dtype, offset, seed + 1)
    untouched = gather_blocks(fresh, others, layout)
    assert torch.equal(kv.bits(gather_blocks(targets, others, layout)), kv.bits(untouched))
