import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from sam_core import group_caption_prompt, load_image, question_prompt, storytelling_prompt
from sam_core.processing import ImageLoadError, PromptError, check_image_markers


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



def png_with_header(width: int, height: int, bit_depth: int = 8, colour_type: int = 2, rows: bytes | None = None) -> bytes:
    """A PNG whose IHDR declares any size; `rows`: the raw scanlines (filter byte + pixels), if any."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows or b"")) + chunk(b"IEND", b"")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns, load_image refuses
@pytest.mark.parametrize("side", [100_000, 10_000], ids=["beyond-twice-the-limit", "beyond-the-limit"])
def test_decompression_bombs_are_refused_before_decoding(tmp_path, side):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_with_header(side, side))
    assert path.stat().st_size < 100
    with pytest.raises(ImageLoadError, match="bomb.png: too large to decode safely"):
        load_image(path)


def test_sixteen_bit_rgb_png_loads_as_rgb(tmp_path):
    pixel = struct.pack(">HHH", 65535, 32768, 0)
    path = tmp_path / "deep.png"
    path.write_bytes(png_with_header(2, 2, bit_depth=16, colour_type=2, rows=(b"\x00" + pixel * 2) * 2))
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (2, 2)
    assert image.getpixel((1, 1)) == pytest.approx((255, 128, 0), abs=1)


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (6, 6), colour) for colour in ("red", "lime", "blue")]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert load_image(path).getpixel((3, 3)) == (255, 0, 0)


@pytest.mark.parametrize(
    "image, fmt",
    [
        (Image.new("CMYK", (8, 6), (0, 255, 255, 0)), "JPEG"),
        (Image.new("I;16", (8, 6), 40000), "PNG"),
        (Image.new("LA", (8, 6), (10, 128)), "PNG"),
        (Image.new("P", (8, 6), 3), "PNG"),
    ],
    ids=["cmyk-jpeg", "16bit-gray-png", "gray-alpha-png", "palette-png"],
)
def test_files_of_every_mode_load_as_rgb(tmp_path, image, fmt):
    loaded = load_image(saved(image, fmt, tmp_path))
    assert loaded.mode == "RGB" and loaded.size == (8, 6)


def test_prompts_are_cleaned_of_control_and_format_characters():
    assert question_prompt("  what\x00 is\x1b[31m\u202e shared\u200b?\n\tnow ") == "what is[31m shared? now"
    assert question_prompt("Café ＋ 日本語 🙂") == "Café ＋ 日本語 🙂"
    assert storytelling_prompt(["Bobo\x07 jumps."]).endswith("{image#1}Caption#1:Bobo jumps.{image#2}Caption#2:")


def test_image_markers_must_name_one_of_the_images():
    check_image_markers("compare {image#1} with {image#3}", 3)
    with pytest.raises(PromptError, match=r"refers to \{image#4\} but there are only 3 images"):
        check_image_markers("compare {image#1} with {image#4}", 3)
    with pytest.raises(PromptError, match=r"\{image#0\} but there is only 1 image"):
        check_image_markers("{image#0}", 1)
    with pytest.raises(PromptError, match="only 2 images"):
        check_image_markers("{image#" + "9" * 5000 + "}", 2)


def test_pipeline_refuses_prompts_that_do_not_fit(processor, make_model, three_images):
    from sam_core.generation import SamPipeline
    from sam_core.loading import LoadedSam

    pipeline = SamPipeline(LoadedSam(make_model(), processor, None))
    pipeline.check_prompt("what is shared ?", 3, 8)
    with pytest.raises(PromptError, match="the prompt is too long: .* tokens, at most 20 with 3 images"):
        pipeline.check_prompt("red " * 50, 3, 8, limit=20)
    positions = pipeline.model.config.text_config.max_position_embeddings
    with pytest.raises(PromptError, match="the prompt is too long"):
        pipeline.check_prompt("red " * positions, 3, 8)
    with pytest.raises(PromptError, match="do not fit this model's"):
        pipeline.check_prompt("what ?", 3, positions)
    with pytest.raises(PromptError, match=r"\{image#5\}"):
        pipeline.check_prompt("{image#5} what ?", 3, 8)
