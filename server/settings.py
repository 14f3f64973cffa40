"""One settings object for the daemon: flags > env vars (KVBUCKET_*) > config file > defaults.

    KVBUCKET_PORT=7070 KVBUCKET_RAM__CAPACITY=8GiB KVBUCKET_S3__BUCKET=kv kvbucket serve
    kvbucket serve --config kvbucket.toml --nvme --s3-bucket kv

Validated once at start, split into per-component sections and passed in; nothing else in the
daemon reads os.environ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ByteSize, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def default_data_dir() -> Path:
    return Path.home() / ".kvbucket"


class RamSettings(BaseModel):
    enabled: bool = True
    capacity: ByteSize = ByteSize(4 << 30)
    policy: Literal["s3fifo", "lru"] = "s3fifo"
    # Fault in the tier's memory at start (its capacity less the shm arena, pre-faulted already): a
    # filling cache then receives chunks into warm memory (fast-wire puts ~1.9x faster here: benchmarks/bench_fill.py),
    # at the price of that much RSS from the start and 0.3-0.5 s per GiB of start-up.
    prefault: bool = False


class NvmeSettings(BaseModel):
    enabled: bool = False
    path: Path | None = None  # default: <data_dir>/nvme
    capacity: ByteSize = ByteSize(64 << 30)
    policy: Literal["lru", "s3fifo"] = "lru"
    # write-through: every put is queued to disk (survives restart; disk ingest ~1.3 GB/s measured
    # with 1 MiB parts is above what gRPC delivers, ~1.5 GB/s, so it keeps up).
    # on-evict: only what RAM evicts goes to disk (least flash wear, lost on restart while in RAM).
    admission: Literal["write-through", "on-evict"] = "write-through"
    write_budget_per_day: ByteSize = ByteSize(0)  # 0: unlimited; protects flash endurance
    queue_depth: int = 64
    # The WAL is off (it would write every byte twice): a put is durable once its memtable is flushed.
    # Flushing every few seconds bounds what a kill -9 or a crash can lose to the last few seconds.
    flush_seconds: float = 5.0  # 0: only when the memtable fills (128 MiB) and at a clean stop


class S3Settings(BaseModel):
    enabled: bool = False
    endpoint_url: str | None = None
    region: str = "us-east-1"
    bucket: str = ""
    prefix: str = "kvbucket/"
    access_key: str | None = None  # default: the AWS credential chain (env, profile)
    secret_key: str | None = None
    path_style: bool = True
    # Namespaces written behind to S3: ["*"] for all.
    persist_namespaces: list[str] = Field(default_factory=lambda: ["*"])
    queue_depth: int = 256
    manifest_refresh_seconds: float = 30.0
    timeout_seconds: float = 5.0
    create_bucket: bool = False  # create the bucket at start when missing (test servers, first deploy)
    hydrate_on_start: int = 0  # copy up to this many S3 entries (most recent first) into RAM at start


class AdminSettings(BaseModel):
    sweep_seconds: float = 1.0  # expiry / pin-lease sweep and S3 reset markers
    sweep_batch: int = 1000  # at most this many expired entries removed per sweep
    census_seconds: float = 30.0  # recount of bytes per namespace x model (quotas, usage, token-hours)
    price_per_million_input_tokens: float = 0.0  # for usage's "saved": e.g. 3.0 (USD)
    max_label_pairs: int = 50  # namespace x model pairs with their own Prometheus labels; the rest: "other"
    debug_clock: bool = False  # TEST ONLY: lets the AdvanceClock admin RPC move the daemon's clock


class ShmSettings(BaseModel):
    """The same-host shared-memory data plane (server/shm.py). Off unless `size` is set or the daemon
    listens on a unix socket (then `auto_size`). The arena is one /dev/shm file, mode 0600."""

    size: ByteSize = ByteSize(0)  # 0: off, or `auto_size` when unix_socket is set
    auto_size: ByteSize = ByteSize(1 << 30)  # arena size when enabled by a unix socket alone (capped to RAM)
    enabled: bool | None = None  # None: as above; False: never; True: with `size` or `auto_size`
    lease_seconds: float = 30.0  # an uncommitted reservation, unreleased read or idle slot pool is dropped after this
    pool_bytes: ByteSize = ByteSize(256 << 20)  # spare slots one client may hold for one-round-trip puts (<= size/4)
    reserve: bool = True  # posix_fallocate the arena at start: no SIGBUS when /dev/shm fills up later
    directory: Path = Path("/dev/shm")
    # List the entries held in arena slots in a table clients read (server/catalog.py): a get of one
    # needs no call to the daemon. Off: every shared-memory get is a ShmGet round trip.
    catalog: bool = True


class FastWireSettings(BaseModel):
    """kvbucket's own framing on a plain socket for the hot data-plane calls (core/fastwire.py): on a TCP
    port of the gRPC host and, with a unix socket, on `<unix_socket>.fast`. Never with TLS (plaintext)."""

    enabled: bool = True
    port: int = 0  # 0: pick a free port (clients learn it from the Hello RPC)


class AuthSettings(BaseModel):
    tokens_file: Path | None = None  # TOML: [[tokens]] token=..., tenant=..., admin=false
    tls_cert: Path | None = None
    tls_key: Path | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="KVBUCKET_", env_nested_delimiter="__", extra="forbid", toml_file=None
    )

    host: str = "127.0.0.1"
    port: int = 7070  # 0: pick a free port (printed and written to --ready-file)
    unix_socket: Path | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9400  # 0: pick a free port; -1: off
    data_dir: Path = Field(default_factory=default_data_dir)
    default_namespace: str = "default"
    max_frame_bytes: ByteSize = ByteSize(4 << 20)
    max_chunk_bytes: ByteSize = ByteSize(256 << 20)
    log_level: str = "INFO"
    ready_file: Path | None = None
    gc_freeze: bool = True  # freeze what survives each full garbage collection (server/gcfreeze.py)

    ram: RamSettings = Field(default_factory=RamSettings)
    nvme: NvmeSettings = Field(default_factory=NvmeSettings)
    s3: S3Settings = Field(default_factory=S3Settings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    shm: ShmSettings = Field(default_factory=ShmSettings)
    fast: FastWireSettings = Field(default_factory=FastWireSettings)

    @field_validator("max_frame_bytes")
    @classmethod
    def _frame_limit(cls, v: int) -> int:
        if not (64 << 10) <= v <= (16 << 20):
            raise ValueError("max_frame_bytes must be between 64 KiB and 16 MiB")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = [init_settings, env_settings]
        if _CONFIG_FILE is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=_CONFIG_FILE))
        return tuple(sources)

    @property
    def shm_size(self) -> int:
        """Arena bytes, 0 when the shared-memory path is off (see ShmSettings)."""
        shm = self.shm
        if shm.enabled is False or not self.ram.enabled:
            return 0
        if shm.size:
            return int(shm.size)
        if shm.enabled or self.unix_socket is not None:
            return min(int(shm.auto_size), int(self.ram.capacity))
        return 0

    @property
    def nvme_path(self) -> Path:
        return self.nvme.path or self.data_dir / "nvme"


_CONFIG_FILE: Path | None = None


def load_settings(config_file: Path | None = None, **overrides) -> Settings:
    """Build the settings: `overrides` (flags, nested as dicts) win over env, env over the file."""
    global _CONFIG_FILE
    _CONFIG_FILE = config_file
    try:
        return Settings(**overrides)
    finally:
        _CONFIG_FILE = None
