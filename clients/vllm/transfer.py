"""The worker side of the vLLM connector: moving chunks between the paged KV cache and kvbucket.

Loads are synchronous (before the forward pass): one Get stream for every chunk of the step,
received straight into chunk tensors, then scattered into the blocks. Saves gather the blocks into
chunk tensors right after the forward pass (one copy, so vLLM may reuse the blocks at once) and a
background thread writes them; when saves fall behind, new ones are dropped and counted.

In place, when the client is attached to the daemon's shared-memory arena (a `kvbucket+unix://`
URL): loads scatter straight from read-only views of the arena (`Client.get_views`), saves gather
straight into reserved arena slots (`Client.reserve`) and the background thread only commits them.
Either way is one copy of the bytes; on a GPU, with the arena registered for CUDA
(`register_with_cuda`), that copy is the device <-> host DMA.
"""

from __future__ import annotations

import logging
import re
import threading
import warnings
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from kvbucket.clients.breaker import Breaker
from kvbucket.clients.sdk import Client
from kvbucket.clients.vllm.plan import ChunkPlanner, LoadSpec, StoreSpec
from kvbucket.core.keys import Layout
from kvbucket.cuda import gather_blocks, scatter_blocks

log = logging.getLogger("vllm.kvbucket")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def layout_for(vllm_config, chunk_blocks: int) -> Layout:
    """The chunk layout both sides agree on, from the model and cache config alone."""
    mc, pc, cc = vllm_config.model_config, vllm_config.parallel_config, vllm_config.cache_config
    dtype = mc.dtype if cc.cache_dtype == "auto" else cc.cache_dtype
    dtype = _dtype_name(dtype) if isinstance(dtype, torch.dtype) else str(dtype)
    tokens = chunk_blocks * cc.block_size
    shape = (mc.get_num_layers(pc), 2, tokens, mc.get_num_kv_heads(pc), mc.get_head_size())
    rank = 0
    if pc.tensor_parallel_size > 1:
        from vllm.distributed.parallel_state import get_tensor_model_parallel_rank

        try:
            rank = get_tensor_model_parallel_rank()
        except Exception:  # the scheduler process has no TP group: it looks up rank 0's chunks
            rank = 0
    return Layout(dtype, shape, tokens_per_chunk=tokens, tp_rank=rank, tp_size=pc.tensor_parallel_size)


