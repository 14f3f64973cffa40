"""kvbucket as an LMCache remote storage plugin, on LMCache's real storage stack (CPU) and a real daemon.

The engines here are LMCache `StorageManager`s built from a YAML config that names the plugin, as
LMCache builds them inside vLLM: a LocalCPUBackend and `RemoteBackend-kvbucket`. The writer and the
reader are two engines, so a reader hit can only come from the daemon.
"""

from __future__ import annotations

import signal
import time
import urllib.request

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lmcache")

from lmcache.utils import CacheEngineKey  # noqa: E402
from lmcache.v1.config import LMCacheEngineConfig  # noqa: E402
from lmcache.v1.event_manager import EventManager  # noqa: E402
from lmcache.v1.metadata import LMCacheMetadata  # noqa: E402
from lmcache.v1.protocol import RemoteMetadata  # noqa: E402
from lmcache.v1.storage_backend.storage_manager import StorageManager  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from kvbucket import Client  # noqa: E402
from kvbucket.clients.lmcache import hash_bytes, key_hash, model_identity, slot_layout  # noqa: E402

MODEL = "org/tiny-llama"
CHUNK = 16
KV_SHAPE = (2, 2, CHUNK, 2, 8)  # layers, k/v, tokens, kv heads, head dim: 2 KiB bf16 chunks
REMOTE = "RemoteBackend-kvbucket"

YAML = """\
chunk_size: {chunk}
local_cpu: {local_cpu}
max_local_cpu_size: {cpu_gb}
remote_serde: naive
remote_storage_plugins: ["kvbucket"]
extra_config:
  remote_storage_plugin.kvbucket.module_path: kvbucket.clients.lmcache
  remote_storage_plugin.kvbucket.class_name: KVBucketAdapter
  remote_storage_plugin.kvbucket.url: {url}
  remote_storage_plugin.kvbucket.timeout: 1.0
  remote_storage_plugin.kvbucket.lookup_timeout: 0.3
  remote_storage_plugin.kvbucket.backoff: {backoff}
"""


def key(h: int, model: str = MODEL) -> CacheEngineKey:
    return CacheEngineKey(model, 1, 0, h, torch.bfloat16)


class Engine:
    """One LMCache storage stack (what one vLLM worker runs), built from a config file."""

    def __init__(self, tmp_path, url: str, backoff: float = 1.0, name: str = "engine") -> None:
        path = tmp_path / f"{name}.yaml"
        path.write_text(YAML.format(chunk=CHUNK, local_cpu="true", cpu_gb=0.05, url=url, backoff=backoff))
        self.config = LMCacheEngineConfig.from_file(str(path))
        self.metadata = LMCacheMetadata(
            model_name=MODEL, world_size=1, local_world_size=1, worker_id=0, local_worker_id=0,
            kv_dtype=torch.bfloat16, kv_shape=KV_SHAPE, chunk_size=CHUNK,
        )
        self.sm = StorageManager(self.config, self.metadata, EventManager())
        self.remote = self.sm.storage_backends[REMOTE]
        self.plugin = self.remote.connection.getWrappedConnector()

    def chunk(self, seed: int, tokens: int = CHUNK):
        obj = self.sm.allocate(self.metadata.get_shapes(tokens), self.metadata.get_dtypes())
        g = torch.Generator().manual_seed(seed)
        obj.tensor.copy_(torch.randn(obj.tensor.shape, generator=g).to(torch.bfloat16))
        return obj

    def store(self, keys, objs) -> None:
        """Through LMCache's own put path; returns once the daemon holds every key.

        LMCache's batched remote put is fire-and-forget (no future, no put_tasks entry), so this
        watches the daemon itself."""
        self.sm.batched_put(keys, objs)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if all(self.remote.batched_contains([k]) == 1 for k in keys):
                return
            time.sleep(0.02)
        raise AssertionError("the remote put did not arrive within 10 s")

    def close(self) -> None:
        self.sm.close()


@pytest.fixture
def engines(tmp_path, daemon):
    made = []

    def make(**kw) -> Engine:
        made.append(Engine(tmp_path, daemon.url, name=f"engine{len(made)}", **kw))
        return made[-1]

    yield make
    for e in made:
        e.close()


def lookup_calls(daemon) -> float:
    body = urllib.request.urlopen(daemon.metrics_url, timeout=5).read().decode()
    return sum(
        s.value for fam in text_string_to_metric_families(body) for s in fam.samples
        if s.name == "kvbucket_server_requests_total" and s.labels.get("op") == "lookup"
    )


# -- key mapping -------------------------------------------------------------------------------


