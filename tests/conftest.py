"""Fixtures shared by every test folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/daemon.py and friends

from daemon import DaemonProcess, start_daemon  # noqa: E402


@pytest.fixture
def daemon(tmp_path) -> DaemonProcess:
    """A real daemon with the embedded defaults (RAM tier), on a free port."""
    d = start_daemon(tmp_path / "daemon")
    yield d
    d.stop()
