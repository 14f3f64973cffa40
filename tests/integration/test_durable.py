"""Durable tiers through the real daemon: restart recovery, kill -9, a shared S3 bucket, S3 outages."""

from __future__ import annotations

import os
import random
import threading
import time
import urllib.request

import pytest

from kvbucket import Client, Layout

from daemon import start_daemon

LAYOUT = Layout("bfloat16", (2, 2, 64, 4, 64), tokens_per_chunk=64)  # 128 KiB chunks


def data_for(i: int) -> bytes:
    return random.Random(i).randbytes(LAYOUT.chunk_bytes)  # incompressible: a flipped byte lands in the payload


def h(i: int) -> bytes:
    return f"chunk-{i:06d}".encode()


def s3_args(endpoint: str, bucket: str, refresh: float = 0.5) -> tuple[list[str], dict]:
    env = {"KVBUCKET_S3__CREATE_BUCKET": "true", "KVBUCKET_S3__MANIFEST_REFRESH_SECONDS": str(refresh),
           "KVBUCKET_S3__TIMEOUT_SECONDS": "1", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    return ["--s3-bucket", bucket, "--s3-endpoint", endpoint], env


def metric(d, name: str) -> float:
    body = urllib.request.urlopen(d.metrics_url, timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(name))


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.1) -> bool:
    """Poll another process's state (a daemon's background work) until it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def test_nvme_entries_survive_a_clean_restart(tmp_path):
    d = start_daemon(tmp_path, "--nvme")
    with Client(d.url, model="m", layout=LAYOUT) as c:
        c.put_many([(h(i), data_for(i)) for i in range(40)])
        assert wait_for(lambda: metric(d, "kvbucket_tier_entries{tier=\"nvme\"}") == 40)
    d.stop()
    d2 = start_daemon(tmp_path, "--nvme")
    try:
        with Client(d2.url, model="m", layout=LAYOUT) as c:
            r = c.lookup([h(i) for i in range(41)])
            assert r.hits == 40 and set(r.tiers) == {"nvme"}
            got = c.get_many([h(i) for i in range(40)])
            assert all(bytes(g) == data_for(i) for i, g in enumerate(got))
            assert c.lookup([h(0)]).tiers == ["ram"]  # promoted by the read
    finally:
        d2.stop()


def test_kill_9_during_puts_leaves_every_chunk_intact_or_absent(tmp_path):
    d = start_daemon(tmp_path, "--nvme")
    written: list[int] = []
    stop = threading.Event()

    def writer() -> None:
        with Client(d.url, model="m", layout=LAYOUT, timeout=5) as c:
            for i in range(100_000):
                if stop.is_set():
                    return
                try:
                    c.put(h(i), data_for(i))
                    written.append(i)
                except Exception:
                    return  # the daemon died under us

    t = threading.Thread(target=writer)
    t.start()
    assert wait_for(lambda: len(written) > 300, timeout=60)
    d.kill9()
    stop.set()
    t.join(30)
    d2 = start_daemon(tmp_path, "--nvme")
    try:
        with Client(d2.url, model="m", layout=LAYOUT) as c:
            candidates = [h(i) for i in range(len(written) + 5)]
            present = c.exists(candidates)
            got = c.get_many([x for x, p in zip(candidates, present) if p])  # checksum-verified by the SDK
            for x, g in zip([x for x, p in zip(candidates, present) if p], got):
                assert g is not None and bytes(g) == data_for(int(x.split(b"-")[1]))
    finally:
        d2.stop()


def test_a_second_daemon_on_the_same_bucket_starts_warm(tmp_path, s3_server, s3_bucket):
    args, env = s3_args(s3_server, s3_bucket)
    a = start_daemon(tmp_path / "a", *args, env=env)
    b = start_daemon(tmp_path / "b", *args, env=env)
    try:
        with Client(a.url, model="m", layout=LAYOUT) as ca, Client(b.url, model="m", layout=LAYOUT) as cb:
            ca.put_many([(h(i), data_for(i)) for i in range(5)])
            assert wait_for(lambda: cb.lookup([h(i) for i in range(5)]).hits == 5)
            assert cb.lookup([h(0)]).tiers == ["s3"]
            assert bytes(cb.get(h(3))) == data_for(3)
            assert cb.lookup([h(3)]).tiers == ["ram"]
    finally:
        a.stop()
        b.stop()


def test_corrupt_object_in_the_bucket_is_never_served(tmp_path, s3_server, s3_bucket):
    import boto3

    args, env = s3_args(s3_server, s3_bucket)
    a = start_daemon(tmp_path / "a", *args, env=env)
    try:
        with Client(a.url, model="m", layout=LAYOUT) as ca:
            ca.put(h(1), data_for(1))
            s3 = boto3.client("s3", endpoint_url=s3_server, aws_access_key_id="test",
                              aws_secret_access_key="test", region_name="us-east-1")
            assert wait_for(lambda: s3.list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 1)
            name = s3.list_objects_v2(Bucket=s3_bucket)["Contents"][0]["Key"]
            blob = bytearray(s3.get_object(Bucket=s3_bucket, Key=name)["Body"].read())
            blob[len(blob) // 2] ^= 0xFF  # flip payload bits behind the daemons' backs
            s3.put_object(Bucket=s3_bucket, Key=name, Body=bytes(blob))
        b = start_daemon(tmp_path / "b", *args, env=env)
        try:
            with Client(b.url, model="m", layout=LAYOUT) as cb:
                assert wait_for(lambda: cb.lookup([h(1)]).hits == 1)
                assert cb.get(h(1)) is None
                assert metric(b, "kvbucket_store_corrupt_total") == 1
                assert cb.lookup([h(1)]).hits == 0  # removed
        finally:
            b.stop()
    finally:
        a.stop()


def test_s3_outage_degrades_to_misses_and_recovers_by_itself(tmp_path, s3_process, s3_bucket):
    args, env = s3_args(s3_process.endpoint, s3_bucket)
    d = start_daemon(tmp_path, "--ram-capacity", str(4 * LAYOUT.chunk_bytes), *args, env=env)
    try:
        with Client(d.url, model="m", layout=LAYOUT, timeout=10) as c:
            s3_process.stop()
            for i in range(8):  # RAM holds 4: the rest would live only in S3, which is down
                assert c.put(h(i), data_for(i))
            assert bytes(c.get(h(7))) == data_for(7)
            assert c.get(h(0)) is None  # evicted from RAM, never reached S3: a miss, not an error
            assert c.lookup([h(0)]).hits == 0
            assert wait_for(lambda: metric(d, "kvbucket_store_queue_dropped_total") >= 1)
            s3_process.start()
            s3_process_bucket_ready(s3_process.endpoint, s3_bucket)
            c.put(h(100), data_for(100))
            assert wait_for(lambda: _object_count(s3_process.endpoint, s3_bucket) >= 1, timeout=30)
    finally:
        d.stop()
        if s3_process.proc is None:
            s3_process.start()


def s3_process_bucket_ready(endpoint: str, bucket: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                      region_name="us-east-1")
    try:
        s3.create_bucket(Bucket=bucket)  # moto keeps no state across a restart
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass


def _object_count(endpoint: str, bucket: str) -> int:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                      region_name="us-east-1")
    return s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0)


@pytest.mark.parametrize("flag", ["--no-ram"])
def test_nvme_only_daemon_serves_from_disk(tmp_path, flag):
    d = start_daemon(tmp_path, flag, "--nvme")
    try:
        with Client(d.url, model="m", layout=LAYOUT) as c:
            c.put(h(1), os.urandom(16) * (LAYOUT.chunk_bytes // 16))
            assert c.lookup([h(1)]).tiers == ["nvme"]
            assert c.get(h(1)) is not None
    finally:
        d.stop()


def test_periodic_flush_makes_puts_survive_kill_9(tmp_path):
    """The WAL is off: without the periodic flush these few puts would sit in the memtable and be lost."""
    env = {"KVBUCKET_NVME__FLUSH_SECONDS": "0.2"}
    d = start_daemon(tmp_path, "--nvme", env=env)
    try:
        with Client(d.url, model="m", layout=LAYOUT) as c:
            c.put_many([(h(i), data_for(i)) for i in range(5)])
        # wait for the daemon's background flush to write a table file
        assert wait_for(lambda: any((tmp_path / "data" / "nvme").glob("*.sst")), timeout=30)
    finally:
        d.kill9()
    d2 = start_daemon(tmp_path, "--nvme")
    try:
        with Client(d2.url, model="m", layout=LAYOUT) as c:
            assert c.lookup([h(i) for i in range(5)]).hits == 5
            assert [bytes(g) for g in c.get_many([h(i) for i in range(5)])] == [data_for(i) for i in range(5)]
    finally:
        d2.stop()
