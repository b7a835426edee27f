"""What a call costs, measured in a fresh Python process (tests only): wall seconds and the peak resident memory
above the level reached by imports and set-up. In the test session itself, earlier tests' peaks would hide it."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import json, time
{setup}

def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

costs = {{}}
for name, run in RUNS.items():
    run()  # once, so lazy imports and first-call set-up are not counted
    open("/proc/self/clear_refs", "w").write("5")  # restart the peak from the current level
    before = rss_mb()
    start = time.perf_counter()
    result = run()
    costs[name] = {{"seconds": time.perf_counter() - start, "peak_mb": peak_mb() - before, "result": result}}
print(json.dumps(costs))
"""


def cost(setup: str) -> dict:
    """`setup` defines RUNS, {name: function returning something JSON-serialisable}; each is called once to warm
    up, then measured: {name: {"seconds", "peak_mb" (above the resident memory before the call), "result"}}."""
    script = SCRIPT.format(setup=textwrap.dedent(setup))
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
