from kvbucket.proto import store_pb2 as _store_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PinFilter(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PIN_ANY: _ClassVar[PinFilter]
    PIN_PINNED: _ClassVar[PinFilter]
    PIN_UNPINNED: _ClassVar[PinFilter]
PIN_ANY: PinFilter
PIN_PINNED: PinFilter
PIN_UNPINNED: PinFilter

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
    __slots__ = ("namespace", "model", "layout", "hash", "tokens", "raw_bytes", "stored_bytes", "codec", "tiers", "created", "last_access", "hits", "expires_at", "pinned", "dtype", "shape", "ttl_seconds", "ttl_sliding", "pin_expires_at")
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
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TTL_SLIDING_FIELD_NUMBER: _ClassVar[int]
    PIN_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
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
    ttl_seconds: float
    ttl_sliding: bool
    pin_expires_at: float
    def __init__(self, namespace: _Optional[str] = ..., model: _Optional[str] = ..., layout: _Optional[str] = ..., hash: _Optional[bytes] = ..., tokens: _Optional[int] = ..., raw_bytes: _Optional[int] = ..., stored_bytes: _Optional[int] = ..., codec: _Optional[_Union[_store_pb2.Codec, str]] = ..., tiers: _Optional[_Iterable[_Union[_store_pb2.Tier, str]]] = ..., created: _Optional[float] = ..., last_access: _Optional[float] = ..., hits: _Optional[int] = ..., expires_at: _Optional[float] = ..., pinned: bool = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., ttl_seconds: _Optional[float] = ..., ttl_sliding: bool = ..., pin_expires_at: _Optional[float] = ...) -> None: ...

class Selector(_message.Message):
    __slots__ = ("namespace", "model", "layout", "hashes", "hash_prefix", "tiers", "min_hits", "idle_seconds", "pinned", "expires_before", "all")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    HASH_PREFIX_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    MIN_HITS_FIELD_NUMBER: _ClassVar[int]
    IDLE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_BEFORE_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    model: str
    layout: str
    hashes: _containers.RepeatedScalarFieldContainer[bytes]
    hash_prefix: bytes
    tiers: _containers.RepeatedScalarFieldContainer[_store_pb2.Tier]
    min_hits: int
    idle_seconds: float
    pinned: PinFilter
    expires_before: float
    all: bool
    def __init__(self, namespace: _Optional[str] = ..., model: _Optional[str] = ..., layout: _Optional[str] = ..., hashes: _Optional[_Iterable[bytes]] = ..., hash_prefix: _Optional[bytes] = ..., tiers: _Optional[_Iterable[_Union[_store_pb2.Tier, str]]] = ..., min_hits: _Optional[int] = ..., idle_seconds: _Optional[float] = ..., pinned: _Optional[_Union[PinFilter, str]] = ..., expires_before: _Optional[float] = ..., all: bool = ...) -> None: ...

class ListEntriesRequest(_message.Message):
    __slots__ = ("namespace", "model", "tier", "page_size", "page_token", "where")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    WHERE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    model: str
    tier: _store_pb2.Tier
    page_size: int
    page_token: str
    where: Selector
    def __init__(self, namespace: _Optional[str] = ..., model: _Optional[str] = ..., tier: _Optional[_Union[_store_pb2.Tier, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., where: _Optional[_Union[Selector, _Mapping]] = ...) -> None: ...

class ListEntriesResponse(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[EntryInfo]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[EntryInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetEntryRequest(_message.Message):
    __slots__ = ("namespace", "model", "hash", "layout")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    model: str
    hash: bytes
    layout: str
    def __init__(self, namespace: _Optional[str] = ..., model: _Optional[str] = ..., hash: _Optional[bytes] = ..., layout: _Optional[str] = ...) -> None: ...

class GetEntryResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[EntryInfo]
    def __init__(self, entries: _Optional[_Iterable[_Union[EntryInfo, _Mapping]]] = ...) -> None: ...

class TierCount(_message.Message):
    __slots__ = ("tier", "entries", "bytes")
    TIER_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    tier: _store_pb2.Tier
    entries: int
    bytes: int
    def __init__(self, tier: _Optional[_Union[_store_pb2.Tier, str]] = ..., entries: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class EvictRequest(_message.Message):
    __slots__ = ("where", "from_tiers", "dry_run")
    WHERE_FIELD_NUMBER: _ClassVar[int]
    FROM_TIERS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    where: Selector
    from_tiers: _containers.RepeatedScalarFieldContainer[_store_pb2.Tier]
    dry_run: bool
    def __init__(self, where: _Optional[_Union[Selector, _Mapping]] = ..., from_tiers: _Optional[_Iterable[_Union[_store_pb2.Tier, str]]] = ..., dry_run: bool = ...) -> None: ...

class EvictResponse(_message.Message):
    __slots__ = ("entries", "bytes", "tiers", "skipped_pinned")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_PINNED_FIELD_NUMBER: _ClassVar[int]
    entries: int
    bytes: int
    tiers: _containers.RepeatedCompositeFieldContainer[TierCount]
    skipped_pinned: int
    def __init__(self, entries: _Optional[int] = ..., bytes: _Optional[int] = ..., tiers: _Optional[_Iterable[_Union[TierCount, _Mapping]]] = ..., skipped_pinned: _Optional[int] = ...) -> None: ...

class ResetRequest(_message.Message):
    __slots__ = ("namespace", "model", "all")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    model: str
    all: bool
    def __init__(self, namespace: _Optional[str] = ..., model: _Optional[str] = ..., all: bool = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("phase", "tier", "done", "total", "bytes", "finished", "message", "failed")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    phase: str
    tier: _store_pb2.Tier
    done: int
    total: int
    bytes: int
    finished: bool
    message: str
    failed: int
    def __init__(self, phase: _Optional[str] = ..., tier: _Optional[_Union[_store_pb2.Tier, str]] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., bytes: _Optional[int] = ..., finished: bool = ..., message: _Optional[str] = ..., failed: _Optional[int] = ...) -> None: ...

class SetTtlRequest(_message.Message):
    __slots__ = ("where", "ttl_seconds", "sliding", "expire_at", "clear")
    WHERE_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SLIDING_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_AT_FIELD_NUMBER: _ClassVar[int]
    CLEAR_FIELD_NUMBER: _ClassVar[int]
    where: Selector
    ttl_seconds: float
    sliding: bool
    expire_at: float
    clear: bool
    def __init__(self, where: _Optional[_Union[Selector, _Mapping]] = ..., ttl_seconds: _Optional[float] = ..., sliding: bool = ..., expire_at: _Optional[float] = ..., clear: bool = ...) -> None: ...

class PinRequest(_message.Message):
    __slots__ = ("where", "unpin", "ttl_seconds")
    WHERE_FIELD_NUMBER: _ClassVar[int]
    UNPIN_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    where: Selector
    unpin: bool
    ttl_seconds: float
    def __init__(self, where: _Optional[_Union[Selector, _Mapping]] = ..., unpin: bool = ..., ttl_seconds: _Optional[float] = ...) -> None: ...

class UpdateResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: int
    def __init__(self, entries: _Optional[int] = ...) -> None: ...

class NamespacePolicy(_message.Message):
    __slots__ = ("namespace", "quota_bytes", "default_ttl_seconds", "default_sliding", "used_bytes")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    QUOTA_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SLIDING_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    quota_bytes: int
    default_ttl_seconds: float
    default_sliding: bool
    used_bytes: int
    def __init__(self, namespace: _Optional[str] = ..., quota_bytes: _Optional[int] = ..., default_ttl_seconds: _Optional[float] = ..., default_sliding: bool = ..., used_bytes: _Optional[int] = ...) -> None: ...

class SetPolicyRequest(_message.Message):
    __slots__ = ("namespace", "quota_bytes", "default_ttl_seconds", "default_sliding")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    QUOTA_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SLIDING_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    quota_bytes: int
    default_ttl_seconds: float
    default_sliding: bool
    def __init__(self, namespace: _Optional[str] = ..., quota_bytes: _Optional[int] = ..., default_ttl_seconds: _Optional[float] = ..., default_sliding: bool = ...) -> None: ...

class ListPoliciesRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class ListPoliciesResponse(_message.Message):
    __slots__ = ("policies",)
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    policies: _containers.RepeatedCompositeFieldContainer[NamespacePolicy]
    def __init__(self, policies: _Optional[_Iterable[_Union[NamespacePolicy, _Mapping]]] = ...) -> None: ...

class CapacityRequest(_message.Message):
    __slots__ = ("tier", "capacity_bytes")
    TIER_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    tier: _store_pb2.Tier
    capacity_bytes: int
    def __init__(self, tier: _Optional[_Union[_store_pb2.Tier, str]] = ..., capacity_bytes: _Optional[int] = ...) -> None: ...

class CapacityResponse(_message.Message):
    __slots__ = ("tiers", "evicted_entries", "evicted_bytes")
    TIERS_FIELD_NUMBER: _ClassVar[int]
    EVICTED_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    EVICTED_BYTES_FIELD_NUMBER: _ClassVar[int]
    tiers: _containers.RepeatedCompositeFieldContainer[TierStats]
    evicted_entries: int
    evicted_bytes: int
    def __init__(self, tiers: _Optional[_Iterable[_Union[TierStats, _Mapping]]] = ..., evicted_entries: _Optional[int] = ..., evicted_bytes: _Optional[int] = ...) -> None: ...

class UsageRequest(_message.Message):
    __slots__ = ("namespace", "model")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    model: str
    def __init__(self, namespace: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class UsageRow(_message.Message):
    __slots__ = ("namespace", "model", "entries", "tiers", "hits", "misses", "hit_rate", "tokens_served", "token_hours", "saved", "tokens_stored")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_SERVED_FIELD_NUMBER: _ClassVar[int]
    TOKEN_HOURS_FIELD_NUMBER: _ClassVar[int]
    SAVED_FIELD_NUMBER: _ClassVar[int]
    TOKENS_STORED_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    model: str
    entries: int
    tiers: _containers.RepeatedCompositeFieldContainer[TierCount]
    hits: int
    misses: int
    hit_rate: float
    tokens_served: int
    token_hours: float
    saved: float
    tokens_stored: int
    def __init__(self, namespace: _Optional[str] = ..., model: _Optional[str] = ..., entries: _Optional[int] = ..., tiers: _Optional[_Iterable[_Union[TierCount, _Mapping]]] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ..., hit_rate: _Optional[float] = ..., tokens_served: _Optional[int] = ..., token_hours: _Optional[float] = ..., saved: _Optional[float] = ..., tokens_stored: _Optional[int] = ...) -> None: ...

class UsageResponse(_message.Message):
    __slots__ = ("rows", "price_per_million_tokens", "since")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    PRICE_PER_MILLION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[UsageRow]
    price_per_million_tokens: float
    since: float
    def __init__(self, rows: _Optional[_Iterable[_Union[UsageRow, _Mapping]]] = ..., price_per_million_tokens: _Optional[float] = ..., since: _Optional[float] = ...) -> None: ...

class DrainRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class AdvanceClockRequest(_message.Message):
    __slots__ = ("seconds",)
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    seconds: float
    def __init__(self, seconds: _Optional[float] = ...) -> None: ...

class AdvanceClockResponse(_message.Message):
    __slots__ = ("now",)
    NOW_FIELD_NUMBER: _ClassVar[int]
    now: float
    def __init__(self, now: _Optional[float] = ...) -> None: ...
