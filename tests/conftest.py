"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
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


# A real S3 server (moto_server) in its own process; moved here from tests/server/conftest.py so the
# integration tests share it (same fixture names and behaviour).
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """A moto_server process on a fixed port; `stop()`/`start()` for fault tests (same port, state lost)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode} on port {self.port}")
            try:
                urllib.request.urlopen(self.endpoint, timeout=0.5).close()
                return
            except urllib.error.HTTPError:
                return  # it answered
            except OSError:
                time.sleep(0.05)  # waiting for another process to bind: no state to poll instead
        self.stop()
        raise RuntimeError(f"moto_server did not answer on {self.endpoint} within {timeout} s")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def s3_process():
    """The S3Server behind `s3_server`, to stop/restart in fault tests (they must leave it running)."""
    server = S3Server()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(s3_process) -> str:
    """The endpoint URL of a real S3 server (moto_server, in memory) shared by the session."""
    return s3_process.endpoint


@pytest.fixture
def s3_bucket() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"