def test_chunk_hashes_map_to_signed_int64_bytes():
    assert hash_bytes(-1) == b"\xff" * 8
    assert hash_bytes(0x0102030405060708) == bytes.fromhex("0102030405060708")
    assert hash_bytes(-(1 << 63)) == b"\x80" + b"\0" * 7
    assert hash_bytes(1 << 70) == (1 << 70).to_bytes(9, "big", signed=True)
    assert hash_bytes(b"\x01" * 32) == b"\x01" * 32
    assert len(hash_bytes(b"x" * 100)) == 32  # too long for kvbucket: digested
    assert hash_bytes("abc") == b"abc"


def test_model_names_are_sanitized_without_merging():
    assert model_identity("meta-llama/Llama-3-8B") == "meta-llama/Llama-3-8B"
    a, b = model_identity("my model"), model_identity("my_model")
    assert a != b and a.startswith("my_model=")
    assert model_identity("m", (("user", "alice"),)) == "m+user=alice"
    assert len(model_identity("x" * 1000)) <= 256


def test_layout_is_the_full_chunk_slot_per_tp_rank():
    k = CacheEngineKey(MODEL, 4, 3, 5, torch.bfloat16)
    lay = slot_layout(k, 28 + 2048, CHUNK)
    assert (lay.dtype, lay.shape, lay.chunk_bytes) == ("bfloat16", (1038,), 2076)
    assert (lay.tp_rank, lay.tp_size, lay.tokens_per_chunk) == (3, 4, CHUNK)


# -- on LMCache's storage stack ----------------------------------------------------------------


def test_config_loads_the_plugin(engines):
    e = engines()
    assert REMOTE in e.sm.storage_backends
    assert type(e.plugin).__name__ == "KVBucketConnector"


def test_put_then_another_engine_gets_it_bit_exact(engines):
    writer, reader = engines(), engines()
    keys = [key(-(7 << 60)), key(12345)]  # LMCache hashes are often negative
    objs = [writer.chunk(1), writer.chunk(2)]
    want = [o.tensor.clone() for o in objs]
    writer.store(keys, objs)

    assert reader.remote.contains(keys[0])
    assert reader.sm.contains(keys[1]) == REMOTE  # not in the reader's CPU tier: found remotely
    for k, w in zip(keys, want, strict=True):
        got = reader.sm.get(k)
        assert got is not None and torch.equal(got.tensor, w)
        assert got.get_shapes() == reader.metadata.get_shapes()
        got.ref_count_down()
    got = reader.remote.batched_get_blocking(keys)
    assert all(torch.equal(g.tensor, w) for g, w in zip(got, want, strict=True))
    for g in got:
        g.ref_count_down()


def test_partial_last_chunk_comes_back_with_its_own_shape(engines):
    writer, reader = engines(), engines()
    obj = writer.chunk(3, tokens=5)
    want = obj.tensor.clone()
    writer.store([key(99)], [obj])
    got = reader.remote.get_blocking(key(99))
    assert got.get_shapes() == reader.metadata.get_shapes(5)
    assert torch.equal(got.tensor, want)
    got.ref_count_down()


def test_stored_value_is_remote_metadata_then_kv_bytes(engines, daemon):
    e = engines()
    obj = e.chunk(4)
    raw_kv = bytes(obj.byte_array)
    e.store([key(-5)], [obj])
    mb = e.plugin.remote_metadata_bytes
    assert mb == 28
    layout = slot_layout(key(-5), mb + len(raw_kv), CHUNK)
    with Client(daemon.url, model=model_identity(MODEL), layout=layout) as c:
        value = c.get(hash_bytes(-5))
    meta = RemoteMetadata.deserialize(value[:mb])
    assert (meta.length, meta.shapes, meta.dtypes) == (len(raw_kv), e.metadata.get_shapes(), [torch.bfloat16])
    assert bytes(value[mb : mb + len(raw_kv)]) == raw_kv


def test_missing_key_is_a_miss(engines):
    e = engines()
    assert e.remote.get_blocking(key(424242)) is None
    assert not e.remote.contains(key(424242))
    assert e.remote.batched_get_blocking([key(1), key(2)]) == [None, None]
    assert e.sm.get(key(424242)) is None


def test_batched_contains_is_one_lookup_returning_the_prefix(engines, daemon):
    writer, reader = engines(), engines()
    keys = [key(i) for i in range(-3, 3)]
    writer.store([keys[i] for i in (0, 1, 2, 4)], [writer.chunk(i) for i in (0, 1, 2, 4)])
    before = lookup_calls(daemon)
    assert reader.remote.batched_contains(keys) == 3  # keys[4] is stored, but after a gap
    assert lookup_calls(daemon) - before == 1
    hits, where = reader.sm.batched_contains(keys)
    assert hits == 3 and list(where) == [REMOTE]


