"""Start real kvbucket daemons as subprocesses on 127.0.0.1, port 0, for integration tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

KVBUCKET = [sys.executable, "-m", "kvbucket.clients.cli"]


@dataclass
class DaemonProcess:
    proc: subprocess.Popen
    info: dict
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.info["url"]

    @property
    def metrics_url(self) -> str:
        return self.info["metrics_url"]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)


def start_daemon(tmp: Path, *args: str, env: dict | None = None, timeout: float = 30) -> DaemonProcess:
    """`kvbucket serve --port 0 --metrics-port 0 ...`; waits for its ready file."""
    tmp.mkdir(parents=True, exist_ok=True)
    ready = tmp / f"ready-{time.monotonic_ns()}.json"
    log_path = tmp / f"daemon-{time.monotonic_ns()}.log"
    cmd = [*KVBUCKET, "serve", "--port", "0", "--metrics-port", "0", "--ready-file", str(ready),
           "--data-dir", str(tmp / "data"), *args]
    full_env = {**os.environ, **(env or {})}
    full_env.pop("KVBUCKET_URL", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready.exists():
            return DaemonProcess(proc, json.loads(ready.read_text()), log_path, list(args))
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}:\n{log_path.read_text()}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"daemon not ready after {timeout}s:\n{log_path.read_text()}")


def run_cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*KVBUCKET, *args], capture_output=True, text=True, timeout=timeout, env=full_env)
