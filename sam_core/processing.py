"""Inputs for SAM: image loading, the paper's prompt templates, and the multi-image processor."""

import re
import struct
import unicodedata
import zlib
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps
from transformers import BatchFeature, InstructBlipProcessor
from transformers.utils import logging as transformers_logging

QFORMER_MAX_TOKENS = 128  # the authors truncate the Q-Former instruction (from the left) at 128 tokens
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
IMAGE_MARKER = re.compile(r"\{image#(\d+)\}")
STORY_QUESTION = "With the narratives paired with the initial images, how would you conclude the story using the last picture?"


@contextmanager
def quiet_transformers(progress: bool = False):
    """Silence transformers' warnings that a SAM or InstructBLIP config is "not its own model type", and its
    progress bars unless asked (they help for a 7B download, not for a 1 MB checkpoint)."""
    verbosity = transformers_logging.get_verbosity()
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    if not progress:
        transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bars:
            transformers_logging.enable_progress_bar()


class ImageLoadError(ValueError):
    """An input that is not a readable image; the message names it and says why."""


class PromptError(ValueError):
    """A prompt the model cannot take; the message says why and what to change."""


def load_image(image, max_pixels: int | None = None) -> Image.Image:
    """A PIL RGB image from a PIL image, a path, or an (H, W[, C]) array; EXIF rotation applied,
    transparency composited on white, any mode (palette, 16-bit, CMYK, grayscale) converted, the first frame
    of an animation.

    A file is refused before its pixels are decoded when decoding it would take more than
    `decode_limit(max_pixels)` pixels (`Image.MAX_IMAGE_PIXELS` without `max_pixels`): a 100-byte PNG can declare
    9459×9459 16-bit pixels. With `max_pixels`, a JPEG is decoded reduced (1/2 to 1/8, Pillow's draft mode) when
    that still gives at least `max_pixels`, and the result is downscaled to at most `max_pixels` (aspect kept).
    Whatever a malformed file makes Pillow raise becomes an ImageLoadError naming the file."""
    if isinstance(image, (str, Path)):
        name = shorten(Path(image).name)
        try:
            with Image.open(image) as opened:
                reduce_on_decode(opened, max_pixels)
                limit = decode_limit(max_pixels)
                if opened.width * opened.height > limit:
                    raise ImageLoadError(too_large_message(name, f"{opened.width}×{opened.height} pixels", limit))
                if opened.format == "PNG" and not png_data_complete(image):
                    raise ImageLoadError(f"{name}: not a readable image (truncated: its data ends before its last row)")
                opened.load()
                return downscale(rgb(opened if opened.format != "GIF" else opened.convert("RGBA")), max_pixels)
        except ImageLoadError:
            raise
        except FileNotFoundError:
            raise ImageLoadError(f"{name}: no such file") from None
        except Image.DecompressionBombError:
            raise ImageLoadError(too_large_message(name, "over twice that many pixels", Image.MAX_IMAGE_PIXELS)) from None
        except MemoryError:
            raise
        except Exception as error:  # Pillow raises OSError, ValueError, SyntaxError, IndexError, ... on malformed files
            raise ImageLoadError(f"{name}: not a readable image ({error.__class__.__name__})") from None
    if isinstance(image, np.ndarray):
        array = image
        if array.dtype != np.uint8:
            array = np.clip(array * (255 if array.max() <= 1.0 else 1), 0, 255).astype(np.uint8)
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
            raise ImageLoadError(f"an array image must be (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")
        image = Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[2] == 1 else array)
    elif not isinstance(image, Image.Image):
        raise ImageLoadError(f"cannot read an image from a {type(image).__name__}")
    return downscale(rgb(image), max_pixels)


DECODE_FACTOR = 16  # a file may decode to at most this many times max_pixels before it is downscaled


def decode_limit(max_pixels: int | None) -> int:
    """The most pixels a file may decode to: DECODE_FACTOR × `max_pixels` (16.8 M at the app's default 1 M),
    never more than Pillow's `Image.MAX_IMAGE_PIXELS`."""
    return Image.MAX_IMAGE_PIXELS if max_pixels is None else min(DECODE_FACTOR * max_pixels, Image.MAX_IMAGE_PIXELS)


def reduce_on_decode(opened: Image.Image, max_pixels: int | None) -> None:
    """Ask a JPEG for its reduced decoding (1/2, 1/4 or 1/8 scale) when that still has at least the size the
    image will be downscaled to; other formats decode at full size."""
    if max_pixels is not None and opened.format == "JPEG" and opened.width * opened.height > max_pixels:
        opened.draft("RGB", downscaled_size(opened.size, max_pixels))


