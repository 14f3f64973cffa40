"""The `kvbucket` command against a real daemon: put/get of a file, stats, ls, metrics, health."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from daemon import run_cli


def test_put_get_file_round_trip(daemon, tmp_path):
    src = tmp_path / "blob.bin"
    src.write_bytes(bytes(range(256)) * 5000)
    r = run_cli("put", str(src), "--url", daemon.url)
    assert r.returncode == 0, r.stderr
    h = r.stdout.split()[0]
    out = tmp_path / "back.bin"
    r = run_cli("get", h, "--shape", str(src.stat().st_size), "-o", str(out), "--url", daemon.url)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == src.read_bytes()
    r = run_cli("get", "00" * 32, "--shape", "10", "-o", str(out), "--url", daemon.url)
    assert r.returncode == 1 and "miss" in r.stderr


def test_stats_and_ls(daemon, tmp_path):
    src = tmp_path / "x.bin"
    src.write_bytes(b"x" * 4096)
    assert run_cli("put", str(src), "--url", daemon.url, "--key", "one").returncode == 0
    r = run_cli("stats", "--url", daemon.url, "--json")
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    ram = next(t for t in stats["tiers"] if t["tier"] == "TIER_RAM")
    assert int(ram["entries"]) == 1 and int(ram["bytes"]) == 4096
    table = run_cli("stats", "--url", daemon.url)
    assert "ram" in table.stdout and table.returncode == 0
    r = run_cli("ls", "--url", daemon.url, "--json")
    entries = json.loads(r.stdout)
    assert len(entries) == 1 and entries[0]["namespace"] == "default" and entries[0]["model"] == "debug"
    assert "debug" in run_cli("ls", "--url", daemon.url).stdout


def test_cli_reports_an_unreachable_daemon_clearly():
    r = run_cli("stats", "--url", "kvbucket://127.0.0.1:1", timeout=60)
    assert r.returncode == 2 and "Unavailable" in r.stderr


def test_metrics_endpoint_and_health(daemon):
    run_cli("stats", "--url", daemon.url)
    body = urllib.request.urlopen(daemon.metrics_url, timeout=5).read().decode()
    assert 'kvbucket_server_requests_total{op="stats",status="OK"}' in body
    assert 'kvbucket_tier_entries{tier="ram"}' in body
    with grpc.insecure_channel(daemon.url.removeprefix("kvbucket://")) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_unix_socket_url(tmp_path):
    from kvbucket import Client, Layout

    from daemon import start_daemon

    sock = tmp_path / "kv.sock"
    d = start_daemon(tmp_path, "--unix-socket", str(sock))
    try:
        layout = Layout("uint8", (1024,), tokens_per_chunk=1)
        with Client(f"kvbucket+unix://{sock}", layout=layout) as c:
            c.put(b"u", b"u" * 1024)
            assert bytes(c.get(b"u")) == b"u" * 1024
    finally:
        d.stop()


def test_daemon_starts_without_torch_vllm_or_lmcache():
    code = (
        "import sys; import kvbucket.server.app, kvbucket.clients.cli, kvbucket.server.tiers.memory;"
        "bad = [m for m in ('torch', 'vllm', 'lmcache') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
