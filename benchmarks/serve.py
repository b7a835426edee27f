"""Run the real app (`python app.py`) in a child process on 127.0.0.1, for benchmarks and end-to-end tests."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class AppProcess:
    url: str
    pid: int
    log_path: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_app(log_path: Path, **env: str) -> Iterator[AppProcess]:
    """`python app.py` on a free port of 127.0.0.1 with extra environment variables, until the block ends."""
    port = free_port()
    environment = {**os.environ, "SAM_PORT": str(port), "SAM_HOST": "127.0.0.1", "GRADIO_ANALYTICS_ENABLED": "False", **env}
    url = f"http://127.0.0.1:{port}/"
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, "app.py"], cwd=REPO_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
        try:
            for _ in range(240):
                if server.poll() is not None:
                    raise RuntimeError(f"app exited: {Path(log_path).read_text()}")
                try:
                    if httpx.get(url, timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            else:
                raise RuntimeError("app did not start")
            yield AppProcess(url, server.pid, Path(log_path))
        finally:
            server.terminate()
            server.wait(timeout=30)
