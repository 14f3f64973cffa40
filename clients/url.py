"""kvbucket URLs: where a client finds the daemon.

    kvbucket://127.0.0.1:7070                 plain TCP
    kvbucket+tls://cache.internal:7070?ca=/etc/kvbucket/ca.pem
    kvbucket+unix:///run/kvbucket/kvbucket.sock   same-host sidecar

Query parameters `namespace` and `token` are accepted as defaults for the client.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from kvbucket.core.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class Endpoint:
    target: str  # what grpc.*_channel takes
    tls: bool = False
    ca_file: str | None = None
    namespace: str = ""
    token: str | None = None
    unix: bool = False

    @property
    def host(self) -> str:
        """The host of a TCP endpoint (no brackets), for connecting a plain socket to it."""
        return self.target.rsplit(":", 1)[0].strip("[]")


def parse_url(url: str) -> Endpoint:
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    common = dict(namespace=query.get("namespace", ""), token=query.get("token"))
    if parts.scheme == "kvbucket+unix":
        path = parts.path or parts.netloc
        if not path:
            raise InvalidArgument(f"{url!r}: a unix URL needs a socket path, e.g. kvbucket+unix:///run/kvbucket.sock")
        return Endpoint(target=f"unix:{path}", unix=True, **common)
    if parts.scheme not in ("kvbucket", "kvbucket+tls"):
        raise InvalidArgument(f"{url!r}: scheme must be kvbucket://, kvbucket+tls:// or kvbucket+unix://")
    if not parts.hostname or not parts.port:
        raise InvalidArgument(f"{url!r}: expected kvbucket://HOST:PORT")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    tls = parts.scheme == "kvbucket+tls"
    return Endpoint(target=f"{host}:{parts.port}", tls=tls, ca_file=query.get("ca"), **common)
