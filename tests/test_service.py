import dataclasses

import pytest
from PIL import Image

from app.service import Decoding, InputError, SamService
from app.settings import AppSettings


@pytest.fixture
def settings(monkeypatch):
    for name in ("SAM_MODEL", "SAM_ADAPTER", "SPACES_ZERO_GPU", "SPACE_ID"):
        monkeypatch.delenv(name, raising=False)
    return dataclasses.replace(AppSettings.from_env(), max_images=3, max_pixels=10_000)


def test_large_uploads_are_downscaled_and_limits_enforced(settings, tmp_path):
    service = SamService(settings)
    big = tmp_path / "big.png"
    Image.new("RGB", (400, 300), "red").save(big)
    (image,) = service.images([str(big)])
    assert image.width * image.height <= 10_000 and abs(image.width / image.height - 4 / 3) < 0.05
    with pytest.raises(InputError, match="At most 3 images"):
        service.images([str(big)] * 4)
    with pytest.raises(InputError, match="at least one image"):
        service.images([])
    with pytest.raises(InputError, match="Max new tokens"):
        Decoding(max_new_tokens=10_000).kwargs(settings.max_new_tokens)
    with pytest.raises(InputError, match="Storytelling needs at least two images"):
        service.prompt("Storytelling", 1, "", [])


def test_unloadable_model_falls_back_to_the_embedded_default_with_a_notice(settings):
    service = SamService(dataclasses.replace(settings, model="/nonexistent/model"))
    assert service.info["source"] == "embedded"
    assert "Serving the embedded default" in service.notice


def test_zero_gpu_loads_a_quantised_model_inside_the_first_gpu_call(settings, monkeypatch, tiny_checkpoint, three_images):
    monkeypatch.setenv("SPACES_ZERO_GPU", "1")
    service = SamService(dataclasses.replace(settings, model=str(tiny_checkpoint), quantization="4bit", device="cpu"))
    assert service.loaded is None and service.info["quantization"] == "4bit"
    states = list(service.compare(three_images, "what is shared ?", Decoding(max_new_tokens=3)))
    assert service.loaded is not None and service.loaded.info.quantization == "4bit"
    assert states[-1]["sam"] and states[-1]["baseline"]


def test_torch_threads_default_to_one_for_the_embedded_default_on_a_cpu(monkeypatch):
    for name in ("SAM_MODEL", "SAM_TORCH_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert AppSettings.from_env().torch_threads == 1
    monkeypatch.setenv("SAM_MODEL", "instructblip-vicuna-7b")
    assert AppSettings.from_env().torch_threads is None  # a real model on a CPU: torch's default, one per core
    monkeypatch.setenv("SAM_TORCH_THREADS", "3")
    assert AppSettings.from_env().torch_threads == 3
    monkeypatch.setenv("SAM_TORCH_THREADS", "many")
    with pytest.raises(ValueError, match="SAM_TORCH_THREADS must be a whole number"):
        AppSettings.from_env()
