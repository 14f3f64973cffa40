"""Chunk identity: layout fingerprints, entry keys and the chained prefix hash.

An entry is addressed by (namespace, model, layout fingerprint, prefix hash). The prefix hash of
chunk i is chained over every token of chunks 0..i, so one key names a whole prefix; two models,
two layouts or two namespaces never share an entry because all four parts are in the key.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from kvbucket.core.errors import InvalidArgument

MAX_HASH_BYTES = 64
MAX_NAME_CHARS = 256
_NAME = re.compile(r"^[A-Za-z0-9._\-/@:+=]+$")
_SEP = b"\x1f"

DTYPE_SIZES = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "uint8": 1,
    "int8": 1,
}


@dataclass(frozen=True, slots=True)
class Layout:
    """The shape of one chunk's KV tensor; part of every key."""

    dtype: str
    shape: tuple[int, ...]
    tokens_per_chunk: int
    tp_rank: int = 0
    tp_size: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))  # a list given: hashable, equal to its tuple
        if self.dtype not in DTYPE_SIZES:
            raise InvalidArgument(f"unknown dtype {self.dtype!r}; known: {', '.join(sorted(DTYPE_SIZES))}")
        if not self.shape or any(d <= 0 for d in self.shape):
            raise InvalidArgument(f"layout shape must be non-empty and positive, got {self.shape}")
        if self.tokens_per_chunk <= 0:
            raise InvalidArgument("layout tokens_per_chunk must be positive")
        if not 0 <= self.tp_rank < max(self.tp_size, 1):
            raise InvalidArgument(f"tp_rank {self.tp_rank} out of range for tp_size {self.tp_size}")

    @property
    def chunk_bytes(self) -> int:
        n = DTYPE_SIZES[self.dtype]
        for d in self.shape:
            n *= d
        return n

    def fingerprint(self) -> str:
        """16 hex chars naming this layout; stable across processes and versions."""
        text = f"{self.dtype}|{','.join(map(str, self.shape))}|{self.tokens_per_chunk}|{self.tp_rank}|{self.tp_size}"
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def check_name(kind: str, value: str, *, allow_empty: bool = False) -> str:
    if not value and allow_empty:
        return value
    if not value or len(value) > MAX_NAME_CHARS or not _NAME.match(value):
        raise InvalidArgument(
            f"{kind} {value!r} is invalid: use 1-{MAX_NAME_CHARS} characters from A-Z a-z 0-9 . _ - / @ : + ="
        )
    return value


_NOT_NAME = re.compile(r"[^A-Za-z0-9._\-/@:+=]")


def sanitize_name(text: str) -> str:
    """`text` in the name alphabet. A name that had to change gets `=` and a digest of the
    original, so two names that sanitize alike stay apart."""
    clean = _NOT_NAME.sub("_", text) or "_"
    if clean != text or len(clean) > MAX_NAME_CHARS:
        digest = hashlib.blake2b(text.encode(), digest_size=6).hexdigest()
        clean = f"{clean[: MAX_NAME_CHARS - 13]}={digest}"
    return clean


def check_hash(h: bytes) -> bytes:
    if not 1 <= len(h) <= MAX_HASH_BYTES:
        raise InvalidArgument(f"prefix hash must be 1-{MAX_HASH_BYTES} bytes, got {len(h)}")
    return h


@dataclass(frozen=True, slots=True)
class EntryKey:
    """The full address of one stored chunk."""

    namespace: str
    model: str
    layout: str  # Layout.fingerprint()
    hash: bytes

    def __post_init__(self) -> None:
        check_name("namespace", self.namespace)
        check_name("model", self.model)
        if len(self.layout) != 16:
            raise InvalidArgument(f"layout fingerprint must be 16 hex chars, got {self.layout!r}")
        check_hash(self.hash)

    def to_bytes(self) -> bytes:
        """Sortable binary form: entries of one namespace/model/layout are contiguous."""
        return _SEP.join((self.namespace.encode(), self.model.encode(), self.layout.encode(), self.hash))

    @classmethod
    def from_bytes(cls, raw: bytes) -> EntryKey:
        ns, model, layout, h = raw.split(_SEP, 3)
        return cls(ns.decode(), model.decode(), layout.decode(), h)

    def scope_prefix(self) -> bytes:
        return scope_prefix(self.namespace, self.model, self.layout)


def keys_in_scope(namespace: str, model: str, layout: str, hashes) -> list[EntryKey]:
    """Keys of many hashes in one scope; the names are checked once, not per key (Lookup is hot)."""
    if not hashes:
        return []
    keys = [EntryKey(namespace, model, layout, bytes(hashes[0]))]  # validates every part once
    new, setattr_ = object.__new__, object.__setattr__
    for h in hashes[1:]:
        check_hash(h)
        k = new(EntryKey)
        setattr_(k, "namespace", namespace)
        setattr_(k, "model", model)
        setattr_(k, "layout", layout)
        setattr_(k, "hash", bytes(h))
        keys.append(k)
    return keys


def scope_prefix(namespace: str, model: str = "", layout: str = "") -> bytes:
    """The byte prefix shared by the keys of a namespace (and model, and layout when given)."""
    parts = [namespace.encode()]
    if model:
        parts.append(model.encode())
        if layout:
            parts.append(layout.encode())
    return _SEP.join(parts) + _SEP


def chunk_hashes(
    token_ids: Sequence[int], tokens_per_chunk: int, *, salt: bytes = b"", digest_size: int = 32
) -> list[bytes]:
    """The chain of prefix hashes of the full chunks of `token_ids`.

    hash_i = blake2b(hash_{i-1} || tokens of chunk i as little-endian u32), with hash_{-1} = salt.
    A trailing partial chunk gets no key (it is recomputed, as in vLLM).
    """
    if tokens_per_chunk <= 0:
        raise InvalidArgument("tokens_per_chunk must be positive")
    out: list[bytes] = []
    prev = salt
    for start in range(0, len(token_ids) - tokens_per_chunk + 1, tokens_per_chunk):
        chunk = token_ids[start : start + tokens_per_chunk]
        h = hashlib.blake2b(prev, digest_size=digest_size)
        h.update(struct.pack(f"<{len(chunk)}I", *chunk))
        prev = h.digest()
        out.append(prev)
    return out
