"""`kvbucket bench` against a real daemon: the report's fields, and that it leaves no keys behind."""

from __future__ import annotations

import json

from kvbucket.clients import shm

from daemon import run_cli, start_daemon


def _ram_entries(url: str) -> int:
    r = run_cli("stats", "--url", url, "--json")
    assert r.returncode == 0, r.stderr
    return int(next(t for t in json.loads(r.stdout)["tiers"] if t["tier"] == "TIER_RAM").get("entries", 0))


def test_bench_json_reports_and_cleans_up(daemon, tmp_path):
    real = tmp_path / "real.bin"
    real.write_bytes(b"r" * 4096)
    r = run_cli("put", str(real), "--url", daemon.url, "--key", "real")
    assert r.returncode == 0, r.stderr
    real_hash = r.stdout.split()[0]

    r = run_cli("bench", "--url", daemon.url, "--chunk-mib", "0.25", "--count", "6", "--lookups", "20",
                "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["namespace"] == "bench" and report["count"] == 6 and report["chunk_bytes"] == 256 << 10
    assert report["transport"] == "fast wire" and report["first_call_ms"] > 0  # a TCP URL: no arena here
    for op in ("put", "get", "put_stream"):
        assert report[op]["ops"] == 6
        assert {"gbps", "p50_ms", "p99_ms", "seconds"} <= report[op].keys()
        assert report[op]["gbps"] > 0 and report[op]["p99_ms"] >= report[op]["p50_ms"] > 0
    assert report["lookup"]["keys"] == 6 and report["lookup"]["calls"] == 20
    assert report["lookup"]["p99_ms"] >= report["lookup"]["p50_ms"] > 0
    assert report["deleted"] == 13  # six put one by one, six streamed, and the untimed first chunk

    # Nothing of the bench is left; the real entry is untouched.
    ls = run_cli("ls", "--url", daemon.url, "--namespace", "bench", "--json")
    assert ls.returncode == 0, ls.stderr
    assert json.loads(ls.stdout) == []
    assert _ram_entries(daemon.url) == 1
    back = tmp_path / "back.bin"
    r = run_cli("get", real_hash, "--shape", "4096", "-o", str(back), "--url", daemon.url)
    assert r.returncode == 0 and back.read_bytes() == real.read_bytes()


def test_bench_table_in_its_own_namespace(daemon):
    r = run_cli("bench", "--url", daemon.url, "--chunk-mib", "0.0625", "--count", "3", "--lookups", "5",
                "--namespace", "bench-ci")
    assert r.returncode == 0, r.stderr
    assert "put" in r.stdout and "put stream" in r.stdout and "lookup 3 keys" in r.stdout
    assert "cleaned up: 7 of 7 keys deleted" in r.stdout and "first put + get" in r.stdout
    assert _ram_entries(daemon.url) == 0


def test_bench_reports_an_unreachable_daemon():
    r = run_cli("bench", "--url", "kvbucket://127.0.0.1:1", "--chunk-mib", "0.0625", "--count", "1",
                timeout=90)
    assert r.returncode == 2
    assert "error" in r.stderr


def test_bench_over_a_unix_socket_uses_shared_memory_and_times_it_apart_from_attaching(tmp_path):
    d = start_daemon(tmp_path / "d", "--unix-socket", str(tmp_path / "kv.sock"), "--shm-size", "64MiB",
                     "--ram-capacity", "64MiB")
    try:
        r = run_cli("bench", "--url", d.info["unix_url"], "--chunk-mib", "1", "--count", "4", "--lookups", "5",
                    "--json")
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)
        assert report["transport"] == "shm"
        assert report["shm_copy"] == shm.put_copy()  # e.g. "avx2 non-temporal stores"
        assert report["put"]["ops"] == report["get"]["ops"] == report["put_stream"]["ops"] == 4
        assert report["deleted"] == 9
        assert _ram_entries(d.url) == 0
    finally:
        d.stop()
