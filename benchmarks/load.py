"""Load test: many concurrent `gradio_client` users against the app (`python app.py`) on 127.0.0.1.

A handful of distinct inputs (the example sets, group captioning and storytelling, greedy and seeded sampling)
is answered once sequentially for reference; then `--clients` threads, each with its own Client, send
`--requests` /compare calls in all, cycling over the inputs. Every answer must equal the reference for its
input (nothing lost, nothing mixed up between users) or be a clear "queue is full, try again" (busy).
Prints a markdown table with latency percentiles and the app process's memory before and after.

    python -m benchmarks.load --requests 200 --clients 8 [--max-new-tokens 8] [--url http://127.0.0.1:7860/ --pid PID]

Without --url the app is started here (with the SAM_* settings of this environment) and stopped afterwards.
"""

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from gradio_client.utils import QueueError

from .serve import REPO_ROOT, serve_app

EXAMPLES_DIR = REPO_ROOT / "examples"


@dataclass(frozen=True)
class Case:
    """One distinct request: images, task, question, storytelling captions, preset and seed."""

    images: tuple[str, ...]
    task: str
    question: str
    captions: str
    preset: str
    seed: int

    def arguments(self, max_new_tokens: int) -> tuple:
        return ([handle_file(path) for path in self.images], self.task, self.question, self.captions, self.preset, max_new_tokens,
                self.seed)


def example_cases() -> list[Case]:
    """Each example set once greedy and twice sampled with different seeds (answers that depend on the seed
    show whether one user's seed leaks into another's answer)."""
    cases = []
    for path in sorted(EXAMPLES_DIR.glob("*/example.json")):
        for entry in json.loads(path.read_text()):
            images = tuple(str(path.parent / name) for name in entry["images"])
            captions = "\n".join(entry.get("captions") or [])
            for preset, seed in (("greedy", 0), ("sampling", 1), ("sampling", 2)):
                cases.append(Case(images, entry["task"], entry.get("question", ""), captions, preset, seed))
    return cases


def is_busy(error: Exception) -> bool:
    """Gradio's answer when the queue (SAM_QUEUE_SIZE) is full: "Queue is full! Please try again."."""
    return isinstance(error, QueueError) or "queue is full" in str(error).lower()


@dataclass
class LoadResult:
    requests: int
    clients: int
    ok: int = 0
    busy: int = 0
    wrong: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, answered requests (ok or wrong)
    rss_before_mb: float | None = None
    rss_after_mb: float | None = None
    problems: list[str] = field(default_factory=list)  # the first few wrong answers and failures, for the report

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[int(q) - 1] if len(self.latencies) > 1 else self.latencies[0]

    def markdown(self) -> str:
        rss = "n/a" if self.rss_before_mb is None else f"{self.rss_before_mb:.0f} → {self.rss_after_mb:.0f}"
        return "\n".join([
            "| requests | concurrency | ok | busy | wrong | failed | p50 latency (s) | p95 latency (s) | app RSS before → after (MB) |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {self.requests} | {self.clients} | {self.ok} | {self.busy} | {self.wrong} | {self.failed} | "
            f"{self.percentile(50):.2f} | {self.percentile(95):.2f} | {rss} |",
        ])


def rss_mb(pid: int | None) -> float | None:
    return None if pid is None else psutil.Process(pid).memory_info().rss / 2**20


def answer(client: Client, case: Case, max_new_tokens: int) -> tuple[str, str]:
    sam, baseline, _ = client.predict(*case.arguments(max_new_tokens), api_name="/compare")
    return sam, baseline


def run_load(url: str, cases: list[Case], requests: int, clients: int, max_new_tokens: int = 8, pid: int | None = None) -> LoadResult:
    """Reference answers one by one, then `requests` calls from `clients` concurrent Clients; `pid`: the app's
    process, for its memory (measured after the reference pass, so the model and caches are warm)."""
    reference_client = Client(url, verbose=False)
    reference = {case: answer(reference_client, case, max_new_tokens) for case in cases}
    result = LoadResult(requests, clients, rss_before_mb=rss_mb(pid))
    tickets, lock = itertools.count(), threading.Lock()

    def user():
        client = Client(url, verbose=False)
        while (ticket := next(tickets)) < requests:
            case = cases[ticket % len(cases)]
            start = time.perf_counter()
            try:
                got = answer(client, case, max_new_tokens)
            except (AppError, QueueError, httpx.HTTPError, ValueError, RuntimeError) as error:
                with lock:
                    if is_busy(error):
                        result.busy += 1
                    else:
                        result.failed += 1
                        result.problems.append(f"failed: {error.__class__.__name__}: {error}")
                continue
            seconds = time.perf_counter() - start
            with lock:
                result.latencies.append(seconds)
                if got == reference[case]:
                    result.ok += 1
                else:
                    result.wrong += 1
                    result.problems.append(f"wrong: {case} got {got}, expected {reference[case]}")

    threads = [threading.Thread(target=user) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.rss_after_mb = rss_mb(pid)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--url", help="an app that is already running (default: start one here)")
    parser.add_argument("--pid", type=int, help="that app's process id, for its memory")
    args = parser.parse_args(argv)
    cases = example_cases()
    start = time.perf_counter()
    if args.url:
        result = run_load(args.url, cases, args.requests, args.clients, args.max_new_tokens, args.pid)
    else:
        with tempfile.TemporaryDirectory() as folder, serve_app(Path(folder) / "app.log", HF_HUB_OFFLINE="1") as app:
            result = run_load(app.url, cases, args.requests, args.clients, args.max_new_tokens, app.pid)
    print(f"{len(cases)} distinct inputs, {args.max_new_tokens} max new tokens, {time.perf_counter() - start:.0f} s in all\n")
    print(result.markdown())
    for problem in result.problems[:5]:
        print(problem)
    return 0 if result.wrong == result.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
