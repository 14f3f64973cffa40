"""What every `kvbucket` command shares: consoles, the common options, tier names, sizes."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

console = Console()
err = Console(stderr=True)

DEFAULT_URL = "kvbucket://127.0.0.1:7070"
UrlOpt = Annotated[str, typer.Option("--url", envvar="KVBUCKET_URL", help="daemon URL")]
TokenOpt = Annotated[str | None, typer.Option("--token", envvar="KVBUCKET_TOKEN", help="bearer token")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]

TIERS = {"ram": 1, "nvme": 2, "s3": 3}  # values of the proto's Tier enum
TIER_NAMES = {v: k for k, v in TIERS.items()}


def human(n: float) -> str:
    """Bytes for people: 512 B, 1.5 MiB, 32.0 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
