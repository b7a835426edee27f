import dataclasses
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

from app.service import Decoding, InputError, SamService
from app.settings import AppSettings


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


def test_prompt_problems_get_clear_messages_and_odd_text_is_answered(settings, tmp_path):
    from app.ui import build_demo

    service = SamService(settings)
    compare = next(f.fn for f in build_demo(service).fns.values() if f.api_name == "compare")
    files = [str(p) for p in sorted(Path("tests/data/minilink-3").glob("*.png"))]

    def refused(message, task="Free question", question="", captions=""):
        with pytest.raises(gr.Error, match=message):
            compare(files, task, question, captions, "greedy", 8, 0)

    refused(r"refers to \{image#4\} but there are only 3 images", question="is {image#4} like {image#1}?")
    refused(r"refers to \{image#7\}", task="Storytelling", captions="bobo jumps .\nbobo sees {image#7} .")
    refused("The prompt is too long: .* tokens, at most", question="red " * 1000)
    refused("Storytelling with 3 images needs 2 captions .* got 3", task="Storytelling", captions="a .\nb .\nc .")
    refused("Storytelling with 3 images needs 2 captions .* got 1", task="Storytelling", captions="a .")
    refused("Write a question", question="\x00\u200b\x1b \t")
    refused("Unknown task", task="Poetry")
    sam, baseline, _ = compare(files, "Free question", "what\x1b[31m is \u202eshared 🙂 日本語?\x00", "", "greedy", 8, 0)
    assert sam and baseline


def test_very_large_legitimate_images_are_downscaled_not_refused(settings, tmp_path):
    path = tmp_path / "panorama.png"
    Image.new("RGB", (6000, 4000), "teal").save(path)
    service = SamService(dataclasses.replace(settings, max_pixels=1024 * 1024))
    (image,) = service.images([str(path)])
    assert image.width * image.height <= 1024 * 1024 and image.size == (1254, 836)


def test_public_text_hides_server_paths_and_secrets(monkeypatch):
    from app.privacy import public_text

    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnop")
    text = 'File "/srv/app/sam_core/loading.py", line 3: token hf_abcdefghijklmnop; see https://huggingface.co/a/b or a/b'
    assert public_text(text) == 'File "loading.py", line 3: token ***; see https://huggingface.co/a/b or a/b'


def test_the_explain_api_also_needs_exact_captions(settings):
    from app.ui import build_demo

    explain = next(f.fn for f in build_demo(SamService(settings)).fns.values() if f.api_name == "explain")
    files = [str(p) for p in sorted(Path("tests/data/minilink-3").glob("*.png"))]
    with pytest.raises(gr.Error, match="needs 2 captions .* got 3"):
        explain(files, "Storytelling", "", "a .\nb .\nc .", 4, 0)


def test_random_minilink_sets_come_with_decoys_like_the_embedded_models_training():
    from app.service import random_minilink_group

    images, prompt, reference = random_minilink_group(3)
    again, _, _ = random_minilink_group(3)
    plain, _, plain_reference = random_minilink_group(3, decoys=False)
    assert len(images) == 4 and prompt.startswith("Sum up the common factor in these four pictures")
    assert [i.tobytes() for i in images] == [i.tobytes() for i in again]  # a seed gives the same set
    assert reference == plain_reference and [i.tobytes() for i in images] != [i.tobytes() for i in plain]
