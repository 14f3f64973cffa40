from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tier(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIER_UNSPECIFIED: _ClassVar[Tier]
    TIER_RAM: _ClassVar[Tier]
    TIER_NVME: _ClassVar[Tier]
    TIER_S3: _ClassVar[Tier]

class Codec(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CODEC_NONE: _ClassVar[Codec]
    CODEC_LZ4: _ClassVar[Codec]
    CODEC_ZSTD: _ClassVar[Codec]
TIER_UNSPECIFIED: Tier
TIER_RAM: Tier
TIER_NVME: Tier
TIER_S3: Tier
CODEC_NONE: Codec
CODEC_LZ4: Codec
CODEC_ZSTD: Codec

class Layout(_message.Message):
    __slots__ = ("dtype", "shape", "tokens_per_chunk", "tp_rank", "tp_size")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_CHUNK_FIELD_NUMBER: _ClassVar[int]
    TP_RANK_FIELD_NUMBER: _ClassVar[int]
    TP_SIZE_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    tokens_per_chunk: int
    tp_rank: int
    tp_size: int
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., tokens_per_chunk: _Optional[int] = ..., tp_rank: _Optional[int] = ..., tp_size: _Optional[int] = ...) -> None: ...

class Scope(_message.Message):
    __slots__ = ("namespace", "model", "layout")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    model: str
    layout: Layout
    def __init__(self, namespace: _Optional[str] = ..., model: _Optional[str] = ..., layout: _Optional[_Union[Layout, _Mapping]] = ...) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ("scope", "hashes")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    scope: Scope
    hashes: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, scope: _Optional[_Union[Scope, _Mapping]] = ..., hashes: _Optional[_Iterable[bytes]] = ...) -> None: ...

class LookupResponse(_message.Message):
    __slots__ = ("hits", "tiers")
    HITS_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    hits: int
    tiers: _containers.RepeatedScalarFieldContainer[Tier]
    def __init__(self, hits: _Optional[int] = ..., tiers: _Optional[_Iterable[_Union[Tier, str]]] = ...) -> None: ...

class ChunkHeader(_message.Message):
    __slots__ = ("scope", "hash", "codec", "raw_length", "payload_length", "checksum", "tokens", "dtype", "shape", "index", "ttl_seconds", "ttl_sliding", "pin")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    RAW_LENGTH_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_LENGTH_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TTL_SLIDING_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    scope: Scope
    hash: bytes
    codec: Codec
    raw_length: int
    payload_length: int
    checksum: int
    tokens: int
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    index: int
    ttl_seconds: float
    ttl_sliding: bool
    pin: bool
    def __init__(self, scope: _Optional[_Union[Scope, _Mapping]] = ..., hash: _Optional[bytes] = ..., codec: _Optional[_Union[Codec, str]] = ..., raw_length: _Optional[int] = ..., payload_length: _Optional[int] = ..., checksum: _Optional[int] = ..., tokens: _Optional[int] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., index: _Optional[int] = ..., ttl_seconds: _Optional[float] = ..., ttl_sliding: bool = ..., pin: bool = ...) -> None: ...

class PutRequest(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: ChunkHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[ChunkHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ChunkResult(_message.Message):
    __slots__ = ("hash", "stored", "reason")
    HASH_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    hash: bytes
    stored: bool
    reason: str
    def __init__(self, hash: _Optional[bytes] = ..., stored: bool = ..., reason: _Optional[str] = ...) -> None: ...

class PutResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ChunkResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ChunkResult, _Mapping]]] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("scope", "hashes", "frame_bytes", "stop_at_first_miss")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    FRAME_BYTES_FIELD_NUMBER: _ClassVar[int]
    STOP_AT_FIRST_MISS_FIELD_NUMBER: _ClassVar[int]
    scope: Scope
    hashes: _containers.RepeatedScalarFieldContainer[bytes]
    frame_bytes: int
    stop_at_first_miss: bool
    def __init__(self, scope: _Optional[_Union[Scope, _Mapping]] = ..., hashes: _Optional[_Iterable[bytes]] = ..., frame_bytes: _Optional[int] = ..., stop_at_first_miss: bool = ...) -> None: ...

