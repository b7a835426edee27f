"""SAM studio: `python app.py` serves the app on the embedded default (also what a Hugging Face Space runs).

Configuration by environment variables (see app/settings.py and the README): SAM_MODEL, SAM_ADAPTER,
SAM_QUANTIZATION, SAM_DEVICE, SAM_MAX_IMAGES, SAM_MAX_PIXELS, SAM_MAX_NEW_TOKENS, SAM_CONCURRENCY,
SAM_QUEUE_SIZE, SAM_HOST (127.0.0.1 unless on a Space), SAM_PORT, SAM_TORCH_THREADS.
"""

import torch

from app.service import SamService
from app.settings import AppSettings
from app.ui import CSS, build_demo


def main() -> None:
    settings = AppSettings.from_env()
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    demo = build_demo(SamService(settings))
    demo.queue(default_concurrency_limit=settings.concurrency, max_size=settings.queue_size)
    demo.launch(server_name=settings.host, server_port=settings.port, css=CSS, max_file_size="20mb")


if __name__ == "__main__":
    main()
