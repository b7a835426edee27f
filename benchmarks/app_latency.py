"""App latency: from a gradio_client request to both answers, through the real app on 127.0.0.1.

The request is the Compare button's API (`/compare`): four uploaded images, group captioning, greedy, at most
`--new-tokens` tokens per answer. The app runs on the embedded default in a child process, once per server
thread count; medians of `--repeats` after a warm-up request.

    python -m benchmarks.app_latency [--repeats 10] [--threads 1 2] [--new-tokens 20]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from gradio_client import Client, handle_file

from .serve import REPO_ROOT, serve_app

EXAMPLE = sorted((REPO_ROOT / "examples" / "group-sam-binds").glob("*.png"))


def request_seconds(client: Client, files: list, new_tokens: int) -> tuple[float, str, str]:
    start = time.perf_counter()
    sam, baseline, _ = client.predict(
        [handle_file(str(f)) for f in files], "Group captioning", "", "", "greedy", new_tokens, 0, api_name="/compare"
    )
    return time.perf_counter() - start, sam, baseline


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--new-tokens", type=int, default=20)
    args = parser.parse_args(argv)
    print(f"embedded default, {len(EXAMPLE)} images, greedy, ≤ {args.new_tokens} tokens per answer, "
          f"median of {args.repeats} requests after one warm-up\n")
    print("| server torch threads | request → both answers, p50 (ms) | p95 (ms) | answer words (SAM / baseline) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as directory:
        for threads in args.threads:
            log = Path(directory) / f"app-{threads}.log"
            with serve_app(log, SAM_TORCH_THREADS=str(threads), SAM_MAX_NEW_TOKENS=str(args.new_tokens), HF_HUB_OFFLINE="1") as app:
                client = Client(app.url, verbose=False)
                request_seconds(client, EXAMPLE, args.new_tokens)
                runs = [request_seconds(client, EXAMPLE, args.new_tokens) for _ in range(args.repeats)]
            times = sorted(seconds for seconds, _, _ in runs)
            p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
            _, sam, baseline = runs[-1]
            print(f"| {threads} | {statistics.median(times) * 1e3:.0f} | {p95 * 1e3:.0f} "
                  f"| {len(sam.split())} / {len(baseline.split())} |")


if __name__ == "__main__":
    main()
