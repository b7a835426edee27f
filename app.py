"""SAM studio: `python app.py` serves the app on the embedded default (also what a Hugging Face Space runs).

Configuration by environment variables (see app/settings.py and the README): SAM_MODEL, SAM_ADAPTER,
SAM_QUANTIZATION, SAM_DEVICE, SAM_MAX_IMAGES, SAM_MAX_PIXELS, SAM_MAX_NEW_TOKENS, SAM_MAX_PROMPT_TOKENS,
SAM_REQUEST_TIMEOUT, SAM_CONCURRENCY, SAM_QUEUE_SIZE, SAM_HOST (127.0.0.1 unless on a Space), SAM_PORT,
SAM_TORCH_THREADS, SAM_CACHE_TTL. What a visitor can and cannot do, and what is logged: docs/security.md.
"""

import gc
import logging
import sys
import warnings

gc.disable()  # no cyclic collection while torch, transformers and gradio load; main() turns it back on (sam_core.startup)

import torch
from PIL import Image
from starlette.middleware import Middleware

from app.privacy import redact_output
from app.refusals import UploadLimit
from app.service import SamService
from app.settings import MAX_FILE_BYTES, AppSettings
from app.ui import CSS, build_demo


def main() -> None:
    redact_output()
    log = logging.getLogger("sam_studio")  # refusals (one line each) and unexpected failures (with their traceback)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    # load_image refuses such files itself; Pillow's warning would only add its own file path to the log.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    settings = AppSettings.from_env()
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    service = SamService(settings)
    demo = build_demo(service)
    demo.queue(default_concurrency_limit=settings.concurrency, max_size=settings.queue_size)
    gc.freeze()  # start-up's objects stay out of every later collection (see sam_core.startup)
    gc.enable()
    demo.launch(server_name=settings.host, server_port=settings.port, css=CSS, max_file_size=MAX_FILE_BYTES,
                app_kwargs={"middleware": [Middleware(UploadLimit, max_bytes=settings.max_upload_bytes)]})


if __name__ == "__main__":
    main()
