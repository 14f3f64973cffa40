"""Python mirror of ``kv_index.h``: which paged-cache element each chunk element is.

Pure integers, no torch, so it imports anywhere. Keep it in step with the header:
``tests/cuda/test_host_harness.py`` compiles the header and checks the two agree.

Chunk: ``[num_layers, 2, tokens, num_heads, head_size]``, ``tokens = blocks * block_size``.
A row is the ``head_size`` elements of one (layer, k/v, token, head); every paged layout keeps
a row contiguous. Layouts of one layer's cache tensor:

- ``kv_first``     ``[2, num_blocks, block_size, num_heads, head_size]`` (FlashAttention style)
- ``blocks_first`` ``[num_blocks, 2, block_size, num_heads, head_size]``
- ``cpu``          ``[num_blocks, num_heads, block_size, 2 * head_size]``, read as
  ``[num_blocks, num_heads, 2, block_size, head_size]``: vLLM 0.32's CPU_ATTN views each
  (block, head) page as all K rows, then all V rows
- ``bhnc``         ``[num_blocks, num_heads, block_size, 2 * head_size]`` with any strides,
  K = ``[..., :head_size]``, V = ``[..., head_size:]``: the per-layer view vLLM >= 0.32 hands
  GPU backends and connectors, whatever ``VLLM_KV_CACHE_LAYOUT`` orders it in memory
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass


class PagedLayout(enum.IntEnum):
    """Values match ``enum KvLayout`` in kv_index.h."""

    KV_FIRST = 0
    BLOCKS_FIRST = 1
    CPU = 2
    BHNC = 3

    @classmethod
    def parse(cls, name: str | PagedLayout) -> PagedLayout:
        if isinstance(name, PagedLayout):
            return name
        try:
            return cls[name.upper()]
        except KeyError:
            known = ", ".join(m.name.lower() for m in cls)
            raise ValueError(f"unknown paged KV layout {name!r}; known: {known}") from None


class LayoutMismatch(ValueError):
    """A cache tensor's shape or strides do not fit the named layout (``KvStatus`` != OK)."""


@dataclass(frozen=True, slots=True)
class KvStrides:
    """Element strides of one layer's cache along (k/v, block, token, head); head_size is 1."""

    kv: int
    block: int
    token: int
    head: int


@dataclass(frozen=True, slots=True)
class KvDims:
    num_blocks: int
    block_size: int
    num_heads: int
    head_size: int


def describe(layout: PagedLayout, shape: Sequence[int], stride: Sequence[int]) -> tuple[KvStrides, KvDims]:
    """Mirror of ``kv_describe``: a layer tensor's shape/strides (elements) -> strides, dims."""
    shape, stride = tuple(shape), tuple(stride)
    ndim = len(shape)
    if layout in (PagedLayout.KV_FIRST, PagedLayout.BLOCKS_FIRST):
        if ndim != 5:
            raise LayoutMismatch(f"{layout.name.lower()} wants a 5-D cache, got shape {shape}")
        kv_axis = 0 if layout == PagedLayout.KV_FIRST else 1
        block_axis = 1 - kv_axis
        if shape[kv_axis] != 2:
            raise LayoutMismatch(f"{layout.name.lower()}: axis {kv_axis} must be 2 (K, V), got {shape}")
        if stride[4] != 1 and shape[4] != 1:
            raise LayoutMismatch(f"head_size axis must be contiguous, strides {stride}")
        dims = KvDims(shape[block_axis], shape[2], shape[3], shape[4])
        return KvStrides(stride[kv_axis], stride[block_axis], stride[2], stride[3]), dims
    if ndim != 4:
        raise LayoutMismatch(f"{layout.name.lower()} wants a 4-D cache, got shape {shape}")
    if shape[3] % 2:
        raise LayoutMismatch(f"{layout.name.lower()}: last axis is K|V and must be even, got {shape}")
    head_size = shape[3] // 2
    dims = KvDims(shape[0], shape[2], shape[1], head_size)
    if stride[3] != 1:
        raise LayoutMismatch(f"last axis must be contiguous, strides {stride}")
    if layout == PagedLayout.BHNC:
        return KvStrides(head_size, stride[0], stride[2], stride[1]), dims
    if stride[2] != 2 * head_size and shape[2] != 1:
        raise LayoutMismatch(f"cpu layout needs dense [block_size, 2*head_size] pages, strides {stride}")
    return KvStrides(shape[2] * head_size, stride[0], head_size, stride[1]), dims


def cache_row(s: KvStrides, block: int, kv: int, token: int, head: int) -> int:
    """Mirror of ``kv_cache_row``: element offset of a row from the layer tensor's first element."""
    return block * s.block + kv * s.kv + token * s.token + head * s.head


def chunk_row(d: KvDims, num_chunk_blocks: int, layer: int, kv: int, token: int, head: int) -> int:
    """Mirror of ``kv_chunk_row``: row index in the chunk (times head_size = element offset)."""
    tokens = num_chunk_blocks * d.block_size
    return ((layer * 2 + kv) * tokens + token) * d.num_heads + head


def word_bytes(bits: int) -> int:
    """Mirror of ``kv_word_bytes``: largest copy word (<= 16) dividing every OR-ed quantity."""
    w = 16
    while w > 1 and bits & (w - 1):
        w >>= 1
    return w


def chunk_shape(num_layers: int, d: KvDims, num_chunk_blocks: int) -> tuple[int, int, int, int, int]:
    return (num_layers, 2, num_chunk_blocks * d.block_size, d.num_heads, d.head_size)
