"""Assemble and run the daemon: tiers from settings, the store, gRPC services, metrics endpoint."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

import kvbucket
from kvbucket.core.buffers import memory_room, prefault_heap, tune_malloc
from kvbucket.proto import admin_pb2, admin_pb2_grpc, store_pb2, store_pb2_grpc
from kvbucket.server.admin import AdminService
from kvbucket.server.auth import Authenticator
from kvbucket.server.clock import Clock
from kvbucket.server.fastwire import FastWireServer
from kvbucket.server.gcfreeze import FullCollections
from kvbucket.server.metrics import Metrics
from kvbucket.server.owner import CacheOwner
from kvbucket.server.service import KVBucketService, Limits
from kvbucket.server.service import add_to_server as add_data_plane
from kvbucket.server.settings import Settings
from kvbucket.server.shm import Leases, ShmCollector, ShmService
from kvbucket.server.store import TieredStore
from kvbucket.server.tiers.base import EntryMeta, Tier

log = logging.getLogger("kvbucket")


def build_tiers(settings: Settings, clock: Clock | None = None) -> list[Tier]:
    """The enabled tiers, fastest first. Heavy tier modules are imported only when enabled."""
    clock = clock or Clock()
    tiers: list[Tier] = []
    if settings.ram.enabled:
        from kvbucket.server.tiers.memory import MemoryTier

        tiers.append(MemoryTier(int(settings.ram.capacity), policy=settings.ram.policy, clock=clock))
    if settings.nvme.enabled:
        from kvbucket.server.tiers.rocks import RocksTier

        tiers.append(RocksTier(settings.nvme_path, int(settings.nvme.capacity), policy=settings.nvme.policy,
                               clock=clock))
    if settings.s3.enabled:
        from kvbucket.server.tiers.s3 import S3Tier

        s3 = settings.s3
        if not s3.bucket:
            raise SystemExit("s3 is enabled but no bucket is set (--s3-bucket or KVBUCKET_S3__BUCKET)")
        tiers.append(S3Tier(
            s3.bucket, prefix=s3.prefix, endpoint_url=s3.endpoint_url, region=s3.region,
            access_key=s3.access_key, secret_key=s3.secret_key, path_style=s3.path_style,
            manifest_refresh_s=s3.manifest_refresh_seconds, timeout_s=s3.timeout_seconds,
            create_bucket=s3.create_bucket, clock=clock,
        ))
    if not tiers:
        raise SystemExit("no tier is enabled: turn on at least one of ram, nvme, s3")
    return tiers


def write_through_policy(settings: Settings):
    persist = set(settings.s3.persist_namespaces)

    def admits(tier: str, key, meta: EntryMeta) -> bool:
        if tier == "nvme":
            return settings.nvme.admission == "write-through"
        if tier == "s3":
            return "*" in persist or key.namespace in persist
        return True

    return admits


class Daemon:
    """A running kvbucket: `await Daemon(settings).start()`, then `await daemon.stop()`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.gc = FullCollections(self.metrics.registry, freeze=settings.gc_freeze)
        self.auth = Authenticator.from_file(settings.auth.tokens_file, settings.default_namespace)
        self.clock = Clock()
        self.store = TieredStore(
            build_tiers(settings, self.clock), self.metrics, write_through=write_through_policy(settings),
            queue_depth={"nvme": settings.nvme.queue_depth, "s3": settings.s3.queue_depth}, clock=self.clock,
        )
        a = settings.admin
        self.owner = CacheOwner(
            self.store, self.clock, settings.data_dir, sweep_seconds=a.sweep_seconds, sweep_batch=a.sweep_batch,
            census_seconds=a.census_seconds, price_per_million=a.price_per_million_input_tokens,
            max_label_pairs=a.max_label_pairs, hydrate=settings.s3.hydrate_on_start,
        )
        self.server: grpc.aio.Server | None = None
        self.shm: ShmService | None = None
        self._sweeper: asyncio.Task | None = None
        self.fast: FastWireServer | None = None
        self._flusher: asyncio.Task | None = None
        self.port = 0
        self.metrics_port = -1
        self.prefaulted = 0

    async def start(self) -> None:
        s = self.settings
        for t in self.store.tiers:
            opener = getattr(t, "open", None)
            if opener is not None:
                await opener()
        await self.store.start()
        self.gc.install()  # after the indexes are loaded: the first full collection freezes them
        await self.owner.start()
        self.metrics.watch_tiers(self.store.stats)
        self.metrics.registry.register(self.owner.usage)
        frame = int(s.max_frame_bytes)
        self.server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", frame + (64 << 10)),
            ("grpc.max_send_message_length", frame + (64 << 10)),
            ("grpc.so_reuseport", 0),
        ])
        data = KVBucketService(self.store, self.auth, self.metrics, Limits(frame, int(s.max_chunk_bytes)))
        add_data_plane(data, self.server)
        self._start_shm(data)
        if s.ram.enabled and s.ram.prefault:
            self._prefault_ram()
        admin_pb2_grpc.add_AdminServicer_to_server(
            AdminService(self.store, self.auth, self.metrics, kvbucket.__version__, owner=self.owner,
                         clock=self.clock, debug_clock=s.admin.debug_clock),
            self.server,
        )
        health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, self.server)
        reflection.enable_server_reflection(
            (
                store_pb2.DESCRIPTOR.services_by_name["KVBucket"].full_name,
                store_pb2.DESCRIPTOR.services_by_name["KVBucketShm"].full_name,
                admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )
        address = f"{s.host}:{s.port}"
        if s.auth.tls_cert and s.auth.tls_key:
            creds = grpc.ssl_server_credentials([(s.auth.tls_key.read_bytes(), s.auth.tls_cert.read_bytes())])
            self.port = self.server.add_secure_port(address, creds)
        else:
            self.port = self.server.add_insecure_port(address)
        if s.unix_socket is not None:
            s.unix_socket.parent.mkdir(parents=True, exist_ok=True)
            s.unix_socket.unlink(missing_ok=True)
            self.server.add_insecure_port(f"unix:{s.unix_socket}")
        await self.server.start()
        self._start_fast_wire(data)
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
        if s.metrics_port >= 0:
            self.metrics_port = self.metrics.serve(s.metrics_host, s.metrics_port)
        nvme = self.store.tier("nvme")
        if nvme is not None and self.settings.nvme.flush_seconds > 0:
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush_forever(nvme, self.settings.nvme.flush_seconds), name="nvme-flush"
            )
        self._announce()

    def _start_fast_wire(self, data: KVBucketService) -> None:
        s = self.settings
        tls = bool(s.auth.tls_cert and s.auth.tls_key)
        if not s.fast.enabled or tls:
            return
        self.fast = FastWireServer(data, self.shm)
        port = self.fast.listen_tcp(s.host, s.fast.port)
        unix = ""
        if s.unix_socket is not None:
            unix = f"{s.unix_socket}.fast"
            self.fast.listen_unix(Path(unix))
        data.hello = store_pb2.HelloResponse(version=kvbucket.__version__, fast_port=port, fast_unix=unix)

    def _start_shm(self, data: KVBucketService) -> None:
        """The shared-memory data plane: the servicer always (it answers FAILED_PRECONDITION when off)."""
        from kvbucket.server.arena import Arena

        s = self.settings
        arena = None
        if s.shm_size:
            try:
                arena = Arena(s.shm_size, s.shm.directory, reserve=s.shm.reserve, catalog=s.shm.catalog)
            except OSError as exc:
                if s.shm.size:  # asked for explicitly: do not start without it
                    raise
                log.warning("shared memory off: cannot create a %d MiB arena in %s (%s); clients use sockets. "
                            "Give /dev/shm room or set --shm-size", s.shm_size >> 20, s.shm.directory, exc)
        self.shm = ShmService(data, arena, Leases(self.clock, s.shm.lease_seconds), int(s.shm.pool_bytes))
        store_pb2_grpc.add_KVBucketShmServicer_to_server(self.shm, self.server)
        if self.shm.catalog is not None:
            self.clock.on_advance.append(self.shm.catalog.clock_moved)
        if arena is not None:
            self.metrics.registry.register(ShmCollector(self.shm))
            self._sweeper = asyncio.get_running_loop().create_task(self.shm.sweep_forever())

    async def _flush_forever(self, tier, every: float) -> None:
        """Bound what a crash can lose on the NVMe tier (its WAL is off) to about `every` seconds."""
        while True:
            await asyncio.sleep(every)
            try:
                await tier.flush()
            except Exception as exc:  # a failing disk is reported by its writes; keep trying
                log.warning("NVMe flush failed: %s", exc)

    def _prefault_ram(self) -> None:
        """Fault in the heap the RAM tier will fill (its capacity less the arena, which is pre-faulted
        already), so chunks received while the cache fills up land in warm memory. Runs on the event
        loop's thread: the one whose malloc heap receives them."""
        arena = self.shm.arena.size if self.shm is not None and self.shm.arena is not None else 0
        want = max(0, int(self.settings.ram.capacity) - arena)
        room = memory_room() - (1 << 30)
        if want > room:
            log.warning("ram.prefault: %d MiB asked, %d MiB available to this process (less 1 GiB): faulting "
                        "in that much; the RAM tier is larger than the memory it can get", want >> 20,
                        max(0, room) >> 20)
            want = max(0, room)
        t0 = time.monotonic()
        self.prefaulted = prefault_heap(want)
        if want and not self.prefaulted:
            log.warning("ram.prefault: not supported here (needs glibc's malloc on Linux); RAM pages fault in on use")
        else:
            log.info("RAM tier: %d MiB of heap faulted in at start (%.1f s)", self.prefaulted >> 20,
                     time.monotonic() - t0)

    def _announce(self) -> None:
        s = self.settings
        info = {
            "url": f"kvbucket://{s.host}:{self.port}",
            "port": self.port,
            "unix_url": f"kvbucket+unix://{s.unix_socket}" if s.unix_socket else None,
            "metrics_url": f"http://{s.metrics_host}:{self.metrics_port}/metrics" if self.metrics_port >= 0 else None,
            "tiers": [t.name for t in self.store.tiers],
            "shm": str(self.shm.arena.path) if self.shm and self.shm.arena else None,
            "fast_port": self.fast.port if self.fast else None,
            "auth": self.auth.enabled,
            "ram_prefaulted": self.prefaulted,
        }
        log.info("kvbucket %s serving %s", kvbucket.__version__, json.dumps(info))
        if s.ready_file is not None:
            tmp = Path(f"{s.ready_file}.tmp")
            tmp.write_text(json.dumps(info))
            tmp.replace(s.ready_file)

    async def stop(self, grace: float = 2.0) -> None:
        if self.fast is not None:
            await self.fast.close()
        if self.server is not None:
            await self.server.stop(grace)
        for task in (self._sweeper, self._flusher):
            if task is not None:
                task.cancel()
        await self.owner.stop()
        await self.store.close()
        if self.shm is not None:
            self.shm.close()
        self.gc.uninstall()

    async def wait(self) -> None:
        assert self.server is not None
        await self.server.wait_for_termination()


async def run(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM, then stop cleanly (flushing write-behind queues)."""
    tune_malloc()
    daemon = Daemon(settings)
    await daemon.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await daemon.stop()
