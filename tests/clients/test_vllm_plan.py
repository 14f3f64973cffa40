"""The vLLM connector's planning rules (which chunks to look up, load and store), without vLLM."""

from __future__ import annotations

from kvbucket.clients.vllm.plan import ChunkPlanner, RequestState

HASHES = [bytes([i]) * 32 for i in range(10)]


def test_keys_leave_one_token_to_compute():
    p = ChunkPlanner(block_size=32, chunk_blocks=1)
    assert len(p.chunk_keys(HASHES, 100)) == 3  # 3 full blocks + 4 tokens
    assert len(p.chunk_keys(HASHES, 129)) == 4  # len % block_size == 1
    assert len(p.chunk_keys(HASHES, 64)) == 1  # exactly 2 blocks: the last block holds the token to compute
    assert p.chunk_keys(HASHES, 100) == HASHES[:3]


def test_a_chunk_is_keyed_by_its_last_block():
    p = ChunkPlanner(block_size=16, chunk_blocks=4)
    assert p.chunk_keys(HASHES, 16 * 9 + 1) == [HASHES[3], HASHES[7]]
    assert p.chunk_keys(HASHES, 16 * 8) == [HASHES[3]]


def test_external_tokens_beyond_the_local_prefix_cache():
    p = ChunkPlanner(block_size=32, chunk_blocks=2)
    assert p.external_tokens(hit_chunks=2, num_computed_tokens=0) == 128
    assert p.external_tokens(hit_chunks=2, num_computed_tokens=32) == 96
    assert p.external_tokens(hit_chunks=1, num_computed_tokens=96) == 0


def test_loads_skip_blocks_the_local_cache_has():
    p = ChunkPlanner(block_size=32, chunk_blocks=2)
    block_ids = [10, 11, 12, 13, 14]
    loads = p.loads("r", HASHES, block_ids, num_computed=32, num_external=96)
    assert [(s.key, s.block_ids, s.skip) for s in loads] == [(HASHES[1], (10, 11), 1), (HASHES[3], (12, 13), 0)]


def test_stores_follow_full_chunks_across_steps_and_recompute():
    p = ChunkPlanner(block_size=32, chunk_blocks=2)
    st = RequestState(block_ids=[1, 2, 3, 4, 5], stored_chunks=0)
    assert p.stores(st, HASHES, num_computed=0, num_scheduled=40) == []  # chunked prefill: 1 block so far
    first = p.stores(st, HASHES, num_computed=40, num_scheduled=40)  # 80 tokens: 2 full blocks = 1 chunk
    assert [(s.key, s.block_ids) for s in first] == [(HASHES[1], (1, 2))]
    assert p.stores(st, HASHES, num_computed=80, num_scheduled=10) == []
    st_hit = RequestState(block_ids=[1, 2, 3, 4], stored_chunks=2)  # both chunks came from kvbucket
    assert p.stores(st_hit, HASHES, num_computed=128, num_scheduled=1) == []
    st_failed = RequestState(block_ids=[1, 2, 3, 4], stored_chunks=2)  # the load failed: recompute stores
    assert [s.key for s in p.stores(st_failed, HASHES, num_computed=0, num_scheduled=128)] == [HASHES[1], HASHES[3]]
