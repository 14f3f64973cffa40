"""Token auth: unauthenticated calls are refused, and each tenant sees only its own entries."""

from __future__ import annotations

import pytest

from kvbucket import Client, Layout
from kvbucket.core import errors

from daemon import run_cli, start_daemon

LAYOUT = Layout("float32", (4, 64), tokens_per_chunk=4)
DATA = bytes(LAYOUT.chunk_bytes)

TOKENS = """
[[tokens]]
token = "token-a"
tenant = "team-a"

[[tokens]]
token = "token-b"
tenant = "team-b"

[[tokens]]
token = "token-ops"
tenant = "ops"
admin = true
"""


@pytest.fixture
def secured(tmp_path):
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS)
    d = start_daemon(tmp_path, "--tokens-file", str(tokens))
    yield d
    d.stop()


def test_calls_without_a_token_are_unauthenticated(secured):
    with Client(secured.url, layout=LAYOUT) as c:
        with pytest.raises(errors.Unauthenticated, match="requires a token"):
            c.lookup([b"x"])
        with pytest.raises(errors.Unauthenticated):
            c.put(b"x", DATA)
    with Client(secured.url, layout=LAYOUT, token="wrong") as c:
        with pytest.raises(errors.Unauthenticated, match="unknown token"):
            c.get(b"x")


def test_tenants_are_isolated(secured):
    with Client(secured.url, layout=LAYOUT, token="token-a") as a, \
         Client(secured.url, layout=LAYOUT, token="token-b") as b:
        a.put(b"secret-prefix", DATA)
        assert a.lookup([b"secret-prefix"]).hits == 1
        assert b.lookup([b"secret-prefix"]).hits == 0  # same hash, other tenant
        assert b.get(b"secret-prefix") is None
        with pytest.raises(errors.PermissionDenied, match="team-b"):
            b.scoped(namespace="team-a").get(b"secret-prefix")
        assert [e.namespace for e in b.list_entries().entries] == []
        assert [e.namespace for e in a.list_entries().entries] == ["team-a"]
        with pytest.raises(errors.PermissionDenied):
            b.list_entries(namespace="team-a")


def test_admin_sees_every_tenant(secured):
    with Client(secured.url, layout=LAYOUT, token="token-a") as a:
        a.put(b"k", DATA)
    r = run_cli("ls", "--url", secured.url, "--json", env={"KVBUCKET_TOKEN": "token-ops"})
    assert r.returncode == 0, r.stderr
    assert '"team-a"' in r.stdout
    r = run_cli("ls", "--url", secured.url, "--json")
    assert r.returncode == 2 and "Unauthenticated" in r.stderr
