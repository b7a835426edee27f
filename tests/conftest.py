import dataclasses
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from PIL import Image

from app.settings import AppSettings
from benchmarks.load import serve_app
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


@pytest.fixture
def one_thread():
    """One torch thread, as the app serves the embedded model: with the other core busy (a parallel test run, a
    training job), two threads make these small models many times slower (docs/benchmarks.md)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


FAKE_SECRET = "hf_NotARealTokenButTreatItAsSecret"


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """The real app, `python app.py` on 127.0.0.1, shared by the end-to-end tests: its URL, process id and log.
    HF_TOKEN holds a made-up secret that must never reach a response or the log."""
    log = tmp_path_factory.mktemp("app") / "app.log"
    with serve_app(log, SAM_MAX_IMAGES="4", HF_HUB_OFFLINE="1", HF_TOKEN=FAKE_SECRET) as app:
        yield app


@pytest.fixture(scope="session")
def app_url(app_server):
    return app_server.url


@pytest.fixture
def settings(monkeypatch):
    """App settings from a clean environment, with small limits."""
    for name in ("SAM_MODEL", "SAM_ADAPTER", "SPACES_ZERO_GPU", "SPACE_ID"):
        monkeypatch.delenv(name, raising=False)
    return dataclasses.replace(AppSettings.from_env(), max_images=3, max_pixels=10_000)
