import dataclasses
import threading
import time
import tracemalloc
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

from app.service import Decoding, InputError, SamService
from app.settings import AppSettings
from benchmarks.load import pixel_bomb
from measure import cost
from test_faults import EXAMPLE, api
from test_processing import png_with_header


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


def test_large_photos_are_decoded_reduced_and_downscaled_and_larger_files_refused(settings, tmp_path):
    service = SamService(dataclasses.replace(settings, max_pixels=1024 * 1024))
    photo, screenshot, huge = tmp_path / "photo.jpg", tmp_path / "screen.png", tmp_path / "huge.png"
    Image.new("RGB", (6000, 4000), "teal").save(photo)  # 24 M pixels: JPEG decodes at 1/4 size
    Image.new("RGB", (5120, 2880), "teal").save(screenshot)  # 14.7 M pixels: under 16 × SAM_MAX_PIXELS
    Image.new("RGB", (6000, 4000), "teal").save(huge)
    for image, size in zip(service.images([str(photo), str(screenshot)]), [(6000, 4000), (5120, 2880)]):
        assert image.width * image.height <= 1024 * 1024 and abs(image.width / image.height - size[0] / size[1]) < 0.01
    with pytest.raises(InputError, match=r"Image 1: huge.png: too large to decode safely \(6000×4000 pixels declared; at most 16,777,216 pixels\)"):
        service.images([str(huge)])


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


def test_random_minilink_sets_are_the_embedded_models_benchmark():
    """A random set is MiniLINK's default version (balanced decoys), the one the embedded model trained on."""
    from app.service import random_minilink_group
    from sam_core.data import MiniLink, MiniLinkConfig

    images, prompt, reference = random_minilink_group(3)
    again, _, _ = random_minilink_group(3)
    assert len(images) == 4 and prompt.startswith("Sum up the common factor in these four pictures")
    assert [i.tobytes() for i in images] == [i.tobytes() for i in again]  # a seed gives the same set
    sample = MiniLink(1003, 1, MiniLinkConfig(min_images=4, max_images=4, tasks=("group",)))[0]  # the default version
    assert reference == sample.output and [i.tobytes() for i in images] == [i.tobytes() for i in sample.images]


@pytest.fixture(scope="module")
def decoding_costs(tmp_path_factory):
    """Measured in one fresh process: refusing PNGs that declare 9459×9459 16-bit pixels, all their rows there
    (180 KB) or not (under 100 bytes), one and eight at once; and the memory still held after decoding three
    16 M-pixel RGBA PNGs (legitimate, downscaled), against the level before the first decode."""
    folder = tmp_path_factory.mktemp("decoding")
    side, row = 9459, bytes(1 + 2 * 9459)
    bombs = [pixel_bomb(folder / f"bomb{i}.png") for i in range(0, 8, 2)]
    for i in range(1, 8, 2):
        bombs.append(folder / f"bomb{i}.png")
        bombs[-1].write_bytes(png_with_header(side, side, bit_depth=16, colour_type=0, rows=row))
    assert bombs[0].stat().st_size < 200_000 and bombs[-1].stat().st_size < 100
    large = folder / "large.png"
    Image.linear_gradient("L").resize((4000, 4000)).convert("RGBA").save(large)
    return cost(f"""
        import dataclasses, threading
        import psutil
        from app.service import InputError, SamService
        from app.settings import AppSettings

        service = SamService(dataclasses.replace(AppSettings.from_env(), max_pixels=1024 * 1024))
        paths = {[str(bomb) for bomb in bombs]!r}
        resident_before_decoding = psutil.Process().memory_info().rss

        def refusal(path, messages):
            try:
                service.images([path])
            except InputError as error:
                messages.append(str(error))

        def refusals(paths):
            messages = []
            threads = [threading.Thread(target=refusal, args=(path, messages)) for path in paths]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return messages

        def held_after_large_images():
            service.images([{str(large)!r}] * 3)
            return (psutil.Process().memory_info().rss - resident_before_decoding) / 2**20

        RUNS = {{"alone": lambda: refusals(paths[:1]), "eight at once": lambda: refusals(paths), "large": held_after_large_images}}
    """)


