"""ls filters and pagination, inspect, evict by every selector, refusals, tenant scoping -- via the CLI."""

from __future__ import annotations

import pytest
from admin_helpers import CHUNK, LAYOUT, cli, data, h

from kvbucket import Client

from daemon import run_cli, start_daemon


def _fill(d, namespace="default", model="m1", n=10, start=0):
    with Client(d.url, namespace=namespace, model=model, layout=LAYOUT) as c:
        c.put_many([(h(i), data(i)) for i in range(start, start + n)])


def test_ls_filters_pagination_and_inspect(daemon):
    _fill(daemon, model="m1", n=25)
    _fill(daemon, model="m2", n=5, start=100)
    with Client(daemon.url, model="m1", layout=LAYOUT) as c:
        for i in range(3):
            assert c.get(h(i)) is not None  # three entries with hits
    assert len(cli(daemon, "ls", "--limit", "1000")) == 30
    # pagination: page size below the total walks every entry once, in key order
    seen = cli(daemon, "ls", "--model", "m1", "--limit", "7")
    assert len(seen) == 7
    allm1 = cli(daemon, "ls", "--model", "m1", "--limit", "1000")
    assert len(allm1) == 25 and len({e["hash"] for e in allm1}) == 25
    assert [e["hash"] for e in allm1[:7]] == [e["hash"] for e in seen]
    assert len(cli(daemon, "ls", "--min-hits", "1")) == 3
    assert len(cli(daemon, "ls", "--hash", h(1).hex(), "--hash", h(2).hex())) == 2
    assert len(cli(daemon, "ls", "--hash-prefix", h(100).hex()[:8])) == 1
    assert len(cli(daemon, "ls", "--tier", "ram", "--model", "m2")) == 5
    assert cli(daemon, "ls", "--pinned") == []
    info = cli(daemon, "inspect", h(1).hex(), "--model", "m1")
    assert len(info) == 1 and int(info[0]["hits"]) == 1 and info[0]["tiers"] == ["TIER_RAM"]
    assert int(info[0]["raw_bytes"]) == CHUNK and info[0]["tokens"] == 16
    r = cli(daemon, "inspect", "ff" * 32, "--model", "m1", ok=False)
    assert r.returncode == 1 and "not found" in r.stderr


def test_evict_by_key_chain_model_namespace_idle(daemon):
    _fill(daemon, model="m1", n=10)
    _fill(daemon, model="m2", n=4, start=50)
    _fill(daemon, namespace="other", model="m1", n=3, start=80)
    r = cli(daemon, "evict", "--yes", "--model", "m1", "--hash", h(0).hex())
    assert int(r["entries"]) == 1 and int(r["bytes"]) == CHUNK
    chain = [a for i in range(1, 4) for a in ("--hash", h(i).hex())]
    r = cli(daemon, "evict", "--yes", "--namespace", "default", "--model", "m1", *chain)
    assert int(r["entries"]) == 3 and r["tiers"][0]["tier"] == "TIER_RAM"
    with Client(daemon.url, model="m1", layout=LAYOUT) as c:
        assert c.lookup([h(i) for i in range(10)]).hits == 0 and c.exists([h(4)]) == [True]
    # dry run counts and removes nothing
    r = cli(daemon, "evict", "--dry-run", "--namespace", "default", "--model", "m2")
    assert int(r["entries"]) == 4 and len(cli(daemon, "ls", "--model", "m2")) == 4
    r = cli(daemon, "evict", "--yes", "--namespace", "default", "--model", "m2")
    assert int(r["entries"]) == 4 and cli(daemon, "ls", "--model", "m2") == []
    # idle: nothing has been idle for an hour
    assert cli(daemon, "evict", "--yes", "--idle", "3600")["entries"] in (0, "0")
    r = cli(daemon, "evict", "--yes", "--namespace", "other")
    assert int(r["entries"]) == 3
    assert {e["namespace"] for e in cli(daemon, "ls", "--limit", "1000")} == {"default"}


def test_empty_selector_refused_unless_all_and_yes_required_without_tty(daemon):
    _fill(daemon, n=3)
    r = cli(daemon, "evict", "--yes", ok=False)
    assert r.returncode == 2 and "FailedPrecondition" in r.stderr and "--all" in r.stderr
    r = cli(daemon, "reset", "--yes", ok=False)
    assert r.returncode == 2 and "FailedPrecondition" in r.stderr
    r = run_cli("evict", "--all", "--url", daemon.url)  # no terminal, no --yes
    assert r.returncode == 2 and "--yes" in r.stderr
    assert len(cli(daemon, "ls")) == 3
    assert int(cli(daemon, "evict", "--all", "--yes")["entries"]) == 3


def test_evict_from_one_tier_keeps_the_nvme_copy(tmp_path):
    d = start_daemon(tmp_path, "--nvme")
    try:
        _fill(d, n=4)
        cli(d, "ls")  # daemon up
        with Client(d.url, model="m1", layout=LAYOUT) as c:
            for _ in range(100):  # write-through to NVMe is behind: wait for it through the index
                if all("TIER_NVME" in e["tiers"] for e in cli(d, "ls")):
                    break
            r = cli(d, "evict", "--yes", "--model", "m1", "--namespace", "default", "--from", "ram")
            assert int(r["entries"]) == 4 and [t["tier"] for t in r["tiers"]] == ["TIER_RAM"]
            assert c.lookup([h(i) for i in range(4)]).tiers == ["nvme"] * 4
    finally:
        d.stop()


TOKENS = """
[[tokens]]
token = "token-a"
tenant = "team-a"

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


def test_non_admin_sees_and_changes_only_its_tenant(secured):
    with Client(secured.url, model="m1", layout=LAYOUT, token="token-a") as a:
        a.put_many([(h(i), data(i)) for i in range(3)])
    with Client(secured.url, namespace="ops", model="m1", layout=LAYOUT, token="token-ops") as o:
        o.put_many([(h(i), data(i)) for i in range(5)])
    assert len(cli(secured, "ls", token="token-a")) == 3
    assert len(cli(secured, "ls", token="token-ops", )) == 8
    r = cli(secured, "ls", "--namespace", "ops", token="token-a", ok=False)
    assert r.returncode == 2 and "PermissionDenied" in r.stderr
    r = cli(secured, "evict", "--yes", "--namespace", "ops", "--model", "m1", token="token-a", ok=False)
    assert r.returncode == 2 and "PermissionDenied" in r.stderr
    # a tenant's --all means all of its own entries
    assert int(cli(secured, "evict", "--yes", "--all", token="token-a")["entries"]) == 3
    assert len(cli(secured, "ls", token="token-ops")) == 5
    for admin_only in (["capacity", "ram", "1MiB", "--yes"], ["quota", "team-a", "1MiB"], ["drain"]):
        r = cli(secured, *admin_only, token="token-a", ok=False)
        assert r.returncode == 2 and "PermissionDenied" in r.stderr, admin_only
    r = cli(secured, "ls", ok=False)
    assert r.returncode == 2 and "Unauthenticated" in r.stderr
