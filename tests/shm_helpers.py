"""What the shared-memory tests share: 2 MiB Llama-shaped chunks and a daemon's metrics."""

from __future__ import annotations

import urllib.request

import numpy as np

from kvbucket import Layout

LAYOUT = Layout("bfloat16", (2, 2, 256, 8, 128), tokens_per_chunk=256)  # 2 MiB chunks
CHUNK = LAYOUT.chunk_bytes
CLOCK = {"KVBUCKET_ADMIN__DEBUG_CLOCK": "true"}


def chunk(i: int) -> bytes:
    return np.random.default_rng(i).integers(0, 256, CHUNK, dtype=np.uint8).tobytes()


def unix_url(d) -> str:
    return d.info["unix_url"]


def unix_target(d) -> str:
    return "unix:" + d.info["unix_url"].removeprefix("kvbucket+unix://")


def metric(d, name: str) -> float:
    text = urllib.request.urlopen(d.metrics_url).read().decode()
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in " {,":  # a name, or a name and leading labels
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def requests(d, op: str) -> float:
    return metric(d, f'kvbucket_server_requests_total{{op="{op}",status="OK"}}')


def request_mix(d) -> str:
    """Every request the daemon counted, by op and status: what an exact-count assertion shows on failure."""
    text = urllib.request.urlopen(d.metrics_url).read().decode()
    return "; ".join(line.removeprefix("kvbucket_server_requests_total") for line in text.splitlines()
                     if line.startswith("kvbucket_server_requests_total{"))
