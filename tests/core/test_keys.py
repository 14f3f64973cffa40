from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvbucket.core.errors import InvalidArgument
from kvbucket.core.keys import EntryKey, Layout, chunk_hashes, scope_prefix

LAYOUT = Layout("bfloat16", (32, 2, 256, 8, 128), tokens_per_chunk=256)
names = st.text(alphabet="abcXYZ019._-/@:+=", min_size=1, max_size=40)
hashes = st.binary(min_size=1, max_size=64)


def test_llama3_chunk_is_32_mib():
    assert LAYOUT.chunk_bytes == 32 << 20


def test_fingerprint_is_stable_and_sensitive_to_every_field():
    fp = LAYOUT.fingerprint()
    assert fp == Layout("bfloat16", (32, 2, 256, 8, 128), 256).fingerprint() and len(fp) == 16
    variants = [
        Layout("float16", LAYOUT.shape, 256),
        Layout("bfloat16", (32, 2, 128, 8, 128), 256),
        Layout("bfloat16", LAYOUT.shape, 128),
        Layout("bfloat16", LAYOUT.shape, 256, tp_rank=1, tp_size=2),
        Layout("bfloat16", LAYOUT.shape, 256, tp_rank=0, tp_size=2),
    ]
    assert len({fp, *(v.fingerprint() for v in variants)}) == 6


@given(ns=names, model=names, h=hashes)
def test_entry_key_bytes_round_trip(ns, model, h):
    key = EntryKey(ns, model, LAYOUT.fingerprint(), h)
    raw = key.to_bytes()
    assert EntryKey.from_bytes(raw) == key
    assert raw.startswith(scope_prefix(ns, model, key.layout))
    assert raw.startswith(scope_prefix(ns))


@pytest.mark.parametrize("h", [b"", b"x" * 65])
def test_hash_length_is_checked(h):
    with pytest.raises(InvalidArgument, match="1-64 bytes"):
        EntryKey("ns", "m", LAYOUT.fingerprint(), h)


@pytest.mark.parametrize("name", ["", "has space", "tab\t", "x" * 257, "sep\x1f"])
def test_names_are_checked(name):
    with pytest.raises(InvalidArgument):
        EntryKey(name, "m", LAYOUT.fingerprint(), b"h")


def test_bad_layouts():
    with pytest.raises(InvalidArgument, match="dtype"):
        Layout("complex64", (1,), 1)
    with pytest.raises(InvalidArgument, match="shape"):
        Layout("float32", (0, 2), 1)
    with pytest.raises(InvalidArgument, match="tp_rank"):
        Layout("float32", (2,), 1, tp_rank=2, tp_size=2)


@given(st.lists(st.integers(0, 2**32 - 1), max_size=300), st.integers(1, 64))
def test_chunk_hashes_chain_over_the_whole_prefix(tokens, per_chunk):
    chain = chunk_hashes(tokens, per_chunk)
    assert len(chain) == len(tokens) // per_chunk
    assert len(set(chain)) == len(chain)
    # a prefix of the tokens gives a prefix of the chain
    assert chunk_hashes(tokens[: per_chunk * (len(chain) // 2)], per_chunk) == chain[: len(chain) // 2]


def test_changing_an_early_token_changes_every_later_key():
    a = chunk_hashes(list(range(100)), 10)
    b = chunk_hashes([1, *range(1, 100)], 10)
    assert all(x != y for x, y in zip(a, b))
    assert chunk_hashes(list(range(100)), 10, salt=b"tenant") != a


def test_a_layout_given_a_list_shape_is_the_layout_of_its_tuple():
    listed = Layout("bfloat16", [32, 2, 256, 8, 128], tokens_per_chunk=256)
    assert listed == LAYOUT and hash(listed) == hash(LAYOUT) and listed.shape == LAYOUT.shape
    assert listed.fingerprint() == LAYOUT.fingerprint()