class Miss(_message.Message):
    __slots__ = ("hash", "index")
    HASH_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    hash: bytes
    index: int
    def __init__(self, hash: _Optional[bytes] = ..., index: _Optional[int] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("header", "data", "miss")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MISS_FIELD_NUMBER: _ClassVar[int]
    header: ChunkHeader
    data: bytes
    miss: Miss
    def __init__(self, header: _Optional[_Union[ChunkHeader, _Mapping]] = ..., data: _Optional[bytes] = ..., miss: _Optional[_Union[Miss, _Mapping]] = ...) -> None: ...

class ExistsRequest(_message.Message):
    __slots__ = ("scope", "hashes")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    scope: Scope
    hashes: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, scope: _Optional[_Union[Scope, _Mapping]] = ..., hashes: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ExistsResponse(_message.Message):
    __slots__ = ("present",)
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    present: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, present: _Optional[_Iterable[bool]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("scope", "hashes")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    scope: Scope
    hashes: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, scope: _Optional[_Union[Scope, _Mapping]] = ..., hashes: _Optional[_Iterable[bytes]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class HelloRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HelloResponse(_message.Message):
    __slots__ = ("version", "fast_port", "fast_unix")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FAST_PORT_FIELD_NUMBER: _ClassVar[int]
    FAST_UNIX_FIELD_NUMBER: _ClassVar[int]
    version: str
    fast_port: int
    fast_unix: str
    def __init__(self, version: _Optional[str] = ..., fast_port: _Optional[int] = ..., fast_unix: _Optional[str] = ...) -> None: ...

class ShmAttachRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ShmStats(_message.Message):
    __slots__ = ("size", "used_bytes", "slots", "leases", "largest_free", "expired_leases")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    LEASES_FIELD_NUMBER: _ClassVar[int]
    LARGEST_FREE_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_LEASES_FIELD_NUMBER: _ClassVar[int]
    size: int
    used_bytes: int
    slots: int
    leases: int
    largest_free: int
    expired_leases: int
    def __init__(self, size: _Optional[int] = ..., used_bytes: _Optional[int] = ..., slots: _Optional[int] = ..., leases: _Optional[int] = ..., largest_free: _Optional[int] = ..., expired_leases: _Optional[int] = ...) -> None: ...

class ShmAttachResponse(_message.Message):
    __slots__ = ("path", "size", "nonce", "lease_seconds", "stats", "catalog_offset", "catalog_buckets", "namespace", "any_namespace")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    CATALOG_OFFSET_FIELD_NUMBER: _ClassVar[int]
    CATALOG_BUCKETS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ANY_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    path: str
    size: int
    nonce: int
    lease_seconds: float
    stats: ShmStats
    catalog_offset: int
    catalog_buckets: int
    namespace: str
    any_namespace: bool
    def __init__(self, path: _Optional[str] = ..., size: _Optional[int] = ..., nonce: _Optional[int] = ..., lease_seconds: _Optional[float] = ..., stats: _Optional[_Union[ShmStats, _Mapping]] = ..., catalog_offset: _Optional[int] = ..., catalog_buckets: _Optional[int] = ..., namespace: _Optional[str] = ..., any_namespace: bool = ...) -> None: ...

class ShmSlot(_message.Message):
    __slots__ = ("offset", "length", "fallback")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    offset: int
    length: int
    fallback: bool
    def __init__(self, offset: _Optional[int] = ..., length: _Optional[int] = ..., fallback: bool = ...) -> None: ...

class ShmReserveRequest(_message.Message):
    __slots__ = ("chunks", "release")
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    chunks: _containers.RepeatedCompositeFieldContainer[ChunkHeader]
    release: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, chunks: _Optional[_Iterable[_Union[ChunkHeader, _Mapping]]] = ..., release: _Optional[_Iterable[int]] = ...) -> None: ...

class ShmReserveResponse(_message.Message):
    __slots__ = ("lease", "slots", "nonce")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    lease: int
    slots: _containers.RepeatedCompositeFieldContainer[ShmSlot]
    nonce: int
    def __init__(self, lease: _Optional[int] = ..., slots: _Optional[_Iterable[_Union[ShmSlot, _Mapping]]] = ..., nonce: _Optional[int] = ...) -> None: ...

class ShmCommitRequest(_message.Message):
    __slots__ = ("lease", "checksums", "daemon_checksums")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    CHECKSUMS_FIELD_NUMBER: _ClassVar[int]
    DAEMON_CHECKSUMS_FIELD_NUMBER: _ClassVar[int]
    lease: int
    checksums: _containers.RepeatedScalarFieldContainer[int]
    daemon_checksums: bool
    def __init__(self, lease: _Optional[int] = ..., checksums: _Optional[_Iterable[int]] = ..., daemon_checksums: bool = ...) -> None: ...

class ShmCommitResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ChunkResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ChunkResult, _Mapping]]] = ...) -> None: ...

