from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvbucket.core.codecs import Codec, compress, decompress
from kvbucket.core.errors import DataLoss, InvalidArgument
from kvbucket.core.record import decode_header, decode_record, make_record, recode

codecs = st.sampled_from(list(Codec))


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=20000), codec=codecs, dtype=st.sampled_from(["bfloat16", "float32", "uint8"]))
def test_codec_round_trip(data, codec, dtype):
    payload = compress(codec, data, 4 if dtype == "float32" else 2)
    assert bytes(decompress(codec, payload, len(data))) == data


@settings(max_examples=60, deadline=None)
@given(data=st.binary(min_size=1, max_size=5000), codec=codecs, tokens=st.integers(0, 2**32 - 1))
def test_record_round_trip(data, codec, tokens):
    rec = make_record(data, "uint8", (len(data),), tokens, codec)
    back = decode_record(rec.to_bytes())
    assert back.header == rec.header
    assert bytes(back.raw()) == data


@settings(max_examples=200, deadline=None)
@given(data=st.binary(min_size=16, max_size=2000), codec=codecs, where=st.floats(0, 1), bit=st.integers(0, 7))
def test_a_flipped_bit_never_yields_wrong_bytes(data, codec, where, bit):
    blob = bytearray(make_record(data, "uint8", (len(data),), 1, codec).to_bytes())
    i = min(int(where * len(blob)), len(blob) - 1)
    blob[i] ^= 1 << bit
    try:
        got = bytes(decode_record(bytes(blob)).raw())
    except DataLoss:
        return
    # Only a flip in bytes a codec ignores (blosc2 frame padding) may pass, and then the data is intact.
    assert codec is not Codec.NONE and got == data


def test_truncated_records_are_data_loss():
    blob = make_record(b"x" * 100, "uint8", (100,), 1).to_bytes()
    for n in (0, 10, 40, len(blob) - 1):
        with pytest.raises(DataLoss):
            decode_record(blob[:n])


def test_recode_keeps_the_bytes_and_compresses_bf16_kv_like_data():
    import numpy as np

    rng = np.random.default_rng(0)
    kv = rng.normal(0, 1, size=(64, 1024)).astype(np.float32)
    bf16 = (kv.view(np.uint32) >> 16).astype(np.uint16).tobytes()  # truncate to bfloat16
    raw = make_record(bf16, "bfloat16", (64, 1024), 256)
    cold = recode(raw, Codec.ZSTD)
    assert cold.header.codec is Codec.ZSTD and cold.stored_length < 0.9 * len(bf16)
    assert bytes(decode_record(cold.to_bytes()).raw()) == bf16


def test_unknown_codec_names_the_known_ones():
    with pytest.raises(InvalidArgument, match="none, lz4, zstd"):
        Codec.parse("snappy")
    with pytest.raises(InvalidArgument):
        Codec.parse(7)


def test_header_reports_offset():
    rec = make_record(b"abc", "uint8", (3,), 1)
    header, offset = decode_header(rec.to_bytes())
    assert header.raw_length == 3 and rec.to_bytes()[offset:] == b"abc"