def downscaled_size(size: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    width, height = size
    scale = (max_pixels / (width * height)) ** 0.5
    return max(1, int(width * scale)), max(1, int(height * scale))


def downscale(image: Image.Image, max_pixels: int | None) -> Image.Image:
    """The image, or a copy resized (aspect kept) to at most `max_pixels` pixels."""
    if max_pixels is None or image.width * image.height <= max_pixels:
        return image
    return image.resize(downscaled_size(image.size, max_pixels), Image.BICUBIC)


def rgb(image: Image.Image) -> Image.Image:
    """Upright RGB: EXIF rotation, 16- and 32-bit integer pixels scaled to 8 bits (in integers, no float copy),
    transparency composited on white."""
    if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        pixels = np.array(image)  # (H, W) uint16 or int32
        if pixels.dtype != np.uint16:
            np.clip(pixels, 0, 65535, out=pixels)
        pixels //= 257
        image = Image.fromarray(pixels.astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, "white")
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type: grey, RGB, palette, grey+alpha, RGBA
ADAM7_PASSES = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def png_data_complete(path) -> bool:
    """Whether a PNG's image data inflates to every row its header declares. Pillow fills the missing rows of a
    PNG whose compressed stream ends early with zeros and reports no error: a blank image, not the upload."""
    with open(path, "rb") as file:
        data = file.read()
    width, height, bit_depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if colour_type not in PNG_CHANNELS:
        return True  # Pillow would not have decoded it
    bits = bit_depth * PNG_CHANNELS[colour_type]

    def rows_size(columns: int, rows: int) -> int:  # each row: a filter byte and its pixels
        return 0 if columns <= 0 or rows <= 0 else rows * (1 + (columns * bits + 7) // 8)

    if interlace:
        expected = sum(rows_size(-(-(width - x) // dx), -(-(height - y) // dy)) for x, y, dx, dy in ADAM7_PASSES)
    else:
        expected = rows_size(width, height)
    inflater, inflated, position = zlib.decompressobj(), 0, 8
    while position + 8 <= len(data) and inflated < expected:
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        if kind == b"IDAT":
            chunk = data[position + 8 : position + 8 + length]
            while chunk and inflated < expected:  # inflate in bounded pieces, counting, keeping nothing
                inflated += len(inflater.decompress(chunk, 1 << 20))
                chunk = inflater.unconsumed_tail
        position += 12 + length
    return inflated >= expected


def too_large_message(name: str, declared: str, limit: int) -> str:
    return f"{name}: too large to decode safely ({declared} declared; at most {limit:,} pixels)"


def shorten(text: str, limit: int = 60) -> str:
    """User input echoed in a message: at most `limit` characters (a marker with 100 000 digits is not echoed whole)."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def clean_text(text: str) -> str:
    """NFC-normalised text with control and format characters (NUL, terminal escapes, bidi overrides,
    zero-width marks, lone surrogates) removed and runs of whitespace made one space: tokenizers treat those
    characters inconsistently and logs should not carry them."""
    text = unicodedata.normalize("NFC", text)
    kept = "".join(c if not c.isspace() else " " for c in text if c.isspace() or unicodedata.category(c) not in ("Cc", "Cf", "Cs"))
    return " ".join(kept.split())


def check_image_markers(prompt: str, num_images: int) -> None:
    """`{image#k}` markers must name one of the N images (1-based)."""
    beyond = [digits for digits in IMAGE_MARKER.findall(prompt) if len(digits) > 6 or not 1 <= int(digits) <= num_images]
    if beyond:
        only = "is only 1 image" if num_images == 1 else f"are only {num_images} images"
        marker = shorten(f"{{image#{beyond[0]}", 16) + "}"
        raise PromptError(f"the prompt refers to {marker} but there {only} ({{image#1}} to {{image#{num_images}}})")


def count_word(n: int) -> str:
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)


GROUP_CAPTION = "Sum up the common factor in these {count} pictures in a single statement."  # the paper's instruction


def group_caption_prompt(num_images: int) -> str:
    """The paper's group-captioning instruction (for a single image: sum up that picture)."""
    if num_images == 1:
        return "Sum up the picture in a single statement."
    return GROUP_CAPTION.format(count=count_word(num_images))


def storytelling_prompt(captions: Sequence[str], question: str = STORY_QUESTION) -> str:
    """`question{image#1}Caption#1:c1…{image#N}Caption#N:` with the last caption left to the model:
    pass the N-1 captions of the first images."""
    parts = [question]
    for index, caption in enumerate(list(captions) + [""], start=1):
        parts.append(f"{{image#{index}}}Caption#{index}:{clean_text(caption)}")
    return "".join(parts)


def question_prompt(question: str) -> str:
    return clean_text(question)


class SamProcessor:
    """Builds SAM's inputs for image sets: pixel values (B, N, 3, H, W), the Q-Former instruction ids and
    the LLM ids with N·K image placeholders before the prompt (transformers 5's InstructBLIP layout).

    Wraps (not forks) transformers' `InstructBlipProcessor`, so any InstructBLIP checkpoint's processor loads.
    Text is text: both tokenizers read `<image>`, `</s>`, `[SEP]` ... in a prompt or an answer as characters,
    never as the control tokens they name (`split_special_tokens`); the image placeholders are inserted by id.
    """

    def __init__(self, processor: InstructBlipProcessor):
        self.processor = processor
        self.image_processor = processor.image_processor
        self.tokenizer = processor.tokenizer
        self.qformer_tokenizer = processor.qformer_tokenizer
        for tokenizer in (self.tokenizer, self.qformer_tokenizer):
            tokenizer.split_special_tokens = True  # the default of every call, so no caller can forget it
        self.num_query_tokens = processor.num_query_tokens
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(processor.image_token.content)

    @classmethod
    def from_pretrained(cls, path, **kwargs) -> "SamProcessor":
        with quiet_transformers():
            return cls(InstructBlipProcessor.from_pretrained(path, **kwargs))

    def save_pretrained(self, path) -> None:
        self.processor.save_pretrained(path)

    def pixel_values(self, images: Sequence) -> torch.Tensor:
        """(N, 3, H, W) for one image set."""
        rgb = [load_image(image) for image in images]
        return self.image_processor(rgb, return_tensors="pt")["pixel_values"]

    def __call__(self, images, prompts, answers=None) -> BatchFeature:
        """images: one image set (a list) or a batch of sets with the same N; prompts: str or one per set.
        With `answers`, builds a training batch: [images][prompt][answer</s>] right-padded, with labels on
        the answer only; without, a generation batch with the prompt left-padded."""
        image_sets = [images] if not images or not isinstance(images[0], (list, tuple)) else list(images)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if any(len(image_set) == 0 for image_set in image_sets):
            raise ValueError("Each sample needs at least one image.")
        if len({len(image_set) for image_set in image_sets}) > 1:
            raise ValueError("All image sets in a batch must hold the same number of images.")
        if len(prompts) != len(image_sets):
            raise ValueError(f"Got {len(prompts)} prompts for {len(image_sets)} image sets.")

        pixel_values = torch.stack([self.pixel_values(image_set) for image_set in image_sets])  # (B, N, 3, H, W)
        qformer = self.qformer_tokenizer(
            prompts, padding="longest", truncation=True, max_length=QFORMER_MAX_TOKENS, return_tensors="pt"
        )
        num_placeholders = len(image_sets[0]) * self.num_query_tokens
        prompt_ids = self.tokenizer(prompts, add_special_tokens=True)["input_ids"]
        if answers is None:
            input_ids, attention_mask, labels = self._generation_layout(prompt_ids, num_placeholders)
        else:
            answers = [answers] if isinstance(answers, str) else list(answers)
            answer_ids = self.tokenizer(answers, add_special_tokens=False)["input_ids"]
            input_ids, attention_mask, labels = self._training_layout(prompt_ids, answer_ids, num_placeholders)
        features = {
            "pixel_values": pixel_values,
            "qformer_input_ids": qformer["input_ids"],
            "qformer_attention_mask": qformer["attention_mask"],
            "input_ids": input_ids,
            "attention_mask": attention_mask,
        }
        if labels is not None:
            features["labels"] = labels
        return BatchFeature(features)

    def _generation_layout(self, prompt_ids, num_placeholders):
        """[image × N·K][pad …][<s> prompt]: the authors' layout (visual tokens, then the left-padded prompt)."""
        longest = max(len(ids) for ids in prompt_ids)
        pad = self.tokenizer.pad_token_id
        rows, masks = [], []
        for ids in prompt_ids:
            padding = longest - len(ids)
            rows.append([self.image_token_id] * num_placeholders + [pad] * padding + ids)
            masks.append([1] * num_placeholders + [0] * padding + [1] * len(ids))
        return torch.tensor(rows), torch.tensor(masks), None

    def _training_layout(self, prompt_ids, answer_ids, num_placeholders):
        """[image × N·K][<s> prompt][answer </s>][pad …], labels only on answer and </s>."""
        if len(answer_ids) != len(prompt_ids):
            raise ValueError(f"Got {len(answer_ids)} answers for {len(prompt_ids)} prompts.")
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        sequences = [p + a + [eos] for p, a in zip(prompt_ids, answer_ids)]
        longest = max(len(s) for s in sequences)
        rows, masks, labels = [], [], []
        for prompt, sequence in zip(prompt_ids, sequences):
            padding = longest - len(sequence)
            rows.append([self.image_token_id] * num_placeholders + sequence + [pad] * padding)
            masks.append([1] * (num_placeholders + len(sequence)) + [0] * padding)
            answer_part = sequence[len(prompt):]
            labels.append([-100] * (num_placeholders + len(prompt)) + answer_part + [-100] * padding)
        return torch.tensor(rows), torch.tensor(masks), torch.tensor(labels)

    def decode(self, token_ids) -> list[str]:
        return [text.strip() for text in self.tokenizer.batch_decode(token_ids, skip_special_tokens=True)]