class ShmGetRequest(_message.Message):
    __slots__ = ("scope", "hashes", "stop_at_first_miss", "release")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    STOP_AT_FIRST_MISS_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    scope: Scope
    hashes: _containers.RepeatedScalarFieldContainer[bytes]
    stop_at_first_miss: bool
    release: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, scope: _Optional[_Union[Scope, _Mapping]] = ..., hashes: _Optional[_Iterable[bytes]] = ..., stop_at_first_miss: bool = ..., release: _Optional[_Iterable[int]] = ...) -> None: ...

class ShmChunk(_message.Message):
    __slots__ = ("header", "offset", "miss", "fallback", "index")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    MISS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    header: ChunkHeader
    offset: int
    miss: bool
    fallback: bool
    index: int
    def __init__(self, header: _Optional[_Union[ChunkHeader, _Mapping]] = ..., offset: _Optional[int] = ..., miss: bool = ..., fallback: bool = ..., index: _Optional[int] = ...) -> None: ...

class ShmGetResponse(_message.Message):
    __slots__ = ("lease", "chunks", "nonce")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    lease: int
    chunks: _containers.RepeatedCompositeFieldContainer[ShmChunk]
    nonce: int
    def __init__(self, lease: _Optional[int] = ..., chunks: _Optional[_Iterable[_Union[ShmChunk, _Mapping]]] = ..., nonce: _Optional[int] = ...) -> None: ...

class ShmReleaseRequest(_message.Message):
    __slots__ = ("lease",)
    LEASE_FIELD_NUMBER: _ClassVar[int]
    lease: int
    def __init__(self, lease: _Optional[int] = ...) -> None: ...

class ShmPutRequest(_message.Message):
    __slots__ = ("pool", "chunks", "offsets", "refill", "release", "daemon_checksums", "hashed_in_slot")
    POOL_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    REFILL_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    DAEMON_CHECKSUMS_FIELD_NUMBER: _ClassVar[int]
    HASHED_IN_SLOT_FIELD_NUMBER: _ClassVar[int]
    pool: int
    chunks: _containers.RepeatedCompositeFieldContainer[ChunkHeader]
    offsets: _containers.RepeatedScalarFieldContainer[int]
    refill: _containers.RepeatedScalarFieldContainer[int]
    release: _containers.RepeatedScalarFieldContainer[int]
    daemon_checksums: bool
    hashed_in_slot: bool
    def __init__(self, pool: _Optional[int] = ..., chunks: _Optional[_Iterable[_Union[ChunkHeader, _Mapping]]] = ..., offsets: _Optional[_Iterable[int]] = ..., refill: _Optional[_Iterable[int]] = ..., release: _Optional[_Iterable[int]] = ..., daemon_checksums: bool = ..., hashed_in_slot: bool = ...) -> None: ...

class ShmWritten(_message.Message):
    __slots__ = ("pool", "offset", "written")
    POOL_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    pool: int
    offset: int
    written: int
    def __init__(self, pool: _Optional[int] = ..., offset: _Optional[int] = ..., written: _Optional[int] = ...) -> None: ...

class ShmHitsRequest(_message.Message):
    __slots__ = ("scope", "hashes", "release")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    scope: Scope
    hashes: _containers.RepeatedScalarFieldContainer[bytes]
    release: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, scope: _Optional[_Union[Scope, _Mapping]] = ..., hashes: _Optional[_Iterable[bytes]] = ..., release: _Optional[_Iterable[int]] = ...) -> None: ...

class ShmPutResponse(_message.Message):
    __slots__ = ("pool", "results", "slots", "nonce")
    POOL_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    pool: int
    results: _containers.RepeatedCompositeFieldContainer[ChunkResult]
    slots: _containers.RepeatedCompositeFieldContainer[ShmSlot]
    nonce: int
    def __init__(self, pool: _Optional[int] = ..., results: _Optional[_Iterable[_Union[ChunkResult, _Mapping]]] = ..., slots: _Optional[_Iterable[_Union[ShmSlot, _Mapping]]] = ..., nonce: _Optional[int] = ...) -> None: ...

class ShmHitsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ShmReleaseResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: bool = ...) -> None: ...
