"""The torch path of gather_blocks/scatter_blocks against a naive per-element reference.

The reference spells each layout the way vLLM reads it (tensor indexing, no strides), so it
checks kv_index's stride math rather than repeating it.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kvbucket.cuda import gather_blocks, scatter_blocks
from kvbucket.cuda.gather import paged_view
from kvbucket.cuda.kv_index import LayoutMismatch, PagedLayout, cache_row, describe

LAYOUTS = ("kv_first", "blocks_first", "cpu", "bhnc")
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.uint8)  # uint8 stands in for fp8


def naive_row(cache: torch.Tensor, layout: str, kv: int, block: int, token: int, head: int) -> torch.Tensor:
    """The head_size vector of one (k/v, block, token, head), as vLLM indexes the layout."""
    if layout == "kv_first":
        return cache[kv, block, token, head]
    if layout == "blocks_first":
        return cache[block, kv, token, head]
    b, h, n, c = cache.shape
    if layout == "cpu":  # CPU_ATTN: kv_cache.view(b, h, 2 * n, -1).chunk(2, dim=2)
        return cache.view(b, h, 2 * n, c // 2)[block, head, kv * n + token]
    d = c // 2  # bhnc: kv_cache.transpose(1, 2).split(head_size, dim=-1)
    return cache[block, head, token, kv * d : (kv + 1) * d]


def naive_gather(caches: list[torch.Tensor], layout: str, block_ids: list[int], dims) -> torch.Tensor:
    num_blocks, block_size, heads, head_size = dims
    out = torch.empty(len(caches), 2, len(block_ids) * block_size, heads, head_size, dtype=caches[0].dtype)
    for layer, cache in enumerate(caches):
        for kv in range(2):
            for i, block in enumerate(block_ids):
                for token in range(block_size):
                    for head in range(heads):
                        row = naive_row(cache, layout, kv, block, token, head)
                        for d in range(head_size):
                            out[layer, kv, i * block_size + token, head, d] = row[d]
    return out


cases = st.fixed_dictionaries(
    {
        "layout": st.sampled_from(LAYOUTS),
        "layers": st.integers(1, 3),
        "num_blocks": st.integers(1, 5),
        "block_size": st.integers(1, 4),
        "heads": st.integers(1, 3),
        "head_size": st.integers(1, 6),
        "dtype": st.sampled_from(DTYPES),
        "cross_layer": st.booleans(),
        "seed": st.integers(0, 2**16),
    }
)


def caches_for(kv, case: dict, dims, seed: int):
    return kv.make_caches(case["layout"], case["layers"], dims, case["dtype"], case["cross_layer"], seed)


@settings(max_examples=60, deadline=None)
@given(case=cases, data=st.data())
def test_gather_matches_naive_reference(kv, case, data) -> None:
    dims = (case["num_blocks"], case["block_size"], case["heads"], case["head_size"])
    caches = caches_for(kv, case, dims, case["seed"])
    block_ids = data.draw(st.lists(st.integers(0, case["num_blocks"] - 1), max_size=4), label="block_ids")
    chunk = gather_blocks(caches, block_ids, case["layout"])
    assert torch.equal(kv.bits(chunk), kv.bits(naive_gather(caches, case["layout"], block_ids, dims)))


@settings(max_examples=60, deadline=None)
@given(case=cases, data=st.data())
def test_scatter_inverts_gather_and_touches_nothing_else(kv, case, data) -> None:
    dims = (case["num_blocks"], case["block_size"], case["heads"], case["head_size"])
    caches = caches_for(kv, case, dims, case["seed"])
    block = st.integers(0, case["num_blocks"] - 1)
    ids = data.draw(st.lists(block, unique=True, max_size=4), label="block_ids")
    chunk = gather_blocks(caches, torch.tensor(ids, dtype=torch.int64), case["layout"])
    targets = caches_for(kv, case, dims, case["seed"] + 1)
    before = [kv.bits(t).clone() for t in targets]
    # put the blocks back at a shuffled position: block ids[i] of the source -> perm[i] of the target
    perm = data.draw(st.permutations(range(case["num_blocks"])), label="perm")[: len(ids)]
    scatter_blocks(chunk, targets, perm, case["layout"])
    assert torch.equal(kv.bits(gather_blocks(targets, perm, case["layout"])), kv.bits(chunk))
    untouched = sorted(set(range(case["num_blocks"])) - set(perm))
    if untouched:
        assert torch.equal(
            kv.bits(gather_blocks(targets, untouched, case["layout"])),
            kv.bits(naive_gather([b.view(case["dtype"]) for b in before], case["layout"], untouched, dims)),
        )


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cross_layer", [False, True])
def test_paged_view_is_cache_row_as_strides(kv, layout, cross_layer) -> None:
    cache = kv.make_caches(layout, 2, (3, 2, 2, 4), torch.float32, cross_layer, seed=5)[1]
    strides, dims = describe(PagedLayout.parse(layout), cache.shape, cache.stride())
    view = paged_view(cache, strides, dims)
    span = cache.as_strided((cache.untyped_storage().nbytes() // 4 - cache.storage_offset(),), (1,))
    for kv_, block, token, head in torch.cartesian_prod(*(torch.arange(n) for n in view.shape[:4])).tolist():
        row = cache_row(strides, block, kv_, token, head)
        assert torch.equal(view[kv_, block, token, head], span[row : row + dims.head_size])
        assert torch.equal(view[kv_, block, token, head], naive_row(cache, layout, kv_, block, token, head))


def test_gather_into_given_out_returns_it() -> None:
    base = torch.arange(2 * 4 * 2 * 3 * 8, dtype=torch.float32).view(2, 4, 2, 3, 8)
    caches = [base + 1000 * i for i in range(2)]
    out = torch.full((2, 2, 4, 3, 8), -1.0)
    got = gather_blocks(caches, [2, 0], "kv_first", out=out)
    assert got is out
    assert torch.equal(out[1, 0, :2], caches[1][0, 2]) and torch.equal(out[1, 1, 2:], caches[1][1, 0])


def test_empty_block_list_gives_an_empty_chunk() -> None:
    caches = [torch.zeros(3, 2, 4, 2, 8)]
    assert gather_blocks(caches, [], "blocks_first").shape == (1, 2, 0, 2, 8)
    scatter_blocks(torch.zeros(1, 2, 0, 2, 8), caches, [], "blocks_first")


@pytest.mark.parametrize(
    ("caches", "ids", "layout", "out", "error"),
    [
        ([], [0], "kv_first", None, ValueError),
        ([torch.zeros(2, 3, 4, 2, 8)], [0], "nhd_v2", None, ValueError),
        ([torch.zeros(2, 3, 4, 2, 8)], [3], "kv_first", None, IndexError),
        ([torch.zeros(2, 3, 4, 2, 8)], [-1], "kv_first", None, IndexError),
        ([torch.zeros(2, 3, 4, 2, 8)], [[0]], "kv_first", None, ValueError),
        ([torch.zeros(3, 2, 4, 2, 8)], [0], "kv_first", None, LayoutMismatch),
        ([torch.zeros(2, 3, 4, 2, 8), torch.zeros(2, 3, 4, 2, 4)], [0], "kv_first", None, ValueError),
        ([torch.zeros(2, 3, 4, 2, 8)], [0], "kv_first", torch.zeros(1, 2, 4, 2, 8).half(), ValueError),
        ([torch.zeros(2, 3, 4, 2, 8)], [0], "kv_first", torch.zeros(1, 2, 8, 2, 8), ValueError),
    ],
)
def test_bad_arguments_are_refused(caches, ids, layout, out, error) -> None:
    with pytest.raises(error):
        gather_blocks(caches, ids, layout, out=out)


def test_scatter_refuses_a_chunk_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match="shape"):
        scatter_blocks(torch.zeros(1, 2, 4, 2, 8), [torch.zeros(2, 3, 4, 2, 8)], [0, 1], "kv_first")
