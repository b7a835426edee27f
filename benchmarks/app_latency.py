"""App latency through the real app on 127.0.0.1 and gradio_client: a comparison (`/compare`) and an analysis
(`/explain`, every view and the HTML report) of the same request.

Four uploaded images (the first example), group captioning, greedy, at most `--new-tokens` tokens per answer.
The app runs on the embedded default in a child process, once per server thread count; the two endpoints are
called in turn, medians of `--repeats` after a warm-up of each.

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


def compare_seconds(client: Client, files: list, new_tokens: int) -> tuple[float, str, str]:
    start = time.perf_counter()
    sam, baseline, _ = client.predict(
        [handle_file(str(f)) for f in files], "Group captioning", "", "", "greedy", new_tokens, 0, api_name="/compare"
    )
    return time.perf_counter() - start, sam, baseline


def explain_seconds(client: Client, files: list, new_tokens: int) -> float:
    start = time.perf_counter()
    client.predict([handle_file(str(f)) for f in files], "Group captioning", "", "", new_tokens, 0, api_name="/explain")
    return time.perf_counter() - start


def percentile_95(times: list[float]) -> float:
    times = sorted(times)
    return times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--new-tokens", type=int, default=20)
    args = parser.parse_args(argv)
    print(f"embedded default, {len(EXAMPLE)} images, greedy, ≤ {args.new_tokens} tokens per answer, "
          f"median of {args.repeats} requests per endpoint (in turn) after one warm-up each\n")
    print("| server torch threads | /compare p50 (ms) | p95 (ms) | /explain p50 (ms) | p95 (ms) | explain ÷ compare (target ≤ 10×) "
          "| answer words (SAM / baseline) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as directory:
        for threads in args.threads:
            log = Path(directory) / f"app-{threads}.log"
            with serve_app(log, SAM_TORCH_THREADS=str(threads), SAM_MAX_NEW_TOKENS=str(args.new_tokens), HF_HUB_OFFLINE="1") as app:
                client = Client(app.url, verbose=False)
                compare_seconds(client, EXAMPLE, args.new_tokens)
                explain_seconds(client, EXAMPLE, args.new_tokens)
                compares, explains = [], []
                for _ in range(args.repeats):
                    compares.append(compare_seconds(client, EXAMPLE, args.new_tokens))
                    explains.append(explain_seconds(client, EXAMPLE, args.new_tokens))
            compare_times = [seconds for seconds, _, _ in compares]
            compare, explain = statistics.median(compare_times), statistics.median(explains)
            _, sam, baseline = compares[-1]
            print(f"| {threads} | {compare * 1e3:.0f} | {percentile_95(compare_times) * 1e3:.0f} | {explain * 1e3:.0f} "
                  f"| {percentile_95(explains) * 1e3:.0f} | {explain / compare:.1f}× | {len(sam.split())} / {len(baseline.split())} |")


if __name__ == "__main__":
    main()
