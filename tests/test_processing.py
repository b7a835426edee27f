import numpy as np
import pytest
import torch
from PIL import Image

from sam_core import group_caption_prompt, load_image, storytelling_prompt
from sam_core.processing import ImageLoadError


def saved(image: Image.Image, fmt: str, tmp_path, **kwargs):
    path = tmp_path / f"image.{fmt.lower()}"
    image.save(path, fmt, **kwargs)
    return path


@pytest.mark.parametrize(
    "image",
    [
        Image.new("L", (8, 6), 128),
        Image.new("P", (8, 6), 3),
        Image.new("CMYK", (8, 6), (0, 255, 255, 0)),
        Image.new("I;16", (8, 6), 65535),
        Image.new("1", (8, 6), 1),
    ],
    ids=["grayscale", "palette", "cmyk", "16bit", "bilevel"],
)
def test_any_mode_becomes_rgb(image):
    rgb = load_image(image)
    assert rgb.mode == "RGB" and rgb.size == (8, 6)


def test_transparency_is_composited_on_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0, 255))
    rgb = load_image(image)
    assert rgb.getpixel((1, 1)) == (255, 255, 255) and rgb.getpixel((0, 0)) == (255, 0, 0)


def test_exif_rotation_is_applied(tmp_path):
    image = Image.new("RGB", (20, 10), "blue")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert load_image(path).size == (10, 20)


def test_paths_arrays_and_gifs(tmp_path):
    assert load_image(saved(Image.new("RGB", (5, 5), "red"), "PNG", tmp_path)).getpixel((0, 0)) == (255, 0, 0)
    assert load_image(np.zeros((4, 6, 3), dtype=np.uint8)).size == (6, 4)
    assert load_image(np.ones((4, 6), dtype=np.float32)).getpixel((0, 0)) == (255, 255, 255)
    frames = [Image.new("P", (6, 6), i) for i in range(3)]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    assert load_image(gif).mode == "RGB"


@pytest.mark.parametrize(
    "payload, message",
    [(b"this is not an image", "not a readable image"), (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not a readable image")],
    ids=["text", "truncated"],
)
def test_unreadable_files_give_a_clear_error(tmp_path, payload, message):
    path = tmp_path / "fake.png"
    path.write_bytes(payload)
    with pytest.raises(ImageLoadError, match=message):
        load_image(path)


def test_missing_file_and_wrong_type():
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image("/nonexistent/x.png")
    with pytest.raises(ImageLoadError, match="cannot read an image"):
        load_image(42)


def test_prompt_builders_follow_the_paper():
    assert group_caption_prompt(5) == "Sum up the common factor in these five pictures in a single statement."
    assert group_caption_prompt(12) == "Sum up the common factor in these 12 pictures in a single statement."
    story = storytelling_prompt(["Lizzy rode a bike.", "She fell."])
    assert story.endswith("{image#1}Caption#1:Lizzy rode a bike.{image#2}Caption#2:She fell.{image#3}Caption#3:")
    assert story.startswith("With the narratives paired with the initial images")


def test_generation_layout_puts_all_image_tokens_first(processor, three_images):
    batch = processor([three_images, three_images], ["what is shared ?", "what ?"])
    num_tokens = 3 * processor.num_query_tokens
    assert batch["pixel_values"].shape == (2, 3, 3, 32, 32)
    assert torch.all(batch["input_ids"][:, :num_tokens] == processor.image_token_id)
    assert (batch["input_ids"][:, num_tokens:] == processor.image_token_id).sum() == 0
    shorter = batch["attention_mask"][1, num_tokens:]
    assert shorter[0] == 0 and shorter[-1] == 1  # the shorter prompt is left-padded after the image tokens
    assert batch["qformer_input_ids"].shape[0] == 2


def test_processor_rejects_inconsistent_batches(processor, three_images):
    with pytest.raises(ValueError, match="same number of images"):
        processor([three_images, three_images[:2]], ["a", "b"])
    with pytest.raises(ValueError, match="at least one image"):
        processor([], "what ?")
    with pytest.raises(ValueError, match="prompts"):
        processor([three_images, three_images], ["only one"])


def test_long_qformer_instruction_is_truncated_from_the_left(processor, three_images):
    prompt = "red " * 400 + "blue"
    batch = processor(three_images, prompt)
    assert batch["qformer_input_ids"].shape[1] == 128
    tokens = processor.qformer_tokenizer.convert_ids_to_tokens(batch["qformer_input_ids"][0])
    assert tokens[-2] == "blue"

