"""Gather the KV blocks of all layers into one chunk, and scatter a chunk back.

Chunk: ``[num_layers, 2, len(block_ids) * block_size, num_heads, head_size]``, the shape a
connector stores. Layouts: see ``kv_index``. CUDA caches go through the ``kvbucket_cuda``
extension when it is built (one launch for all layers and blocks, straight into a CUDA or
pinned chunk); everything else takes a torch indexing path that works on CPU and CUDA
alike. Both compute rows with the same ``kv_index`` math. On CUDA the copy is queued on
``stream`` (default: the current stream): order that stream after the writers of the caches
or chunk, and synchronize it before reading a host chunk.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from types import ModuleType

import torch

from kvbucket.cuda import build
from kvbucket.cuda.kv_index import KvDims, KvStrides, PagedLayout, chunk_shape, describe

BlockIds = torch.Tensor | Sequence[int]


def gather_blocks(
    kv_caches: Sequence[torch.Tensor],
    block_ids: BlockIds,
    layout: str | PagedLayout,
    out: torch.Tensor | None = None,
    *,
    stream: torch.cuda.Stream | None = None,
) -> torch.Tensor:
    """Copy blocks ``block_ids`` of every layer into ``out`` (allocated on the caches' device if None)."""
    lay, strides, dims = _describe_layers(kv_caches, layout)
    ids = _block_ids(block_ids, dims)
    shape = chunk_shape(len(kv_caches), dims, ids.numel())
    if out is None:
        out = _empty_chunk(shape, kv_caches[0], stream)
    _check_chunk(out, shape, kv_caches[0])
    _copy(kv_caches, ids, lay, strides, dims, out, to_chunk=True, stream=stream)
    return out


def scatter_blocks(
    chunk: torch.Tensor,
    kv_caches: Sequence[torch.Tensor],
    block_ids: BlockIds,
    layout: str | PagedLayout,
    *,
    stream: torch.cuda.Stream | None = None,
) -> None:
    """Copy ``chunk`` into blocks ``block_ids`` of every layer (ids must be distinct)."""
    lay, strides, dims = _describe_layers(kv_caches, layout)
    ids = _block_ids(block_ids, dims)
    _check_chunk(chunk, chunk_shape(len(kv_caches), dims, ids.numel()), kv_caches[0])
    _copy(kv_caches, ids, lay, strides, dims, chunk, to_chunk=False, stream=stream)


def paged_view(cache: torch.Tensor, strides: KvStrides, dims: KvDims) -> torch.Tensor:
    """One layer as ``[2, num_blocks, block_size, num_heads, head_size]``, any layout.

    ``kv_index.cache_row`` as strides: element (kv, block, token, head, d) of the view is
    ``cache_row(strides, block, kv, token, head) + d`` elements past the layer's first one.
    """
    shape = (2, dims.num_blocks, dims.block_size, dims.num_heads, dims.head_size)
    order = (strides.kv, strides.block, strides.token, strides.head, 1)
    return cache.as_strided(shape, order, cache.storage_offset())


def copy_torch(
    kv_caches: Sequence[torch.Tensor],
    block_ids: torch.Tensor,
    strides: KvStrides,
    dims: KvDims,
    chunk: torch.Tensor,
    *,
    to_chunk: bool,
) -> None:
    """The torch path. CUDA: one index_select / index_copy_ per layer. CPU: one strided copy_
    per block, since CPU index ops fall back to per-element loops on these strides."""
    nb = block_ids.numel()
    if nb == 0:
        return
    on_cpu = None if kv_caches[0].is_cuda else block_ids.tolist()
    for layer, cache in enumerate(kv_caches):
        paged = paged_view(cache, strides, dims)
        part = chunk[layer].view(2, nb, dims.block_size, dims.num_heads, dims.head_size)
        if on_cpu is not None:
            for i, block in enumerate(on_cpu):
                if to_chunk:
                    part[:, i].copy_(paged[:, block])
                else:
                    paged[:, block].copy_(part[:, i])
        elif to_chunk:
            part.copy_(paged.index_select(1, block_ids), non_blocking=True)
        else:
            paged.index_copy_(1, block_ids, part.to(cache.device, non_blocking=True))


@functools.cache
def _extension() -> ModuleType | None:
    return build.load_built() if torch.cuda.is_available() else None


def _copy(kv_caches, ids, layout, strides, dims, chunk, *, to_chunk, stream) -> None:
    first = kv_caches[0]
    ext = _extension() if first.is_cuda else None
    if ext is not None and not (chunk.is_cuda or chunk.is_pinned()):
        ext = None  # the kernel cannot reach pageable memory; torch stages it
    if not first.is_cuda:
        copy_torch(kv_caches, ids, strides, dims, chunk, to_chunk=to_chunk)
        return
    if stream is None:
        stream = torch.cuda.current_stream(first.device)
    with torch.cuda.device(first.device), torch.cuda.stream(stream):
        ids = ids.to(first.device, non_blocking=True)
        if ext is None:
            copy_torch(kv_caches, ids, strides, dims, chunk, to_chunk=to_chunk)
        else:
            table = _pointer_table(first.device, tuple(t.data_ptr() for t in kv_caches))
            table.record_stream(stream)  # the table outlives this call in the cache; keep it safe to free
            ext.copy_blocks(list(kv_caches), table, ids, chunk, int(layout), to_chunk, stream.cuda_stream)


def _empty_chunk(shape: tuple[int, ...], like: torch.Tensor, stream: torch.cuda.Stream | None):
    if not like.is_cuda:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    # Allocated on the stream that writes it: the caching allocator orders reuse after the copy.
    stream = stream or torch.cuda.current_stream(like.device)
    with torch.cuda.device(like.device), torch.cuda.stream(stream):
        return torch.empty(shape, dtype=like.dtype, device=like.device)


@functools.lru_cache(maxsize=16)
def _pointer_table(device: torch.device, ptrs: tuple[int, ...]) -> torch.Tensor:
    # Built once per set of registered caches; synchronized so any stream may use it.
    table = torch.tensor(ptrs, dtype=torch.int64, device=device)
    torch.cuda.synchronize(device)
    return table


def _describe_layers(kv_caches: Sequence[torch.Tensor], layout: str | PagedLayout):
    if not kv_caches:
        raise ValueError("no kv cache layers")
    lay = PagedLayout.parse(layout)
    first = kv_caches[0]
    key = (first.device, first.dtype, first.shape, first.stride())
    for t in kv_caches[1:]:
        if (t.device, t.dtype, t.shape, t.stride()) != key:
            raise ValueError("all kv cache layers must share device, dtype, shape and strides")
    strides, dims = describe(lay, tuple(first.shape), first.stride())
    return lay, strides, dims


def _block_ids(block_ids: BlockIds, dims: KvDims) -> torch.Tensor:
    ids = torch.as_tensor(block_ids, dtype=torch.int64)
    if ids.dim() != 1:
        raise ValueError(f"block_ids must be 1-D, got shape {tuple(ids.shape)}")
    if not ids.is_cuda and ids.numel():  # CUDA ids are trusted: checking them would sync
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= dims.num_blocks:
            raise IndexError(f"block ids must be in [0, {dims.num_blocks}), got [{lo}, {hi}]")
    return ids.contiguous()


def _check_chunk(chunk: torch.Tensor, shape: tuple[int, ...], cache: torch.Tensor) -> None:
    if tuple(chunk.shape) != shape or chunk.dtype != cache.dtype or not chunk.is_contiguous():
        raise ValueError(
            f"chunk must be a contiguous {cache.dtype} tensor of shape {shape}, "
            f"got {chunk.dtype} {tuple(chunk.shape)}"
        )
    if chunk.is_cuda and cache.is_cuda and chunk.device != cache.device:
        raise ValueError(f"chunk on {chunk.device} but caches on {cache.device}")

