import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