def test_files_declaring_huge_images_cost_little_alone_and_eight_at_once(decoding_costs):
    """Such a file took 10 s and 1.5 GB to decode (four at once took a 0.8 GB process to 7.3 GB); refused from its
    header it costs nothing, however many arrive at once."""
    for name, count in (("alone", 1), ("eight at once", 8)):
        messages = decoding_costs[name]["result"]
        assert len(messages) == count and all("too large to decode safely (9459×9459 pixels declared" in m for m in messages)
        assert decoding_costs[name]["seconds"] < 0.5 and decoding_costs[name]["peak_mb"] < 100, decoding_costs


def test_memory_freed_after_decoding_large_images_goes_back_to_the_system(decoding_costs):
    """glibc kept the decoding's freed memory (hundreds of MB) for the life of the process; it is handed back."""
    assert decoding_costs["large"]["result"] < 50, decoding_costs["large"]


def test_decoding_runs_at_most_concurrency_at_once_across_requests(settings, monkeypatch, tmp_path):
    """Uploads are decoded outside the model lock; every endpoint shares one bound on how many at once."""
    service = SamService(dataclasses.replace(settings, concurrency=2))
    running, most = [], []

    def slow_load(path, max_pixels=None):
        running.append(path)
        most.append(len(running))
        time.sleep(0.05)
        running.remove(path)
        return Image.new("RGB", (8, 8))

    monkeypatch.setattr("app.service.load_image", slow_load)
    requests = [threading.Thread(target=service.images, args=([f"{i}.png"],)) for i in range(8)]
    for request in requests:
        request.start()
    for request in requests:
        request.join()
    assert len(most) == 8 and max(most) == 2


