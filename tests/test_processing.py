import re
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

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



def png_with_header(width: int, height: int, bit_depth: int = 8, colour_type: int = 2, rows=None, interlace: int = 0) -> bytes:
    """A PNG whose IHDR declares any size; `rows`: the raw scanlines (filter byte + pixels), bytes or an iterable of
    bytes (compressed as they come, so a huge image's rows need not be held at once)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    pieces = [rows or b""] if rows is None or isinstance(rows, bytes) else rows
    data = b"".join(compressor.compress(piece) for piece in pieces) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, interlace)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


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


MALFORMED = sorted(Path(__file__).parent.joinpath("data", "malformed").iterdir())


@pytest.mark.parametrize("path", MALFORMED, ids=[path.name for path in MALFORMED])
def test_malformed_files_of_every_format_are_refused_by_name(path):
    """Fuzzed TIFF, QOI, DDS, PPM, SGI, IM, AVIF and JPEG 2000 files make Pillow raise ValueError, IndexError,
    NotImplementedError, RuntimeError or SyntaxError (the file name says which): each is the file's own problem."""
    with pytest.raises(ImageLoadError, match=rf"{re.escape(path.name)}: not a readable image"):
        load_image(path)


def test_a_png_text_chunk_too_large_to_decompress_is_refused_by_name(tmp_path):
    image = Image.new("RGB", (4, 4))
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (PngImagePlugin.MAX_TEXT_CHUNK + 1), zip=True)
    with pytest.raises(ImageLoadError, match=r"note.png: not a readable image \(ValueError\)"):
        load_image(saved(image, "PNG", tmp_path, pnginfo=info).rename(tmp_path / "note.png"))


def adam7_rows(width: int, height: int, bytes_per_pixel: int) -> bytes:
    """The zero scanlines of an interlaced PNG, pass by pass (each non-empty pass: rows of a filter byte + pixels)."""
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
    rows = b""
    for x, y, dx, dy in passes:
        columns = len(range(x, width, dx))
        if columns:
            rows += bytes(1 + columns * bytes_per_pixel) * len(range(y, height, dy))
    return rows


@pytest.mark.parametrize("interlace", [0, 1], ids=["plain", "interlaced"])
@pytest.mark.parametrize("width, height", [(1, 1), (5, 3), (13, 9)])
def test_a_png_whose_data_ends_early_is_refused_as_truncated(tmp_path, interlace, width, height):
    """Pillow fills the missing rows of a PNG whose compressed data is complete but short with zeros: a blank
    image the user never sent."""
    rows = adam7_rows(width, height, 3) if interlace else bytes(1 + 3 * width) * height
    whole, short = tmp_path / "whole.png", tmp_path / "short.png"
    whole.write_bytes(png_with_header(width, height, rows=rows, interlace=interlace))
    short.write_bytes(png_with_header(width, height, rows=rows[:-1], interlace=interlace))
    assert load_image(whole).size == (width, height)
    with pytest.raises(ImageLoadError, match=r"short.png: not a readable image \(truncated"):
        load_image(short)


def test_files_pillow_writes_are_complete(tmp_path):
    for mode in ("1", "L", "P", "LA", "RGB", "RGBA", "I;16"):
        path = saved(Image.new(mode, (11, 7)), "PNG", tmp_path)
        assert load_image(path).size == (11, 7), mode


def test_sixteen_bit_pixels_become_eight_bits_without_a_float_copy():
    """A 16-bit image converts in integers: its float64 copy would be 8 bytes a pixel, 715 MB at 9459×9459."""
    image = Image.fromarray(np.full((1000, 2000), 40000, dtype=np.uint16))
    tracemalloc.start()
    converted = load_image(image)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert converted.getpixel((0, 0)) == (155, 155, 155)  # 40000 // 257
    assert peak < 6 * image.width * image.height, peak  # the pixels' bytes, their array, 8-bit copies: no 8 bytes a pixel


def test_text_naming_control_tokens_stays_text(processor, three_images):
    """`<image>`, `</s>`, `[SEP]` ... typed in a prompt or an answer are characters for both tokenizers, never the
    image placeholder, the end of the sequence or the Q-Former's separator."""
    typed = "is <image> </s> <s> <pad> <unk> [SEP] [CLS] [PAD] shared ?"
    batch = processor(three_images, typed)
    llm = processor.tokenizer
    placeholders = 3 * processor.num_query_tokens
    assert (batch["input_ids"][0] == processor.image_token_id).sum() == placeholders
    prompt = batch["input_ids"][0, placeholders:].tolist()
    assert prompt[0] == llm.bos_token_id and not {llm.eos_token_id, llm.pad_token_id, llm.bos_token_id} & set(prompt[1:])
    qformer = processor.qformer_tokenizer
    inner = batch["qformer_input_ids"][0, 1:-1].tolist()
    assert not {qformer.sep_token_id, qformer.cls_token_id, qformer.pad_token_id} & set(inner)
    training = processor(three_images, "what ?", answers=typed)
    assert (training["labels"][0] == llm.eos_token_id).sum() == 1  # only the answer's own end


def test_the_command_line_reads_control_tokens_as_text(capsys):
    from sam_core.cli import main

    paths = [str(p) for p in sorted(Path("tests/data/minilink-3").glob("*.png"))]
    assert main(["generate", "--images", *paths, "--prompt", "what is <image> </s> shared ?", "--max-new-tokens", "4"]) == 0
    assert "SAM:" in capsys.readouterr().out


def test_echoed_markers_are_shortened():
    with pytest.raises(PromptError) as refused:
        check_image_markers("{image#" + "9" * 100_000 + "}", 2)
    assert len(str(refused.value)) < 120 and "{image#99999999…}" in str(refused.value)
