"""Reset across RAM + NVMe + S3 and across two daemons sharing a bucket, under concurrent puts."""

from __future__ import annotations

import threading
import time

from admin_helpers import LAYOUT, S3_ENV, cli, data, h, s3_args

from kvbucket import Client

from daemon import start_daemon

FAST = {**S3_ENV, "KVBUCKET_S3__MANIFEST_REFRESH_SECONDS": "0.3", "KVBUCKET_ADMIN__SWEEP_SECONDS": "0.1"}


def _until(cond, timeout=20.0):
    """Poll another process's state (no event to wait on across processes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


def test_reset_namespace_everywhere_and_on_every_daemon(tmp_path, s3_server, s3_bucket):
    a = start_daemon(tmp_path / "a", "--nvme", *s3_args(s3_server, s3_bucket), env=FAST)
    b = start_daemon(tmp_path / "b", "--nvme", *s3_args(s3_server, s3_bucket), env=FAST)
    try:
        team_a = Client(a.url, namespace="team", model="m1", layout=LAYOUT)
        team_b = Client(b.url, namespace="team", model="m1", layout=LAYOUT)
        keep_a = Client(a.url, namespace="keep", model="m1", layout=LAYOUT)
        team_a.put_many([(h(i), data(i)) for i in range(20)])
        keep_a.put_many([(h(i), data(i)) for i in range(5)])
        team_a.pin(namespace="team", hashes=[h(0)])  # a reset removes pinned entries too
        assert _until(lambda: len(cli(a, "ls", "--tier", "s3", "--limit", "100")) == 25)
        assert _until(lambda: team_b.lookup([h(i) for i in range(20)]).hits == 20)
        for i in range(5):  # b now holds its own RAM/NVMe copies
            assert bytes(team_b.get(h(i))) == data(i)
        assert team_b.lookup([h(0)]).tiers == ["ram"]

        stop = threading.Event()
        written: list[int] = []

        def writer():
            with Client(a.url, namespace="team", model="m2", layout=LAYOUT) as w:
                i = 1000
                while not stop.is_set():
                    w.put(h(i), data(i))
                    written.append(i)
                    i += 1

        t = threading.Thread(target=writer)
        t.start()
        try:
            steps = cli(a, "reset", "--namespace", "team", "--yes")
        finally:
            stop.set()
            t.join(30)
        assert written, "the concurrent writer made no progress"
        assert any(s.get("finished") for s in steps)
        deleted = {(s["phase"], s.get("tier", "")): int(s.get("done", 0)) for s in steps}
        assert deleted[("delete", "TIER_RAM")] >= 20 and deleted[("delete", "TIER_S3")] >= 20

        keys = [h(i) for i in range(20)]
        assert team_a.lookup(keys).hits == 0 and team_a.get(h(0)) is None
        # the other daemon drops its S3 manifest entries and its own copies (reset marker); each key
        # is asked (Lookup counts the leading hits only: 0 as soon as h(0) is gone)
        assert _until(lambda: not any(team_b.exists(keys))), team_b.exists(keys)
        assert team_b.lookup(keys).hits == 0 and team_b.get(h(1)) is None
        assert keep_a.lookup([h(i) for i in range(5)]).hits == 5
        with Client(b.url, namespace="keep", model="m1", layout=LAYOUT) as keep_b:
            assert _until(lambda: keep_b.lookup([h(i) for i in range(5)]).hits == 5)
        # nothing of "team" put before the reset survives anywhere; the writer's later puts may
        left = cli(a, "ls", "--namespace", "team", "--limit", "1000")
        assert all(e["model"] == "m2" for e in left)

        cli(a, "reset", "--all", "--yes")
        assert cli(a, "ls", "--limit", "1000") == []
        assert keep_a.lookup([h(0)]).hits == 0
        assert _until(lambda: cli(b, "ls", "--limit", "1000") == [])
        for c in (team_a, team_b, keep_a):
            c.close()
    finally:
        a.stop()
        b.stop()


def test_reset_one_model_only(daemon):
    with Client(daemon.url, model="m1", layout=LAYOUT) as c1, Client(daemon.url, model="m2", layout=LAYOUT) as c2:
        c1.put_many([(h(i), data(i)) for i in range(4)])
        c2.put_many([(h(i), data(i)) for i in range(4)])
        r = cli(daemon, "reset", "--namespace", "default", "--model", "m1", "--yes")
        assert r[-1]["finished"]
        assert c1.lookup([h(0)]).hits == 0 and c2.lookup([h(i) for i in range(4)]).hits == 4
