"""KVBucketConnector: vLLM's KV connector (v1 API) backed by a kvbucket daemon.

    LLM(model=..., kv_transfer_config={
        "kv_connector": "KVBucketConnector",
        "kv_connector_module_path": "kvbucket.clients.vllm",
        "kv_role": "kv_both",
        "kv_connector_extra_config": {"url": "kvbucket://127.0.0.1:7070"},
    })

Scheduler side: one Lookup RPC per waiting request answers `get_num_new_matched_tokens`.
Worker side: chunks are loaded into the paged cache in `start_load_kv` (before the forward pass)
and copied out in `wait_for_save` (after it), then written to the daemon by a background thread.
Any cache fault is a miss: vLLM recomputes, a warning is logged (rate-limited) and counted.

extra_config keys: url, namespace, token, model_id (default: the model path/name and revision),
chunk_blocks (vLLM blocks per kvbucket chunk; default 256 tokens' worth), timeout (s, loads and
saves), lookup_timeout (s), backoff (s), max_pending_saves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

from kvbucket.clients.breaker import Breaker
from kvbucket.clients.sdk import Client
from kvbucket.clients.vllm.plan import ChunkPlanner, LoadSpec, RequestState, StoreSpec
from kvbucket.clients.vllm.transfer import Transfer, layout_for
from kvbucket.core.keys import sanitize_name

if TYPE_CHECKING:
    import torch
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

log = logging.getLogger("vllm.kvbucket")  # under "vllm" so vLLM's logging config shows it


@dataclass
class KVBucketMetadata(KVConnectorMetadata):
    """One step's work for the workers (plain data: it crosses process boundaries)."""

    loads: list[LoadSpec] = field(default_factory=list)
    stores: list[StoreSpec] = field(default_factory=list)


class KVBucketConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config: VllmConfig, role: KVConnectorRole, kv_cache_config: KVCacheConfig | None = None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        cfg = self._kv_transfer_config
        extra = lambda k, d=None: cfg.get_from_extra_config(k, d)  # noqa: E731
        block_size = vllm_config.cache_config.block_size
        chunk_blocks = int(extra("chunk_blocks", max(1, 256 // block_size)))
        self.planner = ChunkPlanner(block_size, chunk_blocks)
        mc = vllm_config.model_config
        model_id = extra("model_id") or f"{mc.model}@{mc.revision or 'main'}"
        self.layout = layout_for(vllm_config, chunk_blocks)
        self.breaker = Breaker(log, backoff=float(extra("backoff", 1.0)))
        self.client = Client(
            extra("url", "kvbucket://127.0.0.1:7070"), namespace=extra("namespace"), token=extra("token"),
            model=sanitize_name(model_id), layout=self.layout, timeout=float(extra("timeout", 10.0)),
        )
        self.lookup_timeout = float(extra("lookup_timeout", 1.0))
        if role == KVConnectorRole.SCHEDULER and cfg.kv_load_failure_policy != "recompute":
            # A chunk evicted between Lookup and load must cost a recompute, never a failed request.
            log.info("kvbucket: setting kv_load_failure_policy='recompute' (a cache miss must not fail a request)")
            cfg.kv_load_failure_policy = "recompute"
        # scheduler side
        self._requests: dict[str, tuple[Request, RequestState]] = {}
        self._computed: dict[str, int] = {}  # req -> num_computed_tokens of its last lookup
        self._hits: dict[str, int] = {}  # req -> chunks the daemon holds (one Lookup per request)
        self._loading: dict[str, set[int]] = {}  # req -> blocks its last load fills
        self._no_external: set[str] = set()  # reqs whose load failed
        self._pending: list[LoadSpec] = []
        # worker side
        self.transfer: Transfer | None = None
        self._max_pending_saves = int(extra("max_pending_saves", 8))
        log.info("kvbucket connector (%s) at %s, model %s, layout %s, %d blocks per chunk",
                 role.name.lower(), self.client.url, self.client.scope.model, self.layout, chunk_blocks)

    # ---- scheduler side ---------------------------------------------------------------------

    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int) -> tuple[int | None, bool]:
        # vLLM asks again on every step while the request waits for blocks: one Lookup per request.
        rid = request.request_id
        if rid in self._no_external:  # a load of it failed: recompute, do not promise the hit again
            return 0, False
        if rid not in self._hits:
            keys = self.planner.chunk_keys(request.block_hashes, request.num_tokens)
            self._hits[rid] = self._lookup(keys) if keys else 0
        self._computed[rid] = num_computed_tokens
        return self.planner.external_tokens(self._hits[rid], num_computed_tokens), False

    def _lookup(self, keys: list[bytes]) -> int:
        if not self.breaker.allow():
            return 0
        try:
            hits = self.client.lookup(keys, timeout=self.lookup_timeout).hits
        except Exception as exc:
            self.breaker.failure("lookup", exc)
            return 0
        self.breaker.success()
        return hits

    def update_state_after_alloc(self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int):
        rid = request.request_id
        block_ids = list(blocks.get_block_ids()[0])
        computed = self._computed.get(rid, request.num_computed_tokens)
        if num_external_tokens > 0:
            loads = self.planner.loads(rid, request.block_hashes, block_ids, computed, num_external_tokens)
            self._loading[rid] = {b for spec in loads for b in spec.block_ids[spec.skip :]}
            self._pending += loads
        # Chunks the daemon already holds need no save.
        self._requests[rid] = (request, RequestState(block_ids, self._hits.get(rid, 0)))

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        meta = KVBucketMetadata(loads=self._pending)
        self._pending = []
        scheduled = scheduler_output.num_scheduled_tokens
        for new in scheduler_output.scheduled_new_reqs:
            if new.req_id in self._requests:
                request, st = self._requests[new.req_id]
                st.block_ids = list(new.block_ids[0])
                meta.stores += self.planner.stores(st, request.block_hashes, new.num_computed_tokens,
                                                   scheduled[new.req_id])
        cached = scheduler_output.scheduled_cached_reqs
        for i, rid in enumerate(cached.req_ids):
            if rid not in self._requests:
                continue
            request, st = self._requests[rid]
            new_ids = cached.new_block_ids[i]
            if rid in cached.resumed_req_ids:  # preempted and resumed: its blocks were replaced
                st.block_ids = list(new_ids[0]) if new_ids else []
            elif new_ids:
                st.block_ids.extend(new_ids[0])
            meta.stores += self.planner.stores(st, request.block_hashes, cached.num_computed_tokens[i],
                                               scheduled[rid])
        return meta

    def update_connector_output(self, connector_output) -> None:
        bad = connector_output.invalid_block_ids or set()
        if bad:
            for rid, blocks in list(self._loading.items()):
                if blocks & bad:
                    self._no_external.add(rid)
                    del self._loading[rid]

    def request_finished(self, request: Request, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        for d in (self._requests, self._computed, self._hits, self._loading):
            d.pop(request.request_id, None)
        self._no_external.discard(request.request_id)
        return False, None  # saves copy the blocks out first: vLLM may free them now

    # ---- worker side ------------------------------------------------------------------------

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]):
        self.transfer = Transfer(self.client, kv_caches, self.layout, self.planner, self.breaker,
                                 max_pending_saves=self._max_pending_saves)

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        if self.transfer is not None and meta.loads:
            self.transfer.load(meta.loads)

    def wait_for_layer_load(self, layer_name: str) -> None:
        return  # loads complete in start_load_kv

    def save_kv_layer(self, layer_name: str, kv_layer, attn_metadata, **kwargs: Any) -> None:
        return  # every layer is copied out at once in wait_for_save

    def wait_for_save(self):
        meta = self._get_connector_metadata()
        if self.transfer is not None and meta.stores:
            self.transfer.save(meta.stores)

    def get_block_ids_with_load_errors(self) -> set[int]:
        return self.transfer.take_failed() if self.transfer is not None else set()

    def shutdown(self):
        if self.transfer is not None:
            self.transfer.close()
        self.client.close()
