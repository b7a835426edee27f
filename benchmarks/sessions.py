"""Memory the app keeps for its browser sessions' Explain results, after `--sessions` sessions each explained
one (random 4-image MiniLINK group, 20 new tokens at most).

Two ways of keeping them, each measured in its own child process: every session's whole Report (what a
`gr.State` held before, kept until Gradio's 10 000-session cap) and the app's ReportStore (reports slimmed to
what re-plotting needs, at most MAX_SESSIONS of them, each for TTL_SECONDS). Reported: resident memory before
and after, and the bytes the kept reports take (pickled).

    python -m benchmarks.sessions [--sessions 200]
"""

import argparse
import json
import pickle
import subprocess
import sys

import psutil


def keep(way: str, sessions: int) -> dict:
    import torch

    from app.service import Decoding, SamService, random_minilink_group
    from app.sessions import MAX_SESSIONS, ReportStore
    from app.settings import AppSettings

    torch.set_num_threads(1)
    service = SamService(AppSettings.from_env())
    store, states = ReportStore(), []
    process = psutil.Process()

    def explain_one(index: int):
        images, prompt, _ = random_minilink_group(index)
        return service.explain(images, prompt, Decoding(max_new_tokens=20))

    explain_one(0)  # warm-up: the analysis stack is imported and its caches filled before the baseline reading
    before = process.memory_info().rss
    for index in range(sessions):
        report = explain_one(index + 1)
        if way == "whole reports":
            states.append(report)
        else:
            store.put(report)
    kept = states if way == "whole reports" else [entry.report for entry in store.entries.values()]
    return {"way": way, "kept": len(kept), "cap": None if way == "whole reports" else MAX_SESSIONS, "rss_before_mb": before / 2**20,
            "rss_after_mb": process.memory_info().rss / 2**20, "kept_mb": len(pickle.dumps(kept)) / 2**20}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--way", default=None, help=argparse.SUPPRESS)  # the child's part
    args = parser.parse_args(argv)
    if args.way:
        print(json.dumps(keep(args.way, args.sessions)))
        return
    rows = []
    for way in ("whole reports", "ReportStore"):
        done = subprocess.run([sys.executable, "-m", "benchmarks.sessions", "--sessions", str(args.sessions), "--way", way],
                              capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{args.sessions} sessions, one Explain each (4 MiniLINK images, ≤ 20 new tokens), embedded default\n")
    print("| kept per session | reports kept | RSS before → after (MB) | kept reports, pickled (MB) |")
    print("|---|---|---|---|")
    for row in rows:
        kept = f"{row['kept']} (cap {row['cap']})" if row["cap"] else str(row["kept"])
        print(f"| {row['way']} | {kept} | {row['rss_before_mb']:.0f} → {row['rss_after_mb']:.0f} | {row['kept_mb']:.1f} |")


if __name__ == "__main__":
    main()
