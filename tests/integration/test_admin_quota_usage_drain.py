"""Quotas, usage against a workload with known hits, Prometheus series, drain to S3 and hydrate."""

from __future__ import annotations

import time
import urllib.request

import pytest
from admin_helpers import CHUNK, LAYOUT, S3_ENV, cli, data, h, s3_args

from kvbucket import Client
from kvbucket.core import errors

from daemon import start_daemon


def test_quota_refuses_with_an_actionable_message_and_persists(tmp_path):
    d = start_daemon(tmp_path)
    try:
        assert int(cli(d, "quota", "default", "10KiB")[0]["quota_bytes"]) == 10 * 1024
        c = Client(d.url, model="m", layout=LAYOUT)
        c.put_many([(h(i), data(i)) for i in range(10)])
        c.put(h(0), data(0))  # an overwrite is not new bytes
        with pytest.raises(errors.ResourceExhausted, match="quota") as exc:
            c.put(h(10), data(10))
        assert "kvbucket evict" in str(exc.value) and "kvbucket quota set" in str(exc.value)
        with Client(d.url, namespace="other", model="m", layout=LAYOUT) as o:
            o.put(h(10), data(10))  # other namespaces are not bound by it
        (p,) = cli(d, "quota", "default")
        assert int(p["used_bytes"]) == 10 * CHUNK
        cli(d, "evict", "--yes", "--namespace", "default", "--hash", h(0).hex(), "--hash", h(1).hex())
        c.put_many([(h(10), data(10)), (h(11), data(11))])
        c.close()
    finally:
        d.stop()
    d = start_daemon(tmp_path)  # the same data dir: the quota is still there
    try:
        (p,) = cli(d, "quota")
        assert p["namespace"] == "default" and int(p["quota_bytes"]) == 10 * 1024
        assert cli(d, "quota", "default", "0")[0].get("quota_bytes", "0") in (0, "0")
    finally:
        d.stop()


def test_usage_matches_a_known_workload_and_survives_restart(tmp_path):
    env = {
        "KVBUCKET_ADMIN__DEBUG_CLOCK": "true",
        "KVBUCKET_ADMIN__PRICE_PER_MILLION_INPUT_TOKENS": "3.0",
        "KVBUCKET_ADMIN__MAX_LABEL_PAIRS": "2",
    }
    d = start_daemon(tmp_path, env=env)
    try:
        c = Client(d.url, model="m1", layout=LAYOUT)
        c.put_many([(h(i), data(i)) for i in range(10)])  # 10 chunks x 16 tokens
        for _ in range(2):
            assert all(x is not None for x in c.get_many([h(i) for i in range(10)]))  # 20 hits
        assert c.get_many([h(i) for i in range(100, 105)]) == [None] * 5  # 5 misses
        cli(d, "usage")  # a census: 160 tokens stored from now
        c.advance_clock(3600)
        (row,) = cli(d, "usage")["rows"]
        assert (row["namespace"], row["model"], int(row["entries"])) == ("default", "m1", 10)
        assert (int(row["hits"]), int(row["misses"]), row["hit_rate"]) == (20, 5, 0.8)
        assert int(row["tokens_served"]) == 320 and int(row["tokens_stored"]) == 160
        assert row["saved"] == pytest.approx(320 * 3.0 / 1e6)
        assert row["token_hours"] == pytest.approx(160, rel=0.01)
        assert int(row["tiers"][0]["bytes"]) == 10 * CHUNK
        for model in ("m2", "m3", "m4"):  # more pairs than labelled series: the rest is "other"
            cm = c.scoped(model=model)  # shares c's channel: not closed on its own
            cm.put(h(0), data(0))
            cm.get(h(0))
        body = urllib.request.urlopen(d.metrics_url, timeout=5).read().decode()
        assert 'kvbucket_usage_hits_total{model="m1",namespace="default"} 20.0' in body
        assert 'kvbucket_usage_hits_total{model="other",namespace="other"} 2.0' in body
        assert 'kvbucket_usage_tokens_served_total{model="m1",namespace="default"} 320.0' in body
        c.close()
    finally:
        d.stop()
    d = start_daemon(tmp_path, env=env)  # counters persisted in the data dir
    try:
        rows = {r["model"]: r for r in cli(d, "usage")["rows"]}
        assert int(rows["m1"]["hits"]) == 20 and rows["m1"]["token_hours"] >= 159
    finally:
        d.stop()


def test_drain_then_a_fresh_daemon_on_an_empty_disk_finds_everything(tmp_path, s3_server, s3_bucket):
    env = {**S3_ENV, "KVBUCKET_S3__PERSIST_NAMESPACES": "[]"}  # nothing is written through to S3
    a = start_daemon(tmp_path / "a", "--nvme", *s3_args(s3_server, s3_bucket), env=env)
    keys = [h(i) for i in range(12)]
    try:
        with Client(a.url, model="m", layout=LAYOUT) as c:
            c.put_many([(k, data(i)) for i, k in enumerate(keys)])
        assert cli(a, "ls", "--tier", "s3") == []
        steps = cli(a, "drain")
        final = [s for s in steps if s.get("finished")][0]
        assert int(final["done"]) == 12 and int(final.get("failed", 0)) == 0
        assert len(cli(a, "ls", "--tier", "s3", "--limit", "100")) == 12
    finally:
        a.stop()
    b = start_daemon(tmp_path / "b", "--nvme", *s3_args(s3_server, s3_bucket), env=env)
    try:
        with Client(b.url, model="m", layout=LAYOUT) as c:
            r = c.lookup(keys)
            assert r.hits == 12 and set(r.tiers) == {"s3"}
            assert [bytes(x) for x in c.get_many(keys)] == [data(i) for i in range(12)]
    finally:
        b.stop()
    hyd = start_daemon(
        tmp_path / "c", *s3_args(s3_server, s3_bucket), env={**env, "KVBUCKET_S3__HYDRATE_ON_START": "5"}
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(cli(hyd, "ls", "--tier", "ram")) < 5:
            time.sleep(0.1)
        assert len(cli(hyd, "ls", "--tier", "ram")) == 5
    finally:
        hyd.stop()


def test_grafana_dashboard_queries_series_the_daemon_exports():
    import json
    import re
    from pathlib import Path

    dash = json.loads((Path(__file__).parents[2] / "deploy/grafana/kvbucket.json").read_text())
    names = {n for p in dash["panels"] for t in p["targets"] for n in re.findall(r"kvbucket_[a-z_]+", t["expr"])}
    exported = {
        "kvbucket_tier_bytes",
        "kvbucket_tier_capacity_bytes",
        "kvbucket_usage_hits_total",
        "kvbucket_usage_misses_total",
        "kvbucket_usage_tokens_served_total",
        "kvbucket_usage_saved_total",
        "kvbucket_usage_bytes",
        "kvbucket_usage_token_hours_total",
        "kvbucket_store_evictions_total",
        "kvbucket_store_promotions_total",
        "kvbucket_store_demotions_total",
        "kvbucket_server_request_seconds_bucket",
        "kvbucket_server_rejected_total",
        "kvbucket_store_queue_depth",
        "kvbucket_store_queue_dropped_total",
    }
    assert names <= exported, names - exported
