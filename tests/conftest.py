import os
import socket
import subprocess
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx
import pytest
import torch
from PIL import Image

from sam_core import SamProcessor
from sam_core.tiny import save_tiny_checkpoint, tiny_model, tiny_processor


@pytest.fixture(scope="session")
def hf_processor():
    return tiny_processor()


@pytest.fixture(scope="session")
def processor(hf_processor):
    return SamProcessor(hf_processor)


@pytest.fixture
def make_model(hf_processor):
    """Tiny random SAM; `active=True` gives the exchange layers random (non-zero) weights."""

    def make(seed=0, active=False, **overrides):
        model = tiny_model(hf_processor, seed=seed, **overrides)
        if active:
            with torch.no_grad():
                for exchange in (model.guidance.image_to_context, model.guidance.context_to_image):
                    exchange.weight.normal_(std=0.5)
                    exchange.bias.normal_(std=0.1)
                model.guidance.patch_scorer.weight.normal_(std=0.5)
        return model

    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def colour_images(colours, size=(40, 30)):
    return [Image.new("RGB", size, colour) for colour in colours]


@pytest.fixture
def three_images():
    images = colour_images(["red", "navy", "green"])
    images[1].paste((250, 250, 0), (5, 5, 20, 20))
    return images


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_url(tmp_path_factory):
    """The real app, `python app.py` on 127.0.0.1, shared by the end-to-end tests."""
    port = free_port()
    log = (tmp_path_factory.mktemp("app") / "app.log").open("w")
    env = {**os.environ, "SAM_PORT": str(port), "SAM_MAX_IMAGES": "4", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([sys.executable, "app.py"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):
            if server.poll() is not None:
                raise RuntimeError(f"app exited: {Path(log.name).read_text()}")
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            raise RuntimeError("app did not start")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