def test_a_25_mb_prompt_is_refused_by_its_length_before_anything_else(settings):
    """A huge question or caption text costs neither time nor memory: refused by its length, before it is cleaned,
    split or tokenised (which took 36 s and 5 GB inside the model lock)."""
    compare = api(SamService(settings), "compare")
    huge = "why " * (25 * 2**20 // 4)
    for task, question, captions, field in (("Free question", huge, "", "Question"), ("Storytelling", "", huge, "Captions")):
        tracemalloc.start()
        start = time.perf_counter()
        with pytest.raises(gr.Error, match=rf"{field}: too long \(26,214,400 characters, at most 8,192\); shorten it"):
            compare(EXAMPLE, task, question, captions, "greedy", 8, 0)
        seconds, (_, peak) = time.perf_counter() - start, tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert seconds < 0.2 and peak < 50 * 2**20, (task, seconds, peak)


def test_prompts_are_tokenised_outside_the_model_lock(settings, monkeypatch, three_images):
    service = SamService(settings)
    check, lock_held = service.pipeline.check_prompt, []

    def checked(*args, **kwargs):
        lock_held.append(service.lock.locked())
        return check(*args, **kwargs)

    def analysis_started(*args, **kwargs):  # the analysis itself is not what this test is about
        raise InterruptedError

    monkeypatch.setattr(service.pipeline, "check_prompt", checked)
    monkeypatch.setattr("visualization.explain", analysis_started)  # imported by the service on first use
    list(service.compare(three_images, "what is shared ?", Decoding(max_new_tokens=2)))
    with pytest.raises(InterruptedError):
        service.explain(three_images, "what is shared ?", Decoding(max_new_tokens=2))
    assert lock_held == [False, False]


def test_raw_api_values_are_refused_with_the_field_named(settings):
    """What a raw JSON call can send (null, NaN, huge numbers, wrong types) is refused by name, not "Generation failed"."""
    compare = api(SamService(settings), "compare")
    cases = [
        ((EXAMPLE, "Group captioning", "", "", "greedy", float("nan"), 0), "Max new tokens must be a whole number of at least 1; got nan."),
        ((EXAMPLE, "Group captioning", "", "", "greedy", "8", 0), "Max new tokens must be a whole number of at least 1; got '8'."),
        ((EXAMPLE, "Group captioning", "", "", "greedy", 8, 2**64), "Seed must be a whole number from 0 to 18446744073709551615; got 18446744073709551616."),
        ((EXAMPLE, "Group captioning", "", "", "greedy", 8, None), "Seed must be a whole number from 0 to 18446744073709551615; got None."),
        ((EXAMPLE, "Group captioning", "", "", "greedy", 8, 1.5), "Seed must be a whole number from 0 to 18446744073709551615; got 1.5."),
        ((EXAMPLE, "Group captioning", "", "", None, 8, 0), "Decoding preset must be one of greedy, sampling, beam, paper; got None."),
        ((EXAMPLE, "Free question", ["why"], "", "greedy", 8, 0), "Question must be text; got list."),
        ((EXAMPLE, "Storytelling", "", 7, "greedy", 8, 0), "Captions must be text; got int."),
        ((EXAMPLE[0], "Group captioning", "", "", "greedy", 8, 0), "Images must be a list of uploaded files."),
        (([{"meta": {}}], "Group captioning", "", "", "greedy", 8, 0), "Image 1: not an uploaded file."),
        ((EXAMPLE, "x" * 10_000, "", "", "greedy", 8, 0), "Unknown task 'xxxxxxxxxxxxxxxx"),
    ]
    for arguments, message in cases:
        with pytest.raises(gr.Error) as refused:
            compare(*arguments)
        assert message in str(refused.value) and len(str(refused.value)) < 200, (arguments[5:], str(refused.value)[:300])


def test_too_many_images_are_refused_for_their_number_first(settings):
    service = SamService(settings)  # at most 3 images
    for name, decoding in (("compare", ("greedy", 8, 0)), ("explain", (8, 0))):
        with pytest.raises(gr.Error, match="At most 3 images per request; got 50."):
            api(service, name)([EXAMPLE[0]] * 50, "Storytelling", "", "", *decoding)


def test_text_naming_control_tokens_is_answered_as_text(settings):
    """`<image>` or `</s>` typed in a question or a caption are characters, not the image placeholder or the end."""
    compare = api(SamService(settings), "compare")
    for task, question, captions in (
        ("Free question", "is <image> </s> <s> <pad> <unk> [SEP] [CLS] shared ?", ""),
        ("Storytelling", "", "bobo sees <image> .\nbobo sleeps </s> ."),
    ):
        sam, baseline, _ = compare(EXAMPLE, task, question, captions, "greedy", 8, 0)
        assert sam and baseline


def test_a_client_that_leaves_ends_its_answer_before_the_next_request_runs(settings, three_images):
    """Closing a comparison after its first chunk (Gradio does when a client disconnects) stops and joins its
    generation before the model lock is released, and the next seeded sampling gets the answer it gets alone."""
    service = SamService(settings)
    steps = []
    service.pipeline.model.language_model.register_forward_hook(lambda *_: steps.append(time.sleep(0.005)))
    prompt, sampled = "what is shared ?", Decoding("sampling", max_new_tokens=24, temperature=2.0, seed=5)
    alone = list(service.compare(three_images, prompt, sampled))[-1]
    for _ in range(3):
        left = service.compare(three_images, prompt, sampled)
        next(left)
        left.close()
        assert not service.lock.locked()
        stopped_at = len(steps)
        time.sleep(0.1)
        assert len(steps) == stopped_at  # nothing of the closed request still generating
        again = list(service.compare(three_images, prompt, sampled))[-1]
        assert (again["sam"], again["baseline"]) == (alone["sam"], alone["baseline"])
