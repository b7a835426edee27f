"""Property-based tests: the prompt builders and the image loader never fail in an unplanned way."""

import io
import unicodedata

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from sam_core import group_caption_prompt, load_image, question_prompt, storytelling_prompt
from sam_core.processing import ImageLoadError, PromptError, check_image_markers


@given(st.lists(st.text(max_size=40), max_size=8))
def test_storytelling_prompt_has_one_marker_per_image_and_ends_open(captions):
    prompt = storytelling_prompt(captions)
    count = len(captions) + 1
    assert prompt.endswith(f"{{image#{count}}}Caption#{count}:")
    for index in range(1, count + 1):
        assert f"{{image#{index}}}Caption#{index}:" in prompt


@given(st.integers(min_value=2, max_value=1000))
def test_group_prompt_names_the_count(n):
    prompt = group_caption_prompt(n)
    assert prompt.startswith("Sum up the common factor in these ") and prompt.endswith(" pictures in a single statement.")
    assert group_caption_prompt(1) == "Sum up the picture in a single statement."  # not "these one pictures"


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_are_an_image_or_a_clear_error(tmp_path_factory, payload):
    path = tmp_path_factory.mktemp("fuzz") / "upload.png"
    path.write_bytes(payload)
    try:
        image = load_image(path)
    except ImageLoadError as error:
        assert "upload.png" in str(error)
    else:
        assert image.mode == "RGB"


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "I;16", "I", "F"]),
    st.integers(1, 40),
    st.integers(1, 40),
    st.sampled_from(["PNG", "GIF", "TIFF", "BMP", "WEBP", "JPEG"]),
)
def test_every_mode_and_format_that_saves_loads_as_rgb(mode, width, height, fmt):
    image = Image.fromarray((np.random.default_rng(0).random((height, width)) * 255).astype(np.uint8)).convert(mode)
    buffer = io.BytesIO()
    try:
        image.save(buffer, fmt)
    except (OSError, ValueError, KeyError):
        return  # that format cannot hold that mode: nothing to load
    buffer.seek(0)
    loaded = load_image(Image.open(buffer))
    assert loaded.mode == "RGB" and loaded.size == (width, height)


@given(st.text())
def test_prompt_cleaning_leaves_no_control_characters_and_is_stable(text):
    cleaned = question_prompt(text)
    assert not any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in cleaned)
    assert cleaned == cleaned.strip() and "  " not in cleaned
    assert question_prompt(cleaned) == cleaned
    cleaned.encode("utf-8")  # no lone surrogates left to break a tokenizer or a log


@given(st.text(max_size=60), st.integers(1, 8))
def test_image_markers_are_accepted_or_refused_clearly(text, num_images):
    try:
        check_image_markers(text, num_images)
    except PromptError as error:
        assert "{image#" in str(error) and f"{num_images} image" in str(error)
