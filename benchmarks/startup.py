"""Start-up as a user meets it, whole processes, this tree against a baseline commit in the same run.

Two scenarios, round-robin between the trees, median of `--repeats`:
- CLI cold compare: `python -m sam_core generate --images (4 MiniLINK images) --task group`, process start to exit.
- App start: `python app.py`, process start to the first HTTP 200 of its page (polled every 20 ms).

The baseline is checked out from git (`--baseline`, default the commit this work started from) into a temporary
worktree, removed at the end; both trees run with the same interpreter, environment and images.

    python -m benchmarks.startup [--repeats 7] [--baseline eb1330a]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from .serve import REPO_ROOT, free_port

IMAGES = sorted(str(path) for path in (REPO_ROOT / "examples" / "group-sam-binds").glob("*.png"))
TARGETS = {"CLI cold compare": 0.85, "app start to HTTP 200": 0.8}


def environment(tree: Path, **extra: str) -> dict:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return {**env, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(tree), **extra}


def cli_seconds(tree: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sam_core", "generate", "--images", *IMAGES, "--task", "group"], cwd=tree,
                          env=environment(tree), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"CLI failed in {tree}: {done.stderr[-2000:]}")
    return seconds


def app_seconds(tree: Path) -> float:
    port = free_port()
    start = time.perf_counter()
    server = subprocess.Popen([sys.executable, "app.py"], cwd=tree, env=environment(tree, SAM_PORT=str(port), SAM_HOST="127.0.0.1"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"app exited in {tree}: {server.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                    return time.perf_counter() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
    finally:
        server.terminate()
        server.wait(timeout=30)


@contextmanager
def checkout(commit: str):
    """A temporary git worktree of `commit`, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="sam-baseline-") as directory:
        tree = Path(directory) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=REPO_ROOT, check=True, capture_output=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO_ROOT, capture_output=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--baseline", default="eb1330a", help="the commit to compare against")
    args = parser.parse_args(argv)
    scenarios = {"CLI cold compare": cli_seconds, "app start to HTTP 200": app_seconds}
    with checkout(args.baseline) as baseline:
        trees = {args.baseline: baseline, "this tree": REPO_ROOT}
        times = {(scenario, name): [] for scenario in scenarios for name in trees}
        for round_index in range(args.repeats + 1):  # the first round warms the file cache and is dropped
            for scenario, measure in scenarios.items():
                for name, tree in trees.items():
                    seconds = measure(tree)
                    if round_index:
                        times[scenario, name].append(seconds)
    print(f"whole processes, median of {args.repeats} round-robin runs after a warm-up round, "
          f"{os.cpu_count()} CPUs, {len(IMAGES)} images\n")
    print(f"| scenario | {args.baseline} (s) | this tree (s) | this ÷ {args.baseline} | target |")
    print("|---|---|---|---|---|")
    for scenario in scenarios:
        old, new = (statistics.median(times[scenario, name]) for name in trees)
        print(f"| {scenario} | {old:.2f} | {new:.2f} | {new / old:.2f}× | ≤ {TARGETS[scenario]}× |")


if __name__ == "__main__":
    main()
