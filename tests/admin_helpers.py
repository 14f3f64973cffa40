"""Shared by tests/integration/test_admin_*.py: the CLI as a JSON function, a small layout, S3 flags."""

from __future__ import annotations

import json

from kvbucket import Layout

from daemon import DaemonProcess, run_cli

LAYOUT = Layout("float32", (4, 64), tokens_per_chunk=16)  # 1 KiB chunks of 16 tokens
CHUNK = LAYOUT.chunk_bytes


def data(i: int) -> bytes:
    return bytes([i % 256]) * CHUNK


def h(i: int) -> bytes:
    return i.to_bytes(4, "big") * 8


def cli(d: DaemonProcess, *args: str, token: str | None = None, ok: bool = True):
    """Run `kvbucket ARGS --url D --json`; the parsed JSON (or the CompletedProcess when ok=False)."""
    extra = ["--token", token] if token else []
    r = run_cli(*args, "--url", d.url, "--json", *extra)
    if not ok:
        return r
    assert r.returncode == 0, f"{args}: {r.stdout}\n{r.stderr}"
    return json.loads(r.stdout)


def s3_args(endpoint: str, bucket: str) -> list[str]:
    return ["--s3-bucket", bucket, "--s3-endpoint", endpoint]


S3_ENV = {"KVBUCKET_S3__CREATE_BUCKET": "true", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