def test_layers_and_tp_ranks_do_not_collide():
    k0 = CacheEngineKey(MODEL, 2, 0, 7, torch.bfloat16)
    k1 = CacheEngineKey(MODEL, 2, 1, 7, torch.bfloat16)
    assert slot_layout(k0, 2076, CHUNK).fingerprint() != slot_layout(k1, 2076, CHUNK).fingerprint()
    layers = k0.split_layers(2)
    assert len({key_hash(k0), key_hash(layers[0]), key_hash(layers[1])}) == 3


# -- faults: nothing escapes into LMCache, misses come back quickly ----------------------------


def test_daemon_down_gives_fast_misses_and_dropped_puts(engines, daemon):
    e = engines(backoff=0.0)  # no pause: every call really goes to the dead daemon
    obj = e.chunk(5)
    daemon.stop()
    assert e.remote.contains(key(1)) is False
    assert e.remote.batched_contains([key(1), key(2)]) == 0
    assert e.remote.get_blocking(key(1)) is None
    assert e.remote.batched_get_blocking([key(1), key(2)]) == [None, None]
    fut = e.remote.submit_put_task(key(1), obj)
    assert fut.result(timeout=5) is None  # logged and dropped inside the plugin
    assert {"exists", "contains", "get", "put"} <= set(e.plugin.faults.failures)
    late = engines()  # an engine that starts while the daemon is down still loads the plugin
    assert late.remote.connection is not None and late.remote.contains(key(1)) is False


def test_hung_daemon_is_bounded_by_the_deadlines_then_skipped(engines, daemon):
    e = engines(backoff=30.0)
    e.store([key(8)], [e.chunk(8)])
    daemon.proc.send_signal(signal.SIGSTOP)  # accepts connections, answers nothing
    try:
        # returns at all (the daemon answers nothing): bounded by lookup_timeout (0.3 s)
        assert e.remote.batched_contains([key(8)]) == 0
        assert e.remote.get_blocking(key(8)) is None  # within backoff: not even tried
        assert e.remote.contains(key(8)) is False
        assert e.plugin.faults.failures["contains"] == 1 and e.plugin.faults.failures["get"] == 1
    finally:
        daemon.proc.send_signal(signal.SIGCONT)
    e.plugin.faults.clock = lambda: time.monotonic() + 60  # the 30 s pause is over
    got = e.remote.get_blocking(key(8))
    assert got is not None
    got.ref_count_down()


# -- inside vLLM (CUDA only: LMCache has no CPU path into vLLM's KV cache) -----------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="LMCacheConnectorV1 needs a CUDA device")
def test_lmcache_connector_in_vllm_hits_kvbucket(tmp_path, daemon, monkeypatch):
    """A prompt run twice with vLLM's prefix cache off and LMCache's CPU tier off: the second run's
    KV can only come from kvbucket, and must give the same tokens."""
    import os

    from vllm import LLM, SamplingParams
    from vllm.config import KVTransferConfig

    path = tmp_path / "lmcache.yaml"
    path.write_text(YAML.format(chunk=256, local_cpu="false", cpu_gb=2, url=daemon.url, backoff=1.0))
    monkeypatch.setenv("LMCACHE_CONFIG_FILE", str(path))
    monkeypatch.setenv("LMCACHE_USE_EXPERIMENTAL", "True")
    llm = LLM(
        model=os.environ.get("KVBUCKET_TEST_MODEL", "Qwen/Qwen2.5-0.5B-Instruct"),
        kv_transfer_config=KVTransferConfig(kv_connector="LMCacheConnectorV1", kv_role="kv_both"),
        enable_prefix_caching=False, gpu_memory_utilization=0.5, max_model_len=2048,
    )
    prompt = {"prompt_token_ids": [(i * 7919) % 5000 + 100 for i in range(1000)]}
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    with Client(daemon.url) as admin:
        first = llm.generate([prompt], params)[0]
        deadline = time.monotonic() + 30
        while entries(admin) < 3 and time.monotonic() < deadline:  # LMCache stores asynchronously
            time.sleep(0.1)
        before = admin.stats()
        second = llm.generate([prompt], params)[0]
        after = admin.stats()
    assert after.get_hits - before.get_hits >= 3  # 1000 tokens: 3 full 256-token chunks from kvbucket
    assert after.tokens_served - before.tokens_served >= 768
    assert second.outputs[0].token_ids == first.outputs[0].token_ids
    assert (second.num_cached_tokens or 0) >= 768


def entries(client) -> int:
    return sum(t.entries for t in client.stats().tiers)
