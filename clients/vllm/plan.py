"""What the scheduler side decides, in plain data: which chunks to load into which blocks, and
which to store. No vLLM or torch imports, so the rules are unit-testable on their own.

A kvbucket chunk is `chunk_blocks` consecutive vLLM blocks; its key is vLLM's hash of the chunk's
last block, which is chained over every token before it (cache_salt included), so one key names
the whole prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """Copy chunk `key` into `block_ids`; the chunk's first `skip` blocks are already local."""

    req_id: str
    key: bytes
    block_ids: tuple[int, ...]
    skip: int = 0


@dataclass(frozen=True, slots=True)
class StoreSpec:
    key: bytes
    block_ids: tuple[int, ...]


@dataclass(slots=True)
class RequestState:
    block_ids: list[int]
    stored_chunks: int  # chunks [0, n) are in kvbucket already (hit, loaded or saved)


@dataclass(slots=True)
class StepPlan:
    loads: list[LoadSpec] = field(default_factory=list)
    stores: list[StoreSpec] = field(default_factory=list)


class ChunkPlanner:
    def __init__(self, block_size: int, chunk_blocks: int) -> None:
        self.block_size = block_size
        self.chunk_blocks = chunk_blocks
        self.chunk_tokens = block_size * chunk_blocks

    def chunk_keys(self, block_hashes, num_tokens: int) -> list[bytes]:
        """Keys of the full chunks that may be loaded: at least one prompt token is left to compute."""
        usable_blocks = min((num_tokens - 1) // self.block_size, len(block_hashes))
        n = usable_blocks // self.chunk_blocks
        return [bytes(block_hashes[(i + 1) * self.chunk_blocks - 1]) for i in range(n)]

    def external_tokens(self, hit_chunks: int, num_computed_tokens: int) -> int:
        """Tokens kvbucket adds beyond what vLLM's own prefix cache already has."""
        return max(hit_chunks * self.chunk_tokens - num_computed_tokens, 0)

    def loads(self, req_id: str, block_hashes, block_ids: list[int], num_computed: int,
              num_external: int) -> list[LoadSpec]:
        """Chunks covering tokens [num_computed, num_computed + num_external) — chunk-aligned at the end."""
        first_block = num_computed // self.block_size
        end_block = (num_computed + num_external) // self.block_size
        out = []
        for c in range(first_block // self.chunk_blocks, end_block // self.chunk_blocks):
            lo, hi = c * self.chunk_blocks, (c + 1) * self.chunk_blocks
            out.append(LoadSpec(req_id, bytes(block_hashes[hi - 1]), tuple(block_ids[lo:hi]),
                                skip=max(first_block - lo, 0)))
        return out

    def stores(self, st: RequestState, block_hashes, num_computed: int, num_scheduled: int) -> list[StoreSpec]:
        """Chunks whose every block is full once this step ran, not stored yet."""
        # A failed load is recomputed (num_computed falls back): store what gets recomputed.
        st.stored_chunks = min(st.stored_chunks, num_computed // self.chunk_tokens)
        full_blocks = min((num_computed + num_scheduled) // self.block_size, len(block_hashes), len(st.block_ids))
        full_chunks = full_blocks // self.chunk_blocks
        out = []
        for c in range(st.stored_chunks, full_chunks):
            lo, hi = c * self.chunk_blocks, (c + 1) * self.chunk_blocks
            out.append(StoreSpec(bytes(block_hashes[hi - 1]), tuple(st.block_ids[lo:hi])))
        st.stored_chunks = max(st.stored_chunks, full_chunks)
        return out
