"""Load test: many concurrent users against the app (`python app.py`) on 127.0.0.1, some of them hostile.

A handful of distinct inputs (the example sets, group captioning and storytelling, greedy and seeded sampling)
is answered once sequentially for reference; then `--clients` threads, each with its own Client, send
`--requests` /compare calls in all, cycling over the inputs, mixed (in a fixed random order) with
`--disconnects` browser-like requests that stream a long seeded sampling comparison and cancel it and leave after
its first chunk, `--bombs` uploads of a 180 KB PNG declaring 9459×9459 16-bit pixels, and `--large` requests
whose first image is a legitimate 16 M-pixel PNG (decoded, then downscaled). Every answer must equal the
reference for its input (nothing lost, nothing mixed up between users, whoever left before) or be a clear "queue
is full, try again" (busy); every bomb must be refused as too large. Prints a markdown table with latency
percentiles, the app process's resident memory before → peak → after, and the files in its temporary folders.

    python -m benchmarks.load --requests 200 --clients 8 --disconnects 20 --bombs 20 --large 10 [--max-new-tokens 8]
    python -m benchmarks.load --url http://127.0.0.1:7860/ --pid PID [--temp-dir DIR ...]

Without --url the app is started here (with the SAM_* settings of this environment and temporary folders of its
own, GRADIO_TEMP_DIR and TMPDIR, that are counted) and stopped afterwards.
"""

import argparse
import json
import random
import statistics
import struct
import sys
import tempfile
import threading
import time
import uuid
import zlib
from dataclasses import astuple, dataclass, field
from pathlib import Path

import httpx
import psutil
from gradio_client import Client, handle_file
from PIL import Image
from gradio_client.exceptions import AppError
from gradio_client.utils import QueueError

from .serve import REPO_ROOT, serve_app

EXAMPLES_DIR = REPO_ROOT / "examples"
BOMB_SIDE = 9459  # 89.5 M pixels: just under Pillow's own limit, so only the app's header check refuses it


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


def pixel_bomb(path: Path, side: int = BOMB_SIDE) -> Path:
    """A complete 16-bit grey PNG of side × side zero pixels: ~180 KB on disk, 179 MB of rows, more as decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor, row = zlib.compressobj(9), bytes(1 + 2 * side)  # a filter byte and `side` 2-byte pixels
    rows = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    return path


def large_image(path: Path) -> Path:
    """A 4000×4000 RGBA gradient PNG: 16 M pixels (just under the decode limit at the default SAM_MAX_PIXELS), a
    small file."""
    Image.linear_gradient("L").resize((4000, 4000)).convert("RGBA").save(path)
    return path


def is_busy(error: Exception) -> bool:
    """Gradio's answer when the queue (SAM_QUEUE_SIZE) is full: "Queue is full! Please try again."."""
    return isinstance(error, QueueError) or "queue is full" in str(error).lower()


@dataclass
class LoadResult:
    requests: int
    clients: int
    disconnects: int = 0  # requests that left after their first streamed chunk
    bombs: int = 0
    bombs_refused: int = 0
    large: int = 0  # of the requests, those with a 16 M-pixel upload
    ok: int = 0
    busy: int = 0
    wrong: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, answered requests (ok or wrong)
    rss_mb: tuple | None = None  # (before, peak, after) for the app's process
    temp_files: tuple | None = None  # (before, after) in the app's temporary folders
    problems: list[str] = field(default_factory=list)  # the first few wrong answers and failures, for the report

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[int(q) - 1] if len(self.latencies) > 1 else self.latencies[0]

    def markdown(self) -> str:
        rss = "n/a" if self.rss_mb is None else " → ".join("?" if mb is None else f"{mb:.0f}" for mb in self.rss_mb)
        files = "n/a" if self.temp_files is None else f"{self.temp_files[0]} → {self.temp_files[1]}"
        return "\n".join([
            "| requests (16 MP uploads) | clients | disconnects | bombs refused | ok | busy | wrong | failed | p50 latency (s) | "
            "p95 latency (s) | app RSS before → peak → after (MB) | temp files before → after |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
            f"| {self.requests} ({self.large}) | {self.clients} | {self.disconnects} | {self.bombs_refused} / {self.bombs} | {self.ok} | "
            f"{self.busy} | {self.wrong} | {self.failed} | {self.percentile(50):.2f} | {self.percentile(95):.2f} | {rss} | "
            f"{files} |",
        ])


