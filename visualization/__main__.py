import gc
import sys

from .cli import main

gc.freeze()  # what start-up created stays out of every later collection, the one at exit too (see sam_core.startup)
code = main()
gc.freeze()
sys.exit(code)
