"""kvbucket: a KV-cache storage server for LLM inference.

The repository root is this package: `server/` is `kvbucket.server`, `clients/` is
`kvbucket.clients`, `cuda/` is `kvbucket.cuda`, `core/` is what they share, `proto/` is the wire.

    from kvbucket import Client, Layout, chunk_hashes
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["AsyncClient", "Client", "EntryKey", "Layout", "chunk_hashes", "__version__"]


def __getattr__(name: str):
    # Lazy: `import kvbucket.core` must not pull grpc in.
    if name in ("Client", "AsyncClient"):
        from kvbucket.clients import sdk

        return getattr(sdk, name)
    if name in ("Layout", "EntryKey", "chunk_hashes"):
        from kvbucket.core import keys

        return getattr(keys, name)
    raise AttributeError(f"module 'kvbucket' has no attribute {name!r}")