class ProcessMemory:
    """The resident memory of the app's process, and its peak from `start()` on (Linux's VmHWM, reset through
    /proc/PID/clear_refs; elsewhere the largest value sampled every 50 ms)."""

    def __init__(self, pid: int | None):
        self.pid, self.sampled, self.sampling = pid, 0.0, None

    def now(self) -> float | None:
        return None if self.pid is None else psutil.Process(self.pid).memory_info().rss / 2**20

    def start(self) -> None:
        if self.pid is None:
            return
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            self.sampling = threading.Event()
            threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self.sampling.is_set():
            self.sampled = max(self.sampled, self.now())
            time.sleep(0.05)

    def peak(self) -> float | None:
        if self.pid is None:
            return None
        if self.sampling is not None:
            self.sampling.set()
            return self.sampled
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return None


def count_files(folders: list[Path]) -> int:
    return sum(1 for folder in folders for path in Path(folder).rglob("*") if path.is_file())


def answer(client: Client, case: Case, max_new_tokens: int) -> tuple[str, str]:
    sam, baseline, _ = client.predict(*case.arguments(max_new_tokens), api_name="/compare")
    return sam, baseline


def leave_after_first_chunk(url: str, case: Case, max_new_tokens: int) -> bool:
    """What a visitor who gives up mid-answer does in a browser: upload the images, join the queue for the page's
    streaming comparison (a long seeded sampling one), and at its first chunk cancel it (the page's stop, which is
    also `gradio_client`'s `Job.cancel`) and drop the connection. True if it left while the answer was being
    generated."""
    with httpx.Client(base_url=url, timeout=120) as http:
        event = next(d for d in http.get("config").json()["dependencies"] if d.get("api_name") == "stream_answers")
        captions = case.captions.splitlines() + [""] * len(event["inputs"])
        uploaded = []
        for path in case.images:
            with open(path, "rb") as file:
                uploaded.append(http.post("gradio_api/upload", files={"files": file}).json()[0])
        gallery = [{"image": {"path": path, "meta": {"_type": "gradio.FileData"}}, "caption": None} for path in uploaded]
        data = [gallery, case.task, "", *captions[: len(event["inputs"]) - 8], "sampling", max_new_tokens, 2.0, 1.0, case.seed]
        session = uuid.uuid4().hex
        joined = http.post("gradio_api/queue/join", json={"data": data, "fn_index": event["id"], "session_hash": session})
        with http.stream("GET", "gradio_api/queue/data", params={"session_hash": session}) as messages:
            for line in messages.iter_lines():
                if '"process_generating"' in line:
                    cancel = {"session_hash": session, "fn_index": event["id"], "event_id": joined.json()["event_id"]}
                    http.post("gradio_api/cancel", json=cancel)
                    return True
                if '"process_completed"' in line:
                    return False
    return False


