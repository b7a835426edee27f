"""Start-up without needless garbage collection.

Importing torch and transformers (and, in the app, gradio) creates some 400k long-lived objects; the cyclic
collector would traverse them again and again while they are created, and once more at exit. Entry points pause it
while importing, then `gc.freeze()` what start-up left, so later collections (and the one at exit) skip it:
measured on the CLI's cold compare, 7.0 s → 4.6 s on this project's 2-core machine (`python -m benchmarks.startup`).
"""

import gc
from contextlib import contextmanager


@contextmanager
def collector_paused():
    """No cyclic collection inside the block (the collector's previous state is restored after it)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
