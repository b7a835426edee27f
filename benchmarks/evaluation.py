"""Dataset evaluation through the real app (`python app.py`, embedded default) and gradio_client: how long
`--samples` MiniLINK samples take through /evaluate (everything the tab does: both modes, metrics, per-sample
diagnostics, views, files), next to the bare command-line loop in this process; then how long someone else's
/compare waits while an evaluation runs, next to the same request on an idle app, and how fast Cancel ends the run.

    python -m benchmarks.evaluation [--samples 100] [--compares 10] [--threads 1]
"""

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch
from gradio_client import Client, handle_file

from sam_core.evaluate import MODES, predict, summarise
from sam_core.evaluation_run import MiniLinkSource, run_evaluation
from sam_core.loading import load_sam

from .serve import REPO_ROOT, serve_app

EXAMPLE = sorted((REPO_ROOT / "examples" / "group-sam-binds").glob("*.png"))
TASKS = ["group", "story", "question"]


def evaluate(client: Client, samples: int, tokens: int = 24) -> tuple[float, dict]:
    start = time.perf_counter()
    result, _ = client.predict("minilink", samples, 3, 5, 0, True, 2, TASKS, None, None, tokens, api_name="/evaluate")
    return time.perf_counter() - start, json.loads(result)


def compare_seconds(client: Client, tokens: int) -> float:
    start = time.perf_counter()
    client.predict([handle_file(str(f)) for f in EXAMPLE], "Group captioning", "", "", "greedy", tokens, 0, api_name="/compare")
    return time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def command_line_seconds(samples: int, threads: int) -> float:
    """The command line's own loop (predict + summarise, no METEOR) on the same samples, in this process."""
    torch.set_num_threads(threads)
    loaded = load_sam()
    dataset = MiniLinkSource(size=samples).open()
    start = time.perf_counter()
    summarise(predict(loaded, dataset, MODES, 16, "greedy", max_new_tokens=24), meteor=False)
    return time.perf_counter() - start


def cancel_seconds_in_process(threads: int, repeats: int = 5) -> list[tuple[float, float]]:
    """Per run cancelled mid-batch: seconds from setting the cancel event to the end of answering, and to
    run_evaluation returning (the finished samples scored)."""
    torch.set_num_threads(threads)
    loaded, latencies = load_sam(), []
    for repeat in range(repeats):
        cancel, started, outcomes = threading.Event(), threading.Event(), []
        dataset = MiniLinkSource(size=500, seed=100 + repeat).open()
        worker = threading.Thread(target=lambda: outcomes.append(run_evaluation(
            dataset, loaded=loaded, cancel=cancel, progress=lambda done, total: started.set())))
        began = time.monotonic()
        worker.start()
        started.wait()
        time.sleep(0.05 * (repeat + 1))  # somewhere in a later batch
        cancel.set()
        cancelled_at = time.monotonic()
        worker.join()
        latencies.append((began + outcomes[0].seconds - cancelled_at, time.monotonic() - cancelled_at))
    return latencies


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--compares", type=int, default=10, help="/compare requests idle and during an evaluation")
    parser.add_argument("--compare-tokens", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the app (its default for the embedded model)")
    args = parser.parse_args(argv)
    print(f"embedded default, MiniLINK test split, version 2 (N 3–5, all tasks), greedy, ≤ 24 new tokens per answer, "
          f"{torch.get_num_threads()} CPU threads available, app torch threads {args.threads}\n")
    with tempfile.TemporaryDirectory() as directory:
        with serve_app(Path(directory) / "app.log", SAM_TORCH_THREADS=str(args.threads), HF_HUB_OFFLINE="1") as app:
            evaluator, other = Client(app.url, verbose=False), Client(app.url, verbose=False)
            evaluate(evaluator, 4)  # warm-up
            wall, result = evaluate(evaluator, args.samples)
            bare = command_line_seconds(args.samples, args.threads)
            print("| path | samples | wall time (s) | of which the run (s) | samples / s |")
            print("|---|---|---|---|---|")
            print(f"| /evaluate through gradio_client (run, metrics, views, files) | {args.samples} | {wall:.1f} "
                  f"| {result['seconds']:.1f} | {args.samples / wall:.1f} |")
            print(f"| command-line loop in-process (predict + summarise) | {args.samples} | {bare:.1f} | {bare:.1f} "
                  f"| {args.samples / bare:.1f} |")

            compare_seconds(other, args.compare_tokens)  # warm-up
            idle = [compare_seconds(other, args.compare_tokens) for _ in range(args.compares)]
            job = evaluator.submit("minilink", 500, 3, 5, 0, True, 2, TASKS, None, None, 24, api_name="/evaluate")
            while job.status().code.name not in ("PROCESSING", "PROGRESS"):
                time.sleep(0.05)
            busy = []
            for _ in range(args.compares):
                busy.append(compare_seconds(other, args.compare_tokens))
                if job.done():
                    break
            overlapped = not job.done()
            cancelled_at = time.perf_counter()
            evaluator.predict(api_name="/cancel_evaluation")
            final = json.loads(job.result(timeout=120)[0])
            cancel_seconds = time.perf_counter() - cancelled_at
            done = final["samples_done"]
            batch = final["seconds"] / max(1, -(-done // 16))
    print(f"\n/compare ({len(EXAMPLE)} images, ≤ {args.compare_tokens} tokens per answer) from a second client; "
          f"'during' = while a 500-sample evaluation runs (it ran throughout: {overlapped})\n")
    print("| /compare | requests | p50 (s) | p95 (s) | max (s) |")
    print("|---|---|---|---|---|")
    for label, values in (("idle app", idle), ("during an evaluation", busy)):
        print(f"| {label} | {len(values)} | {statistics.median(values):.2f} | {percentile(values, 0.95):.2f} | {max(values):.2f} |")
    in_process = cancel_seconds_in_process(args.threads)
    stopped, returned = [a for a, _ in in_process], [b for _, b in in_process]
    print(f"\nCancel: the 500-sample run above stopped after {done} samples ({final['status']}; {batch:.2f} s of answering "
          f"per batch of 16); through the app, Cancel → /evaluate's answer (metrics, views, figures and files of those "
          f"samples included): {cancel_seconds:.2f} s.\n")
    print("| cancelled mid-batch, in process | runs | median (s) | max (s) |")
    print("|---|---|---|---|")
    print(f"| Cancel → answering stops | {len(stopped)} | {statistics.median(stopped):.3f} | {max(stopped):.3f} |")
    print(f"| Cancel → run_evaluation returns (finished samples scored) | {len(returned)} | {statistics.median(returned):.2f} "
          f"| {max(returned):.2f} |")

if __name__ == "__main__":
    main()