def run_load(url: str, cases: list[Case], requests: int, clients: int, max_new_tokens: int = 8, pid: int | None = None,
             disconnects: int = 0, bombs: int = 0, large: int = 0, temp_dirs: list[Path] = (),
             disconnect_tokens: int = 64) -> LoadResult:
    """Reference answers one by one, then `requests` calls (`large` of them with a 16 M-pixel first image),
    `disconnects` abandoned streams and `bombs` pixel-bomb uploads from `clients` concurrent clients; `pid`: the
    app's process, for its memory, and `temp_dirs`: its temporary folders (both measured after the reference pass,
    so the model and caches are warm)."""
    with tempfile.TemporaryDirectory() as folder:
        bomb = pixel_bomb(Path(folder) / "bomb.png") if bombs else None
        big = Case((str(large_image(Path(folder) / "large.png")), *cases[0].images[1:]), *astuple(cases[0])[1:]) if large else None
        reference_client = Client(url, verbose=False)
        reference = {case: answer(reference_client, case, max_new_tokens) for case in cases + ([big] if big else [])}
        memory = ProcessMemory(pid)
        result = LoadResult(requests, clients, bombs=bombs, large=large, temp_files=(count_files(temp_dirs), None) if temp_dirs else None)
        rss_before = memory.now()
        memory.start()
        schedule = ["answer"] * (requests - large) + ["large"] * large + ["leave"] * disconnects + ["bomb"] * bombs
        random.Random(0).shuffle(schedule)
        tickets, lock = iter(enumerate(schedule)), threading.Lock()

        def user():
            client = Client(url, verbose=False)
            while True:
                with lock:
                    ticket = next(tickets, None)
                if ticket is None:
                    return
                index, kind = ticket
                case = big if kind == "large" else cases[index % len(cases)]
                start = time.perf_counter()
                try:
                    if kind == "leave":
                        left = leave_after_first_chunk(url, case, disconnect_tokens)
                        with lock:
                            result.disconnects += left
                        continue
                    if kind == "bomb":
                        client.predict([handle_file(str(bomb))], "Group captioning", "", "", "greedy", max_new_tokens, 0,
                                       api_name="/compare")
                        raise RuntimeError("a pixel bomb was accepted")
                    got = answer(client, case, max_new_tokens)
                except (AppError, QueueError, httpx.HTTPError, ValueError, RuntimeError) as error:
                    with lock:
                        if is_busy(error):
                            result.busy += 1
                        elif kind == "bomb" and "too large to decode safely" in str(error):
                            result.bombs_refused += 1
                        else:
                            result.failed += 1
                            result.problems.append(f"failed ({kind}): {error.__class__.__name__}: {error}")
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
    time.sleep(1)  # let the app finish what the last disconnected clients left
    result.rss_mb = (rss_before, memory.peak(), memory.now()) if pid is not None else None
    if temp_dirs:
        result.temp_files = (result.temp_files[0], count_files(temp_dirs))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--disconnects", type=int, default=0, help="streams abandoned after their first chunk")
    parser.add_argument("--bombs", type=int, default=0, help="uploads of a PNG declaring 9459×9459 16-bit pixels")
    parser.add_argument("--large", type=int, default=0, help="of the requests, how many upload a 16 M-pixel PNG")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--url", help="an app that is already running (default: start one here)")
    parser.add_argument("--pid", type=int, help="that app's process id, for its memory")
    parser.add_argument("--temp-dir", type=Path, nargs="*", default=[], help="that app's temporary folders, to count files")
    args = parser.parse_args(argv)
    cases = example_cases()
    mix = dict(disconnects=args.disconnects, bombs=args.bombs, large=args.large)
    start = time.perf_counter()
    if args.url:
        result = run_load(args.url, cases, args.requests, args.clients, args.max_new_tokens, args.pid, temp_dirs=args.temp_dir, **mix)
    else:
        with tempfile.TemporaryDirectory() as folder:
            gradio_dir, tmp_dir = Path(folder) / "gradio", Path(folder) / "tmp"
            tmp_dir.mkdir()
            with serve_app(Path(folder) / "app.log", HF_HUB_OFFLINE="1", GRADIO_TEMP_DIR=str(gradio_dir), TMPDIR=str(tmp_dir)) as app:
                result = run_load(app.url, cases, args.requests, args.clients, args.max_new_tokens, app.pid,
                                  temp_dirs=[gradio_dir, tmp_dir], **mix)
    print(f"{len(cases)} distinct inputs, {args.max_new_tokens} max new tokens, {time.perf_counter() - start:.0f} s in all\n")
    print(result.markdown())
    for problem in result.problems[:5]:
        print(problem)
    return 0 if result.wrong == result.failed == 0 and result.bombs_refused == result.bombs else 1


if __name__ == "__main__":
    sys.exit(main())
