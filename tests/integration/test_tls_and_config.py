"""TLS end to end, and configuration precedence (flags > env > config file) in a real daemon."""

from __future__ import annotations

import subprocess
import urllib.request

import pytest

from kvbucket import Client, Layout
from kvbucket.core import errors
from kvbucket.server.settings import load_settings

from daemon import start_daemon

LAYOUT = Layout("uint8", (4096,), tokens_per_chunk=1)


@pytest.fixture
def cert(tmp_path):
    key, crt = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )
    return key, crt


def test_tls_round_trip_and_plaintext_is_refused(tmp_path, cert):
    key, crt = cert
    d = start_daemon(tmp_path, "--tls-cert", str(crt), "--tls-key", str(key))
    try:
        port = d.info["port"]
        with Client(f"kvbucket+tls://127.0.0.1:{port}?ca={crt}", layout=LAYOUT) as c:
            c.put(b"secret", b"s" * 4096)
            assert bytes(c.get(b"secret")) == b"s" * 4096
        with Client(f"kvbucket://127.0.0.1:{port}", layout=LAYOUT, timeout=3) as plain:
            with pytest.raises(errors.Unavailable):
                plain.lookup([b"secret"])
    finally:
        d.stop()


def test_config_file_env_and_flags_precedence(tmp_path, monkeypatch):
    cfg = tmp_path / "kvbucket.toml"
    cfg.write_text('port = 7101\nmetrics_port = 9101\n[ram]\ncapacity = "1GiB"\npolicy = "lru"\n')
    monkeypatch.setenv("KVBUCKET_METRICS_PORT", "9202")
    monkeypatch.setenv("KVBUCKET_RAM__CAPACITY", "2GiB")
    s = load_settings(cfg, port=7303)
    assert s.port == 7303  # flag over file
    assert s.metrics_port == 9202  # env over file
    assert s.ram.capacity == 2 << 30 and s.ram.policy == "lru"  # env and file merge per field


def test_invalid_configuration_is_reported_and_the_daemon_does_not_start(tmp_path):
    from daemon import run_cli

    r = run_cli("serve", "--ram-policy", "fifo-ish", "--port", "0", "--data-dir", str(tmp_path), timeout=60)
    assert r.returncode == 2 and "invalid configuration" in r.stderr


def test_metrics_stay_in_the_daemons_memory_when_it_inherits_a_multiprocess_dir(tmp_path):
    """vLLM and LMCache export PROMETHEUS_MULTIPROC_DIR; a daemon started under it must not keep its
    counters in that directory's pid-named files (a recycled pid would start from stale counts)."""
    shared = tmp_path / "prom"
    shared.mkdir()
    d = start_daemon(tmp_path / "d", env={"PROMETHEUS_MULTIPROC_DIR": str(shared)})
    try:
        with Client(d.url, model="m", layout=Layout("uint8", (64,), tokens_per_chunk=4)) as c:
            assert c.put(b"x", bytes(64))
        text = urllib.request.urlopen(d.metrics_url).read().decode()
        assert 'kvbucket_server_requests_total{op="put",status="OK"} 1.0' in text
        assert list(shared.iterdir()) == []
    finally:
        d.stop()
