from kvbucket.proto import store_pb2 as _store_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TierStats(_message.Message):
    __slots__ = ("tier", "entries", "bytes", "capacity_bytes", "hits", "misses", "evictions")
    TIER_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    tier: _store_pb2.Tier
    entries: int
    bytes: int
    capacity_bytes: int
    hits: int
    misses: int
    evictions: int
    def __init__(self, tier: _Optional[_Union[_store_pb2.Tier, str]] = ..., entries: _Optional[int] = ..., bytes: _Optional[int] = ..., capacity_bytes: _Optional[int] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ..., evictions: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("tiers", "lookups", "lookup_hits", "lookup_keys", "puts", "gets", "get_hits", "tokens_served", "version", "uptime_seconds")
    TIERS_FIELD_NUMBER: _ClassVar[int]
    LOOKUPS_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_HITS_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_KEYS_FIELD_NUMBER: _ClassVar[int]
    PUTS_FIELD_NUMBER: _ClassVar[int]
    GETS_FIELD_NUMBER: _ClassVar[int]
    GET_HITS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_SERVED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    tiers: _containers.RepeatedCompositeFieldContainer[TierStats]
    lookups: int
    lookup_hits: int
    lookup_keys: int
    puts: int
    gets: int
    get_hits: int
    tokens_served: int
    version: str
    uptime_seconds: float
    def __init__(self, tiers: _Optional[_Iterable[_Union[TierStats, _Mapping]]] = ..., lookups: _Optional[int] = ..., lookup_hits: _Optional[int] = ..., lookup_keys: _Optional[int] = ..., puts: _Optional[int] = ..., gets: _Optional[int] = ..., get_hits: _Optional[int] = ..., tokens_served: _Optional[int] = ..., version: _Optional[str] = ..., uptime_seconds: _Optional[float] = ...) -> None: ...

class EntryInfo(_message.Message):
    __slots__ = ("namespace", "model", "layout", "hash", "tokens", "raw_bytes", "stored_bytes", "codec", "tiers", "created", "last_access", "hits", "expires_at", "pinned", "dtype", "shape")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    RAW_BYTES_FIELD_NUMBER: _ClassVar[int]
    STORED_BYTES_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    LAST_ACCESS_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    model: str
    layout: str
    hash: bytes
    tokens: int
    raw_bytes: int
    stored_bytes: int
    codec: _store_pb2.Codec
    tiers: _containers.RepeatedScalarFieldContainer[_store_pb2.Tier]
    created: float
    last_access: float
    hits: int
    expires_at: float
    pinned: bool
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, namespace: _Optional[str] = ..., model: _Optional[str] = ..., layout: _Optional[str] = ..., hash: _Optional[bytes] = ..., tokens: _Optional[int] = ..., raw_bytes: _Optional[int] = ..., stored_bytes: _Optional[int] = ..., codec: _Optional[_Union[_store_pb2.Codec, str]] = ..., tiers: _Optional[_Iterable[_Union[_store_pb2.Tier, str]]] = ..., created: _Optional[float] = ..., last_access: _Optional[float] = ..., hits: _Optional[int] = ..., expires_at: _Optional[float] = ..., pinned: bool = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class ListEntriesRequest(_message.Message):
    __slots__ = ("namespace", "model", "tier", "page_size", "page_token")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    model: str
    tier: _store_pb2.Tier
    page_size: int
    page_token: str
    def __init__(self, namespace: _Optional[str] = ..., model: _Optional[str] = ..., tier: _Optional[_Union[_store_pb2.Tier, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListEntriesResponse(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[EntryInfo]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[EntryInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