def _layer_order(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


class Transfer:
    def __init__(self, client: Client, kv_caches: dict[str, torch.Tensor], layout: Layout, planner: ChunkPlanner,
                 breaker: Breaker, *, max_pending_saves: int = 8) -> None:
        self.client = client
        self.layers = [kv_caches[n] for n in sorted(kv_caches, key=_layer_order)]
        first = self.layers[0]
        self.paged_layout = "cpu" if first.device.type == "cpu" else "bhnc"
        self.layout = layout
        self.planner = planner
        self.breaker = breaker
        self.enabled = self._check(layout)
        self._failed: set[int] = set()
        self._saver = ThreadPoolExecutor(1, thread_name_prefix="kvbucket-save")
        self._pending: set[Future] = set()
        self._lock = threading.Lock()
        self._max_pending = max_pending_saves
        self._free: list[torch.Tensor] = []  # chunk buffers to reuse
        self.dropped_saves = 0

    @property
    def in_place(self) -> bool:
        """Attached to the daemon's arena (asked on first use, again after a failed attach)."""
        return self.client.shm_region() is not None

    def _tensor(self, view) -> torch.Tensor:
        """A chunk tensor over `view` (an arena slot or view): no copy."""
        with warnings.catch_warnings():  # read-only views: torch warns, the tensor is only read from
            warnings.simplefilter("ignore", UserWarning)
            return torch.frombuffer(view, dtype=self.layers[0].dtype).view(self.layout.shape)

    def _check(self, layout: Layout) -> bool:
        probe = gather_blocks(self.layers, [0], self.paged_layout)
        want = (layout.shape[0], 2, self.planner.block_size, *layout.shape[3:])
        if tuple(probe.shape) != want or _dtype_name(probe.dtype) != layout.dtype:
            log.error("kvbucket: the KV cache (%s %s per block) does not match the expected layout %s; "
                      "the connector is disabled", tuple(probe.shape), probe.dtype, layout)
            return False
        return True

    def _take(self) -> torch.Tensor:
        """A chunk buffer, reused: a fresh multi-MiB allocation per chunk costs page faults each time."""
        with self._lock:
            if self._free:
                return self._free.pop()
        return torch.empty(self.layout.shape, dtype=self.layers[0].dtype, device="cpu")

    def _give(self, chunks) -> None:
        with self._lock:
            room = self._max_pending * 2 + 4 - len(self._free)
            self._free.extend(list(chunks)[: max(room, 0)])

    # -- loads --------------------------------------------------------------------------------

    def load(self, specs: list[LoadSpec]) -> None:
        """Fill the blocks of `specs`; blocks that could not be filled are reported as failed."""
        if not self.enabled or not self.breaker.allow():
            self._fail(specs)
            return
        if self.in_place:
            self._load_in_place(specs)
            return
        chunks = [self._take() for _ in specs]
        try:
            got = self.client.get_many([s.key for s in specs], out=chunks)
        except Exception as exc:
            self.breaker.failure("load", exc)
            self._fail(specs)
            self._give(chunks)
            return
        self.breaker.success()
        try:
            for spec, chunk, result in zip(specs, chunks, got):
                if result is None:  # evicted since the lookup
                    self._fail([spec])
                    continue
                self._scatter(spec, chunk)
        finally:
            self._give(chunks)

    def _load_in_place(self, specs: list[LoadSpec]) -> None:
        try:
            views = self.client.get_views([s.key for s in specs])
        except Exception as exc:
            self.breaker.failure("load", exc)
            self._fail(specs)
            return
        self.breaker.success()
        with views:
            for spec, view in zip(specs, views):
                if view is None:
                    self._fail([spec])
                    continue
                self._scatter(spec, self._tensor(view))

    def _scatter(self, spec: LoadSpec, chunk: torch.Tensor) -> None:
        bs = self.planner.block_size
        part = chunk[:, :, spec.skip * bs :] if spec.skip else chunk
        scatter_blocks(part.to(self.layers[0].device).contiguous(), self.layers, list(spec.block_ids[spec.skip :]),
                       self.paged_layout)

    def _fail(self, specs: list[LoadSpec]) -> None:
        for s in specs:
            self._failed.update(s.block_ids[s.skip :])

    def take_failed(self) -> set[int]:
        failed, self._failed = self._failed, set()
        return failed

    # -- saves --------------------------------------------------------------------------------

    def save(self, specs: list[StoreSpec]) -> None:
        if not self.enabled or not self.breaker.allow():
            return
        with self._lock:
            self._pending = {f for f in self._pending if not f.done()}
            if len(self._pending) >= self._max_pending:
                self.dropped_saves += len(specs)
                log.debug("kvbucket: %d saves pending, dropping %d chunks", len(self._pending), len(specs))
                return
        if self.in_place:
            try:
                reservation = self.client.reserve([(s.key, self.layout.chunk_bytes) for s in specs])
            except Exception as exc:
                self.breaker.failure("save", exc)
                return
            for spec, view in zip(specs, reservation.views):
                self._gather(spec, self._tensor(view))
            future = self._saver.submit(self._commit, reservation)
        else:
            items = []
            for spec in specs:
                items.append((spec.key, self._gather(spec, self._take())))
            future = self._saver.submit(self._write, items)
        with self._lock:
            self._pending.add(future)

    def _gather(self, spec: StoreSpec, host: torch.Tensor) -> torch.Tensor:
        if self.layers[0].device.type == "cpu":
            gather_blocks(self.layers, list(spec.block_ids), self.paged_layout, out=host)
        else:  # gather on the device in one launch, then one copy to host memory
            host.copy_(gather_blocks(self.layers, list(spec.block_ids), self.paged_layout))
        return host

    def _commit(self, reservation) -> None:
        try:
            reservation.commit()
            self.breaker.success()
        except Exception as exc:
            reservation.abort()
            self.breaker.failure("save", exc)

    def _write(self, items: list[tuple[bytes, torch.Tensor]]) -> None:
        try:
            self.client.put_many(items)
            self.breaker.success()
        except Exception as exc:
            self.breaker.failure("save", exc)
        finally:
            self._give(chunk for _, chunk in items)

    def flush(self, timeout: float = 30.0) -> None:
        with self._lock:
            pending = list(self._pending)
        for f in pending:
            try:
                f.result(timeout)
            except Exception:
                pass

    def close(self) -> None:
        self.flush()
        self._saver.shutdown(wait=True)
