"""GPU-direct transfer kernels: KV blocks of vLLM's paged cache <-> one chunk buffer.

    from kvbucket.cuda import gather_blocks, scatter_blocks
    chunk = gather_blocks(kv_caches, block_ids, "kv_first", out=pinned_chunk)
    scatter_blocks(chunk, kv_caches, block_ids, "kv_first")

Importing this package does not import torch (the daemon runs without it); the functions
load it on first use. Layouts, build and tests: cuda/README.md.
"""

from __future__ import annotations

from kvbucket.cuda.kv_index import PagedLayout

__all__ = ["PagedLayout", "gather_blocks", "scatter_blocks"]


def __getattr__(name: str):
    if name in ("gather_blocks", "scatter_blocks"):
        from kvbucket.cuda import gather

        return getattr(gather, name)
    raise AttributeError(f"module 'kvbucket.cuda' has no attribute {name!r}")
